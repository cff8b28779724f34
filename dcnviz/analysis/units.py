"""Activation units to look at: where the user points (``--at``), or one on the background, a small and a
large object, chosen from boxes (the model's detections or segments, or ground truth).

A unit is an output cell (i, j) of the top layer of a stack (stride ``stride`` input pixels per cell);
its image position is the cell centre ``(i + 0.5, j + 0.5) * stride / scale``
(:func:`dcnviz.analysis.feature_to_image`). Boxes are ``[x1, y1, x2, y2]``, 0-based inclusive original
pixels (:mod:`dcnviz.structures`).

Automatic choice (the paper picked its Fig. 6 units by hand; the official code scans a grid):

- large: the cell holding the centre of the largest box;
- small: the cell holding the centre of the smallest box with area < 96² px (:data:`SMALL_MAX_AREA`),
  else of the smallest box that is not the large one (its true size is reported with it);
- background: among cells whose centre lies outside every box, the one farthest from the nearest box
  and from the image border (both distances in image pixels; on ties the one nearest the image centre),
  so that its samples fall on open background rather than off the image.

A kind without a candidate (no boxes, no free background) is left out; the caller says so.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dcnviz.analysis._common import as_float64, pair
from dcnviz.analysis.buckets import BUCKETS, SMALL_MAX_AREA, box_areas, size_bucket
from dcnviz.analysis.coords import feature_to_image, image_to_cell

__all__ = ["Unit", "KINDS", "pick_units", "units_at", "cell_unit", "segment_boxes"]

KINDS = ("background", "small", "large")


@dataclass(frozen=True)
class Unit:
    """One activation unit. ``kind``: "background", "small", "large" or "at" (given by the user);
    ``cell``: (i, j) in the top layer's output map; ``xy``: its centre (x, y) in original-image pixels;
    ``box``: the object box it was chosen on (0-based inclusive), with its Table 2 ``bucket`` name."""

    kind: str
    cell: tuple[int, int]
    xy: tuple[float, float]
    box: tuple[float, float, float, float] | None = None
    bucket: str | None = None


def _unit(kind: str, cell, scale: float, stride: float, box=None) -> Unit:
    y, x = feature_to_image(np.asarray(cell, np.float64), scale, stride)
    bucket = None if box is None else BUCKETS[int(size_bucket(box_areas([box]))[0])]
    return Unit(kind, (int(cell[0]), int(cell[1])), (float(x), float(y)),
                None if box is None else tuple(float(v) for v in box), bucket)


def _centre_cell(box, map_size, scale: float, stride: float) -> np.ndarray:
    """The cell holding the centre of an inclusive box, clipped to the map (a box can end past the last cell)."""
    x1, y1, x2, y2 = box
    cell = image_to_cell(np.array([(y1 + y2 + 1) / 2, (x1 + x2 + 1) / 2]), scale, stride)
    return np.minimum(np.maximum(cell, 0), np.asarray(map_size) - 1)


def pick_units(boxes, map_size, scale: float, stride: float, image_size, kinds=KINDS) -> list[Unit]:
    """Units of the requested ``kinds`` (in that order) for a top-layer map of ``map_size`` (Ho, Wo).

    Args:
        boxes: (B, 4) object boxes, 0-based inclusive original pixels (may be empty).
        scale: the image's resize factor (``Prep.scale``); stride: the map's feature stride (16 for res5).
        image_size: (H, W) of the original image.
    """
    ho, wo = pair(map_size, "map_size")
    b = as_float64(boxes, "boxes").reshape(-1, 4)
    areas = box_areas(b)
    units = []
    large = int(np.argmax(areas)) if len(b) else None
    for kind in kinds:
        if kind == "large" and large is not None:
            units.append(_unit(kind, _centre_cell(b[large], (ho, wo), scale, stride), scale, stride, b[large]))
        elif kind == "small" and len(b):
            small = np.flatnonzero(areas < SMALL_MAX_AREA)
            if not len(small):
                small = np.array([i for i in range(len(b)) if i != large], np.int64)
            if len(small):
                k = int(small[np.argmin(areas[small])])
                units.append(_unit(kind, _centre_cell(b[k], (ho, wo), scale, stride), scale, stride, b[k]))
        elif kind == "background":
            cell = _background_cell(b, (ho, wo), scale, stride, image_size)
            if cell is not None:
                units.append(_unit(kind, cell, scale, stride))
        elif kind not in KINDS:
            raise ValueError(f"kinds must be among {KINDS}, got {kind!r}")
    return units


def _background_cell(boxes: np.ndarray, map_size, scale: float, stride: float, image_size):
    cells = np.stack(np.meshgrid(np.arange(map_size[0]), np.arange(map_size[1]), indexing="ij"), -1).reshape(-1, 2)
    cy, cx = feature_to_image(cells, scale, stride).T
    h, w = pair(image_size, "image_size")
    border = np.minimum.reduce([cx, cy, w - cx, h - cy])
    # distance from the centre to each box (0 inside), with the box covering [x1, x2 + 1) x [y1, y2 + 1)
    dx = np.maximum(np.maximum(boxes[:, 0] - cx[:, None], cx[:, None] - (boxes[:, 2] + 1)), 0)  # (cells, B)
    dy = np.maximum(np.maximum(boxes[:, 1] - cy[:, None], cy[:, None] - (boxes[:, 3] + 1)), 0)
    inside = ((dx == 0) & (dy == 0)).any(axis=1)
    clearance = np.minimum(np.hypot(dx, dy).min(axis=1, initial=np.inf), border)
    clearance[inside | (border <= 0)] = -np.inf
    if clearance.max() == -np.inf:
        return None
    # ties (common: the border distance is the same along a row) go to the cell nearest the image centre
    ties = np.flatnonzero(clearance >= clearance.max() - 1e-9)
    return cells[ties[np.argmin(np.hypot(cx[ties] - w / 2, cy[ties] - h / 2))]]


def units_at(points_xy, map_size, scale: float, stride: float, image_size) -> list[Unit]:
    """Units at user-given image positions (x, y) in original pixels: the cell holding each point (the
    last row or column for a point in the few edge pixels that the map's rounding leaves uncovered).

    Raises ValueError naming the point when it lies outside the image."""
    ho, wo = pair(map_size, "map_size")
    h, w = pair(image_size, "image_size")
    units = []
    for x, y in points_xy:
        if not (0 <= x < w and 0 <= y < h):
            raise ValueError(f"{x:g},{y:g} is outside the {w}x{h} image")
        cell = image_to_cell(np.array([y, x], np.float64), scale, stride)
        units.append(_unit("at", np.minimum(cell, (ho - 1, wo - 1)), scale, stride))
    return units


def cell_unit(cell, map_size, scale: float, stride: float) -> Unit:
    """The unit (kind "at") at output cell (i, j) of a map of ``map_size`` (Ho, Wo); ValueError naming the
    cell when it lies outside the map."""
    ho, wo = pair(map_size, "map_size")
    i, j = (int(c) for c in cell)
    if not (0 <= i < ho and 0 <= j < wo):
        raise ValueError(f"cell ({i}, {j}) is outside the {ho}x{wo} map")
    return _unit("at", (i, j), scale, stride)


def segment_boxes(labels: np.ndarray, skip=(), min_pixels: int = 100) -> np.ndarray:
    """Object boxes of a label map: one per 8-connected component of each class not in ``skip`` (e.g. a
    background class), with at least ``min_pixels`` pixels (smaller specks are prediction noise at a
    16-pixel stride). (B, 4) float64 boxes, 0-based inclusive original pixels."""
    import cv2

    labels = np.asarray(labels)
    skip = {int(c) for c in skip}
    boxes = []
    for c in np.unique(labels):
        if int(c) in skip:
            continue
        count, _, stats, _ = cv2.connectedComponentsWithStats((labels == c).astype(np.uint8), connectivity=8)
        for x, y, bw, bh, area in stats[1:count]:  # component 0 is everything else
            if area >= min_pixels:
                boxes.append((x, y, x + bw - 1, y + bh - 1))
    return np.asarray(boxes, np.float64).reshape(-1, 4)
