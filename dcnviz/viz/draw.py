"""Pictures of structured results: detections as labelled boxes, label maps as a colour overlay.

This is the visualizer half of detectron2's predictor/visualizer split: a result from
:mod:`dcnviz.structures` and the BGR ``uint8`` image it was computed on go in, a new BGR ``uint8``
image comes out (the input is never modified). Everything is drawn with OpenCV, so the same inputs
give the same pixels. Line width and font size follow the image size (ultralytics' rule), so
labels stay readable on small and large images alike.
"""
from __future__ import annotations

import colorsys
from typing import Collection, Sequence

import cv2
import numpy as np

from dcnviz.data.classes import background_ids
from dcnviz.structures import Detections, Segmentation

RGB = tuple[int, int, int]
FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_colors(n: int) -> tuple[RGB, ...]:
    """``n`` distinct, deterministic RGB colours: hues stepped by the golden ratio, so neighbouring
    class indices get far-apart hues."""
    colors = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95)
        colors.append((round(r * 255), round(g * 255), round(b * 255)))
    return tuple(colors)


def draw_detections(image_bgr: np.ndarray, dets: Detections,
                    palette: Sequence[RGB] | None = None) -> np.ndarray:
    """Boxes with ``"<class> <score>"`` labels on a copy of ``image_bgr`` (H, W, 3) uint8.

    Boxes are ``dets.boxes`` in pixels of this image (inclusive corners, rounded to the nearest
    pixel). ``palette[label]`` is the RGB colour of a class (default ``class_colors``). Higher
    scores are drawn last, so they stay on top where boxes overlap. A label sits above its box, or
    inside it at the top edge of the image, and is shifted left to stay within the image.
    """
    out = check_image(image_bgr).copy()
    h, w = out.shape[:2]
    colors = _bgr_table(palette, len(dets.class_names))
    lw = style(h, w)[0]
    for k in np.argsort(np.asarray(dets.scores), kind="stable"):
        x1, y1, x2, y2 = (int(round(float(v))) for v in dets.boxes[k])
        label = int(dets.labels[k])
        color = colors[label]
        cv2.rectangle(out, (x1, y1), (x2, y2), color, lw)  # axis-aligned: crisp, no AA
        draw_label(out, x1, y1, f"{dets.class_names[label]} {float(dets.scores[k]):.2f}", color)
    return out


def draw_label(out: np.ndarray, x1: int, y1: int, text: str, color: tuple[int, int, int]) -> None:
    """``text`` in a filled ``color`` (BGR) box on ``out`` (in place) for a box whose top-left corner is
    (x1, y1): above the box, or inside it at the top edge of the image, shifted left to stay within
    the image."""
    h, w = out.shape[:2]
    lw, font_scale, thickness = style(h, w)
    (tw, th), base = cv2.getTextSize(text, FONT, font_scale, thickness)
    pad = max(lw // 2, 1)
    box_h = th + base + 2 * pad
    top = y1 - box_h if y1 - box_h >= 0 else max(y1, 0)
    left = min(max(x1, 0), max(w - tw - 2 * pad, 0))
    cv2.rectangle(out, (left, top), (left + tw + 2 * pad, top + box_h), color, cv2.FILLED)
    cv2.putText(out, text, (left + pad, top + pad + th), FONT, font_scale, text_color(color), thickness,
                cv2.LINE_AA)


def overlay_segmentation(image_bgr: np.ndarray, seg: Segmentation, alpha: float = 0.5,
                         skip: Collection[int] | None = None, legend: bool = True) -> np.ndarray:
    """The label map blended over a copy of ``image_bgr`` (H, W, 3) uint8, with a legend.

    Each pixel of class c becomes ``(1 - alpha) * image + alpha * palette[c]`` (``seg.palette``,
    RGB; missing entries from ``class_colors``). Pixels of a class in ``skip`` (default: a class
    named "background") or with an id outside the class list (e.g. 255 = ignore) keep the image
    colour. The legend, top left, lists the classes present (not skipped) by decreasing area with
    their share of the image; rows that do not fit become "+k more".
    """
    out = check_image(image_bgr).copy()
    labels = np.asarray(seg.labels)
    if labels.shape != out.shape[:2]:
        raise ValueError(f"label map is {labels.shape[1]}x{labels.shape[0]} but the image is "
                         f"{out.shape[1]}x{out.shape[0]}")
    n = len(seg.class_names)
    if skip is None:
        skip = background_ids(seg.class_names)
    colors = np.array(_bgr_table(seg.palette, n), dtype=np.float32)
    tinted = np.isin(labels, [c for c in range(n) if c not in set(skip)])
    blend = (1.0 - alpha) * out[tinted].astype(np.float32) + alpha * colors[labels[tinted]]
    out[tinted] = np.clip(np.round(blend), 0, 255).astype(np.uint8)
    if legend:
        counts = np.bincount(labels[tinted].ravel(), minlength=n)
        present = sorted(np.flatnonzero(counts), key=lambda c: (-counts[c], c))
        rows = [(f"{seg.class_names[c]} {100.0 * counts[c] / labels.size:.1f}%",
                 tuple(int(v) for v in colors[c])) for c in present]
        _draw_legend(out, rows)
    return out


def _draw_legend(out: np.ndarray, rows: list[tuple[str, tuple[int, int, int]]]) -> None:
    """Rows of (text, BGR swatch colour) in a darkened box at the top left of ``out`` (in place)."""
    if not rows:
        return
    h, w = out.shape[:2]
    lw, font_scale, thickness = style(h, w)
    (_, th), base = cv2.getTextSize("Hg", FONT, font_scale, thickness)
    pad = max(lw, 2)
    row_h = th + base + pad
    fit = (h - 3 * pad) // row_h
    if fit < 1:
        return
    if len(rows) > fit:
        rows = rows[: fit - 1] + [(f"+{len(rows) - fit + 1} more", None)]
    swatch = th
    text_w = max(cv2.getTextSize(t, FONT, font_scale, thickness)[0][0] for t, _ in rows)
    x1 = min(pad + 2 * pad + swatch + text_w + pad, w - 1)
    y1 = min(pad + len(rows) * row_h + pad, h - 1)
    region = out[pad:y1, pad:x1]
    region[:] = (region.astype(np.float32) * 0.35).astype(np.uint8)
    for i, (text, color) in enumerate(rows):
        top = 2 * pad + i * row_h
        if color is not None:
            cv2.rectangle(out, (2 * pad, top), (2 * pad + swatch, top + swatch), color, cv2.FILLED)
        cv2.putText(out, text, (3 * pad + swatch, top + th), FONT, font_scale, (255, 255, 255),
                    thickness, cv2.LINE_AA)


def style(h: int, w: int) -> tuple[int, float, int]:
    """(line width, font scale, text thickness) for an image of h x w pixels."""
    lw = max(round((h + w) / 2 * 0.003), 2)
    return lw, lw / 3, max(lw - 1, 1)


def _bgr_table(palette: Sequence[RGB] | None, n: int) -> list[tuple[int, int, int]]:
    """BGR colour per class id 0..n-1: ``palette`` where it has an entry, else ``class_colors``."""
    fallback = class_colors(n)
    palette = palette or ()
    return [tuple(int(v) for v in (palette[i] if i < len(palette) else fallback[i])[::-1])
            for i in range(n)]


def text_color(bgr: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``bgr`` (ITU-R BT.601 luma)."""
    b, g, r = bgr
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def check_image(image: np.ndarray) -> np.ndarray:
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
            and image.shape[2] == 3):
        raise ValueError("expected a (H, W, 3) uint8 BGR image, got "
                         f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}")
    return image
