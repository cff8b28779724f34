"""Pictures of where deformable layers look: composed sampling points of activation units (paper Figs. 5
and 6) and the parts of deformable PS RoI pooling (Fig. 7), and a montage of such panels.

Inputs are the BGR ``uint8`` image and positions in its original pixels, continuous, pixel k covering
[k, k+1) (as :mod:`dcnviz.analysis` returns them); a point is drawn centred on the pixel (floor(x),
floor(y)) that holds it, which is always painted. Colours are the paper's: red samples, a green unit, a
yellow RoI with red parts. Points off the image are drawn clamped to its border; points that carry no
signal (``valid`` False: outside a feature map on the way down, where the DCNv1 operator reads zero) are
drawn hollow.

A :class:`Style` says how markers look. ``default`` is made to stay visible on any background (photos and
the colourful synthetic scenes alike): every marker and line has a thin dark outline, markers grow with
the image, and the unit is a larger green diamond. ``paper`` is the look of the official visualizer and
the paper's figures: plain red squares of ``2 * marker_half + 1`` pixels (5x5 on a VOC-sized image) and a
green square unit. Captions never shrink below :data:`MIN_TEXT_PX`; a long one wraps instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from dcnviz.viz.draw import FONT, check_image, draw_label, style

BGR = tuple[int, int, int]
RED: BGR = (0, 0, 255)
GREEN: BGR = (0, 255, 0)
YELLOW: BGR = (0, 255, 255)
RIM: BGR = (0, 0, 0)
OBJECT: BGR = (255, 255, 255)
# Deformable group g of ``group="all"`` (group 0 is red): far apart from red, green and each other.
GROUP_COLORS: tuple[BGR, ...] = (RED, (255, 128, 0), (255, 0, 255), (0, 200, 255), (255, 255, 255))
GROUP_COLOR_NAMES = ("red", "blue", "magenta", "orange", "white")
_PANEL_BG: BGR = (40, 40, 40)
# Smallest caption: the cap height of a letter, in pixels of the figure.
MIN_TEXT_PX = 10
# Opacity of the unmoved RoI grid drawn under the moved parts.
FAINT = 0.35


@dataclass(frozen=True)
class Style:
    """How sampling points, units and RoI parts are drawn.

    name: "default" or "paper" (see the module doc); outline: a thin dark outline around every marker and
    line; round: round sample markers (else squares); alpha: opacity of the sample markers and parts (the
    unit and the RoI stay opaque); size: factor on the marker size, which follows the image size."""

    name: str = "default"
    outline: bool = True
    round: bool = True
    alpha: float = 1.0
    size: float = 1.0

    def __post_init__(self):
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if not self.size > 0:
            raise ValueError(f"size must be positive, got {self.size}")


STYLES = {"default": Style(), "paper": Style("paper", outline=False, round=False)}


def get_style(name: str = "default", alpha: float = 1.0, size: float = 1.0) -> Style:
    """The named style (:data:`STYLES`) with the given opacity and size factor."""
    if name not in STYLES:
        raise ValueError(f"unknown style {name!r}; styles: {', '.join(STYLES)}")
    base = STYLES[name]
    return Style(base.name, base.outline, base.round, alpha, size)


def marker_half(h: int, w: int, size: float = 1.0) -> int:
    """Half-width of a sample marker on an h x w image: 2 (5x5 px) up to ~750 px, growing with the size."""
    return max(2, round(size * min(h, w) / 300))


def pixel(x: float, y: float, h: int, w: int) -> tuple[int, int]:
    """The pixel (column, row) holding image position (x, y), clamped to the image."""
    return min(max(int(np.floor(x)), 0), w - 1), min(max(int(np.floor(y)), 0), h - 1)


def _markers(out: np.ndarray, xy: np.ndarray, half: int, color: BGR, filled: bool, round_: bool,
             outline: bool = False) -> None:
    """Markers of half-width ``half`` at ``xy`` on ``out`` (in place): discs or squares, filled or a
    one-pixel ring; ``outline`` draws the dark outline that goes under them instead (2 px wider)."""
    h, w = out.shape[:2]
    for x, y in xy:
        cx, cy = pixel(x, y, h, w)
        if round_:  # radii in quarter pixels (shift 2)
            r = 4 * half + (8 if outline and filled else 0)
            thickness = cv2.FILLED if filled else (3 if outline else 1)
            # outlines antialiased; fills crisp, so every pixel of a marker is exactly its group's colour
            line = cv2.LINE_AA if outline else cv2.LINE_8
            cv2.circle(out, (4 * cx, 4 * cy), r, color, thickness, line, shift=2)
        else:
            r = half + (1 if outline and filled else 0)
            thickness = cv2.FILLED if filled else (3 if outline else 1)
            cv2.rectangle(out, (cx - r, cy - r), (cx + r, cy + r), color, thickness)


def _diamond(out: np.ndarray, xy: tuple[float, float], half: int, color: BGR) -> None:
    h, w = out.shape[:2]
    cx, cy = pixel(*xy, h, w)
    points = np.array([[cx, cy - half], [cx + half, cy], [cx, cy + half], [cx - half, cy]], np.int32)
    cv2.fillConvexPoly(out, points, color, cv2.LINE_AA)


def _blend(out: np.ndarray, layer: np.ndarray, alpha: float) -> np.ndarray:
    return layer if alpha >= 1 else cv2.addWeighted(layer, alpha, out, 1 - alpha, 0)


def draw_object_box(out: np.ndarray, box) -> None:
    """Outline the object ``box`` [x1, y1, x2, y2] (inclusive corners, image pixels) on ``out`` (in place):
    a white line over a dark one, visible on light and dark objects alike."""
    h, w = out.shape[:2]
    lw = max(style(h, w)[0] // 2, 1)
    first = pixel(box[0], box[1], h, w)
    last = pixel(box[2], box[3], h, w)
    cv2.rectangle(out, first, last, RIM, lw + 2)
    cv2.rectangle(out, first, last, OBJECT, lw)


def draw_sampling_points(image_bgr: np.ndarray, xy, valid, unit_xy: tuple[float, float],
                         colors: Sequence[BGR] = GROUP_COLORS, *, box=None,
                         look: Style = STYLES["default"]) -> np.ndarray:
    """Sampling points and their activation unit on a copy of ``image_bgr``.

    ``xy`` (M, 2) or (G, M, 2) positions (x, y) in image pixels (G deformable groups, group g in
    ``colors[g]``), ``valid`` bool of shape xy[..., 0]; ``unit_xy`` (x, y) of the unit, drawn last, larger
    and of another shape (a diamond; a square in the paper style); ``box`` [x1, y1, x2, y2] (inclusive
    corners), the object the unit sits on, outlined first. Hollow markers go first and every outline
    before any fill, so the pixel of a valid point always shows a sample colour (or the unit's green).
    """
    out = check_image(image_bgr).copy()
    h, w = out.shape[:2]
    half = marker_half(h, w, look.size)
    xy = np.asarray(xy, np.float64)
    valid = np.asarray(valid, bool)
    if xy.ndim == 2:
        xy, valid = xy[None], valid[None]
    if len(xy) > len(colors):
        raise ValueError(f"{len(xy)} groups but only {len(colors)} colours")
    if box is not None:
        draw_object_box(out, box)
    layer = out.copy()
    for g in range(len(xy)):
        if look.outline:
            _markers(layer, xy[g][~valid[g]], half, RIM, False, look.round, outline=True)
        _markers(layer, xy[g][~valid[g]], half, colors[g], False, look.round)
    if look.outline:
        _markers(layer, xy[valid], half, RIM, True, look.round, outline=True)
    for g in range(len(xy)):
        _markers(layer, xy[g][valid[g]], half, colors[g], True, look.round)
    out = _blend(out, layer, look.alpha)
    draw_unit(out, unit_xy, half, look)
    return out


def draw_unit(out: np.ndarray, unit_xy: tuple[float, float], half: int, look: Style = STYLES["default"]) -> None:
    """The activation unit at ``unit_xy`` on ``out`` (in place), for sample markers of half-width ``half``:
    larger than them and of another shape, opaque (a green square in the paper style)."""
    if look.name == "paper":
        _markers(out, np.asarray([unit_xy], np.float64), half + 2, GREEN, True, False)
    else:  # dark, white, green: a diamond that stands out on green objects too
        big = 4 * half + 2
        _diamond(out, unit_xy, big + 3, RIM)
        _diamond(out, unit_xy, big + 1, OBJECT)
        _diamond(out, unit_xy, big - 1, GREEN)


def draw_unit_samples(image_bgr: np.ndarray, samples, look: Style = STYLES["default"]) -> np.ndarray:
    """:func:`draw_sampling_points` of a :class:`dcnviz.analysis.UnitSamples`: its points, its unit, and the
    object box the unit was chosen on (if any) outlined."""
    return draw_sampling_points(image_bgr, samples.xy, samples.locations.valid, samples.unit.xy,
                                box=samples.unit.box, look=look)


def unit_title(unit, what: str | None = None) -> str:
    """A panel title for a :class:`dcnviz.analysis.Unit`: on an object, its Table 2 size class (``bucket``:
    small < 96² px, medium, large > 224² by box area), ``what`` it is (e.g. "ring 0.91") and its box size
    (the unit's position is in the JSON); else background or, for ``--at``, the centre of the cell the
    position snapped to."""
    x, y = unit.xy
    if unit.box is not None:
        w, h = unit.box[2] - unit.box[0] + 1, unit.box[3] - unit.box[1] + 1
        return f"{unit.bucket} object: {what + ', ' if what else ''}{w:.0f}x{h:.0f} px"
    if unit.kind == "at":
        return f"unit at cell centre ({x:.1f}, {y:.1f})" + (f" on {what}" if what else "")
    return f"{unit.kind} at ({x:.0f}, {y:.0f})"


def roi_label(roi) -> str:
    """The label of a :class:`dcnviz.analysis.PooledRoI`: its class and the detection's own score, or for a
    given box the head's probability for the class on it, marked "p"."""
    if roi.detection_score is not None:
        return f"{roi.class_name} {roi.detection_score:.2f}"
    return f"{roi.class_name} p={roi.probability:.2f}"


def draw_pooled_roi(image_bgr: np.ndarray, roi, parts=None, look: Style = STYLES["default"]) -> np.ndarray:
    """:func:`draw_roi_parts` of a :class:`dcnviz.analysis.PooledRoI` (or of other ``parts`` of it, e.g. the
    3x3 view), labelled with :func:`roi_label`, the unmoved bins drawn faintly."""
    parts = roi.parts if parts is None else parts
    return draw_roi_parts(image_bgr, parts.roi, parts.bins, roi_label(roi), regular=parts.regular, look=look)


def _rect_pixels(rect, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """First and last pixel of a rectangle [x1, y1, x2, y2] of continuous edges, clamped to the image."""
    x1, y1, x2, y2 = (float(v) for v in rect)
    first = pixel(x1, y1, h, w)
    last = pixel(max(np.ceil(x2) - 1, x1), max(np.ceil(y2) - 1, y1), h, w)
    return first, last


def draw_roi_parts(image_bgr: np.ndarray, roi, bins, label: str, *, regular=None,
                   look: Style = STYLES["default"]) -> np.ndarray:
    """A RoI (yellow, with ``label`` in a yellow box) and its moved bins (red) on a copy of ``image_bgr``.

    ``roi`` [x1, y1, x2, y2], ``bins`` (P, P, 4) and ``regular`` (the unmoved bins, drawn faintly first;
    optional) are rectangles of continuous edges in image pixels (:class:`dcnviz.analysis.RoIParts`); each
    is drawn on the pixels it covers, its first pixel (floor(x1), floor(y1)) always painted. Bins are drawn
    over the RoI, the label last; with ``look.outline`` every line has a dark outline.
    """
    out = check_image(image_bgr).copy()
    h, w = out.shape[:2]
    lw = style(h, w)[0]
    if regular is not None:
        grid = out.copy()
        for rect in np.asarray(regular, np.float64).reshape(-1, 4):
            cv2.rectangle(grid, *_rect_pixels(rect, h, w), (255, 255, 255), max(lw // 2, 1))
        out = cv2.addWeighted(grid, FAINT, out, 1 - FAINT, 0)
    rects = [_rect_pixels(rect, h, w) for rect in np.asarray(bins, np.float64).reshape(-1, 4)]
    first, last = _rect_pixels(roi, h, w)
    if look.outline:
        cv2.rectangle(out, first, last, RIM, lw + 3)
    cv2.rectangle(out, first, last, YELLOW, lw + 1)
    layer = out.copy()
    if look.outline:
        for rect in rects:
            cv2.rectangle(layer, *rect, RIM, lw + 2)
    for rect in rects:
        cv2.rectangle(layer, *rect, RED, lw)
    out = _blend(out, layer, look.alpha)
    draw_label(out, *first, label, YELLOW)
    return out


def text_scale(thickness: int = 1) -> float:
    """The smallest font scale whose capital letters are :data:`MIN_TEXT_PX` pixels tall or more."""
    scale = 0.3
    while _cap_height(scale, thickness) < MIN_TEXT_PX:
        scale += 0.05
    return scale


def _cap_height(scale: float, thickness: int) -> int:
    """Rendered height in pixels of "H" (OpenCV's reported size includes a margin, so draw and measure)."""
    (tw, th), _ = cv2.getTextSize("H", FONT, scale, thickness)
    canvas = np.zeros((th + 10, tw + 10), np.uint8)
    cv2.putText(canvas, "H", (5, th + 5), FONT, scale, 255, thickness, cv2.LINE_AA)
    rows = np.flatnonzero((canvas > 127).any(axis=1))
    return int(rows[-1] - rows[0] + 1) if len(rows) else 0


def wrap(text: str, width: int, font_scale: float, thickness: int) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` pixels (a single word that is wider
    stays whole on its line)."""
    lines: list[str] = []
    for word in text.split(" "):
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and cv2.getTextSize(candidate, FONT, font_scale, thickness)[0][0] <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def _text(out: np.ndarray, lines: Sequence[str], left: int, top: int, line_h: int, ascent: int,
          font_scale: float, thickness: int) -> None:
    """White lines of text on ``out``, the first one's top at ``top``."""
    for i, line in enumerate(lines):
        cv2.putText(out, line, (left, top + i * line_h + ascent), FONT, font_scale, (255, 255, 255), thickness,
                    cv2.LINE_AA)


def montage(panels: Sequence[np.ndarray], titles: Sequence[str], columns: int | None = None,
            footer: str | None = None, gap: int = 6) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Panels (BGR uint8, any sizes) in a grid of ``columns`` (default: one row), each under a title
    strip, with an optional ``footer`` under the grid. Text follows the panel size but never gets smaller
    than :data:`MIN_TEXT_PX`; a title or footer too long for its width wraps onto more lines.

    Returns the picture and, per panel, the (left, top) pixel where the panel's own pixel (0, 0) is, so
    that image position (x, y) of panel k is at (left + floor(x), top + floor(y)) in the montage.
    """
    if not panels or len(panels) != len(titles):
        raise ValueError(f"need one title per panel and at least one panel, got {len(panels)} and {len(titles)}")
    columns = len(panels) if columns is None else columns
    rows = -(-len(panels) // columns)
    lw, font_scale, thickness = style(*panels[0].shape[:2])
    font_scale = max(font_scale, text_scale(thickness))
    (_, th), base = cv2.getTextSize("Hg", FONT, font_scale, thickness)
    line_h = th + base + lw
    cell_w = max(p.shape[1] for p in panels)
    width = columns * cell_w + (columns + 1) * gap
    title_lines = [wrap(t, cell_w - 2 * lw, font_scale, thickness) for t in titles]
    footer_lines = wrap(footer, width - 2 * (gap + lw), font_scale, thickness) if footer else []
    strip = max(len(t) for t in title_lines) * line_h + lw
    cell_h = max(p.shape[0] for p in panels) + strip
    grid_h = rows * cell_h + (rows + 1) * gap
    out = np.full((grid_h + len(footer_lines) * line_h + (lw if footer_lines else 0), width, 3), _PANEL_BG, np.uint8)
    origins = []
    for k, (panel, lines) in enumerate(zip(panels, title_lines)):
        r, c = divmod(k, columns)
        left, top = gap + c * (cell_w + gap), gap + r * (cell_h + gap)
        _text(out, lines, left + lw, top + lw // 2, line_h, th, font_scale, thickness)
        out[top + strip:top + strip + panel.shape[0], left:left + panel.shape[1]] = check_image(panel)
        origins.append((left, top + strip))
    _text(out, footer_lines, gap + lw, grid_h, line_h, th, font_scale, thickness)
    return out, origins
