"""Object-size buckets of filter positions for the paper's Table 2.

Boxes are ``[x1, y1, x2, y2]`` in ORIGINAL-image pixels, 0-based with inclusive corners (VOC minus one,
as in the official code): width = x2 - x1 + 1, area = width * height, and the box covers the continuous
region [x1, x2 + 1) x [y1, y2 + 1). Size thresholds follow the paper's caption: small < 96², large > 224²;
the caption's strict inequalities leave areas of exactly 96² and 224² unassigned, and dcnviz puts both
in medium (96² <= area <= 224²).

A filter at output cell (i, j) of a map of feature stride ``stride`` is centred at image position
((i + 0.5) * stride / scale, (j + 0.5) * stride / scale) (:func:`dcnviz.analysis.feature_to_image`).
This is the filter's centre tap for "same" layers such as res5 (stride 1, pad = dilation*(k-1)/2). It is
assigned the bucket of the SMALLEST-area non-difficult GT box containing that point, background if no
box contains it, and is left out (``EXCLUDED``) if only difficult boxes contain it.
"""
from __future__ import annotations

import numpy as np

from dcnviz.analysis._common import as_float64, pair
from dcnviz.analysis.coords import feature_to_image

__all__ = ["BUCKETS", "SMALL", "MEDIUM", "LARGE", "BACKGROUND", "EXCLUDED", "SMALL_MAX_AREA",
           "LARGE_MIN_AREA", "box_areas", "size_bucket", "assign_buckets"]

BUCKETS = ("small", "medium", "large", "background")
SMALL, MEDIUM, LARGE, BACKGROUND = range(4)
EXCLUDED = -1
SMALL_MAX_AREA = 96 ** 2  # area < 9216 is small
LARGE_MIN_AREA = 224 ** 2  # area > 50176 is large; 9216 <= area <= 50176 is medium


def _boxes(boxes) -> np.ndarray:
    b = as_float64(boxes, "boxes")
    if b.size == 0:
        return b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must have shape (B, 4) [x1, y1, x2, y2], got {tuple(b.shape)}")
    if not np.isfinite(b).all() or (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any():
        raise ValueError("boxes must be finite [x1, y1, x2, y2] with x2 >= x1 and y2 >= y1 (inclusive corners)")
    return b


def box_areas(boxes) -> np.ndarray:
    """Areas (B,) in pixels² of 0-based inclusive boxes (B, 4): (x2 - x1 + 1) * (y2 - y1 + 1)."""
    b = _boxes(boxes)
    return (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)


def size_bucket(areas) -> np.ndarray:
    """int8 bucket per area: SMALL below 96², LARGE above 224², MEDIUM in between, both ends included."""
    a = as_float64(areas, "areas")
    return np.where(a < SMALL_MAX_AREA, SMALL, np.where(a > LARGE_MIN_AREA, LARGE, MEDIUM)).astype(np.int8)


def assign_buckets(map_size, scale: float, stride: float, boxes, difficult=None) -> np.ndarray:
    """Bucket of every filter position of a feature map.

    Args:
        map_size: (Ho, Wo) of the map of filter positions (e.g. an effective-dilation map).
        scale: resize factor of the image (``Prep.scale``), stride: the map's feature stride (16 for res5).
        boxes: (B, 4) GT boxes, 0-based inclusive original pixels; difficult: (B,) bool or None.

    Returns:
        int8 (Ho, Wo): SMALL, MEDIUM, LARGE, BACKGROUND, or EXCLUDED (inside difficult boxes only).
    """
    ho, wo = pair(map_size, "map_size")
    b = _boxes(boxes)
    hard = np.zeros(len(b), bool) if difficult is None else np.asarray(difficult, bool).reshape(-1)
    if hard.shape != (len(b),):
        raise ValueError(f"difficult must have one flag per box ({len(b)}), got shape {np.shape(difficult)}")
    cells = np.stack(np.meshgrid(np.arange(ho), np.arange(wo), indexing="ij"), axis=-1).reshape(-1, 1, 2)
    centre = feature_to_image(cells, scale, stride)  # (P, 1, 2) image (y, x)
    cy, cx = centre[..., 0], centre[..., 1]
    inside = (cx >= b[:, 0]) & (cx < b[:, 2] + 1) & (cy >= b[:, 1]) & (cy < b[:, 3] + 1)  # (P, B)
    area = np.where(inside & ~hard, box_areas(b), np.inf)
    smallest = area.min(axis=1, initial=np.inf)
    buckets = np.where(np.isfinite(smallest), size_bucket(np.where(np.isfinite(smallest), smallest, 0)),
                       np.where(inside.any(axis=1), EXCLUDED, BACKGROUND))
    return buckets.astype(np.int8).reshape(ho, wo)
