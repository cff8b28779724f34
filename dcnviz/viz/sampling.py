"""Pictures of where deformable layers look: composed sampling points of activation units (paper Figs. 5
and 6) and the parts of deformable PS RoI pooling (Fig. 7), and a montage of such panels.

Inputs are the BGR ``uint8`` image and positions in its original pixels, continuous, pixel k covering
[k, k+1) (as :mod:`dcnviz.analysis` returns them); a point is drawn on the pixel (floor(x), floor(y)) that
holds it. Colours are the paper's: red samples, a green unit, a yellow RoI with red parts. Markers are
squares of ``2 * marker_half + 1`` pixels (5x5 on a VOC-sized image, as the official visualizer) with a
one-pixel dark rim, so red stays visible on red objects. Points off the image are drawn clamped to its
border. Points that carry no signal (``valid`` False: outside a feature map on the way down, where the
DCNv1 operator reads zero) are drawn hollow.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from dcnviz.viz.draw import FONT, check_image, draw_label, style

BGR = tuple[int, int, int]
RED: BGR = (0, 0, 255)
GREEN: BGR = (0, 255, 0)
YELLOW: BGR = (0, 255, 255)
RIM: BGR = (0, 0, 0)
# Deformable group g of ``group="all"`` (group 0 is red): far apart from red, green and each other.
GROUP_COLORS: tuple[BGR, ...] = (RED, (255, 128, 0), (255, 0, 255), (0, 200, 255), (255, 255, 255))
GROUP_COLOR_NAMES = ("red", "blue", "magenta", "orange", "white")
_PANEL_BG: BGR = (40, 40, 40)


def marker_half(h: int, w: int) -> int:
    """Half-width of a sample marker on an h x w image: 2 (5x5 px) up to ~750 px, growing with the size."""
    return max(2, round(min(h, w) / 300))


def pixel(x: float, y: float, h: int, w: int) -> tuple[int, int]:
    """The pixel (column, row) holding image position (x, y), clamped to the image."""
    return min(max(int(np.floor(x)), 0), w - 1), min(max(int(np.floor(y)), 0), h - 1)


def _squares(out: np.ndarray, xy: np.ndarray, half: int, color: BGR, filled: bool) -> None:
    h, w = out.shape[:2]
    for x, y in xy:
        cx, cy = pixel(x, y, h, w)
        cv2.rectangle(out, (cx - half, cy - half), (cx + half, cy + half), color, cv2.FILLED if filled else 1)


def draw_sampling_points(image_bgr: np.ndarray, xy, valid, unit_xy: tuple[float, float],
                         colors: Sequence[BGR] = GROUP_COLORS) -> np.ndarray:
    """Sampling points and their activation unit on a copy of ``image_bgr``.

    ``xy`` (M, 2) or (G, M, 2) positions (x, y) in image pixels (G deformable groups, group g in
    ``colors[g]``), ``valid`` bool of shape xy[..., 0]; ``unit_xy`` (x, y) of the unit, drawn last as a
    larger green square. Hollow markers go first and every rim before any fill, so the pixel of a valid
    point always shows a sample colour (or the unit's green).
    """
    out = check_image(image_bgr).copy()
    half = marker_half(*out.shape[:2])
    xy = np.asarray(xy, np.float64)
    valid = np.asarray(valid, bool)
    if xy.ndim == 2:
        xy, valid = xy[None], valid[None]
    if len(xy) > len(colors):
        raise ValueError(f"{len(xy)} groups but only {len(colors)} colours")
    for g in range(len(xy)):
        _squares(out, xy[g][~valid[g]], half, colors[g], filled=False)
    _squares(out, xy[valid], half + 1, RIM, filled=True)
    for g in range(len(xy)):
        _squares(out, xy[g][valid[g]], half, colors[g], filled=True)
    unit = np.asarray([unit_xy], np.float64)
    _squares(out, unit, half + 3, RIM, filled=True)
    _squares(out, unit, half + 2, GREEN, filled=True)
    return out


def draw_unit_samples(image_bgr: np.ndarray, samples) -> np.ndarray:
    """:func:`draw_sampling_points` of a :class:`dcnviz.analysis.UnitSamples` (its points and its unit)."""
    return draw_sampling_points(image_bgr, samples.xy, samples.locations.valid, samples.unit.xy)


def unit_title(unit) -> str:
    """A panel title for a :class:`dcnviz.analysis.Unit`: its kind, its object's size, its position."""
    kind = {"at": "unit", "small": "small object", "large": "large object"}.get(unit.kind, unit.kind)
    size = "" if unit.box is None else f" {unit.box[2] - unit.box[0] + 1:.0f}x{unit.box[3] - unit.box[1] + 1:.0f}"
    return f"{kind}{size} at ({unit.xy[0]:.0f}, {unit.xy[1]:.0f})"


def roi_label(roi) -> str:
    """The label of a :class:`dcnviz.analysis.PooledRoI`: its class and the head's probability for it."""
    return f"{roi.class_name} {roi.probability:.2f}"


def draw_pooled_roi(image_bgr: np.ndarray, roi) -> np.ndarray:
    """:func:`draw_roi_parts` of a :class:`dcnviz.analysis.PooledRoI`, labelled with :func:`roi_label`."""
    return draw_roi_parts(image_bgr, roi.parts.roi, roi.parts.bins, roi_label(roi))


def _rect_pixels(rect, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """First and last pixel of a rectangle [x1, y1, x2, y2] of continuous edges, clamped to the image."""
    x1, y1, x2, y2 = (float(v) for v in rect)
    first = pixel(x1, y1, h, w)
    last = pixel(max(np.ceil(x2) - 1, x1), max(np.ceil(y2) - 1, y1), h, w)
    return first, last


def draw_roi_parts(image_bgr: np.ndarray, roi, bins, label: str) -> np.ndarray:
    """A RoI (yellow, with ``label`` in a yellow box) and its moved bins (red) on a copy of ``image_bgr``.

    ``roi`` [x1, y1, x2, y2] and ``bins`` (P, P, 4) are rectangles of continuous edges in image pixels
    (:class:`dcnviz.analysis.RoIParts`); each is drawn on the pixels it covers, its first pixel
    (floor(x1), floor(y1)) always painted. Bins are drawn over the RoI, the label last.
    """
    out = check_image(image_bgr).copy()
    h, w = out.shape[:2]
    lw = style(h, w)[0]
    first, last = _rect_pixels(roi, h, w)
    cv2.rectangle(out, first, last, YELLOW, lw + 1)
    for rect in np.asarray(bins, np.float64).reshape(-1, 4):
        cv2.rectangle(out, *_rect_pixels(rect, h, w), RED, lw)
    draw_label(out, *first, label, YELLOW)
    return out


def _text(out: np.ndarray, text: str, left: int, baseline: int, width: int, font_scale: float,
          thickness: int) -> None:
    """White text on ``out``, shrunk to fit ``width`` pixels."""
    while font_scale > 0.2 and cv2.getTextSize(text, FONT, font_scale, thickness)[0][0] > width:
        font_scale *= 0.95
    cv2.putText(out, text, (left, baseline), FONT, font_scale, (255, 255, 255), thickness, cv2.LINE_AA)


def montage(panels: Sequence[np.ndarray], titles: Sequence[str], columns: int | None = None,
            footer: str | None = None, gap: int = 6) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Panels (BGR uint8, any sizes) in a grid of ``columns`` (default: one row), each under a title
    strip, with an optional ``footer`` line under the grid (titles and footer shrink to fit).

    Returns the picture and, per panel, the (left, top) pixel where the panel's own pixel (0, 0) is, so
    that image position (x, y) of panel k is at (left + floor(x), top + floor(y)) in the montage.
    """
    if not panels or len(panels) != len(titles):
        raise ValueError(f"need one title per panel and at least one panel, got {len(panels)} and {len(titles)}")
    columns = len(panels) if columns is None else columns
    rows = -(-len(panels) // columns)
    lw, font_scale, thickness = style(*panels[0].shape[:2])
    (_, th), base = cv2.getTextSize("Hg", FONT, font_scale, thickness)
    strip = th + base + 2 * lw
    cell_w = max(p.shape[1] for p in panels)
    cell_h = max(p.shape[0] for p in panels) + strip
    grid_h = rows * cell_h + (rows + 1) * gap
    width = columns * cell_w + (columns + 1) * gap
    out = np.full((grid_h + (strip if footer else 0), width, 3), _PANEL_BG, np.uint8)
    origins = []
    for k, (panel, title) in enumerate(zip(panels, titles)):
        r, c = divmod(k, columns)
        left, top = gap + c * (cell_w + gap), gap + r * (cell_h + gap)
        _text(out, title, left + lw, top + lw + th, cell_w - 2 * lw, font_scale, thickness)
        out[top + strip:top + strip + panel.shape[0], left:left + panel.shape[1]] = check_image(panel)
        origins.append((left, top + strip))
    if footer:
        _text(out, footer, gap + lw, grid_h + lw + th - gap // 2, width - 2 * (gap + lw), font_scale, thickness)
    return out, origins
