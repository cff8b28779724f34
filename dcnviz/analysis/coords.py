"""Feature-map cells <-> original-image pixels, one convention for units and sampling points alike.

Feature coordinates are continuous (y, x) = (row, column) positions on a map of feature stride ``stride``
(16 for res5), integer values at cell centres: cell (i, j) covers network-input pixels
[j*stride, (j+1)*stride) x [i*stride, (i+1)*stride). Image coordinates are continuous (y, x) positions in
the ORIGINAL image, pixel k covering [k, k+1). ``scale`` is the resize factor input = original * scale
(``Prep.scale``). Hence

    image = (feature + 0.5) * stride / scale        feature cell of an image point = floor(image * scale / stride)

The official visualizer uses (p + 0.5) * H_img / H_map for sampling points but p * H_img / H_map for the
activation unit (half a cell apart) and assumes an unpadded input; here both use the true scale and
stride and the +0.5 centre.
"""
from __future__ import annotations

import numpy as np

from dcnviz.analysis._common import as_float64, positive_number

__all__ = ["feature_to_image", "image_to_cell"]


def _positions(x, name: str) -> np.ndarray:
    p = as_float64(x, name)
    if p.ndim < 1 or p.shape[-1] != 2:
        raise ValueError(f"{name} must have shape (..., 2) (y, x), got {tuple(p.shape)}")
    return p


def feature_to_image(points, scale: float, stride: float) -> np.ndarray:
    """Feature-map positions (..., 2) (y, x) in cells -> original-image positions (..., 2) (y, x) in pixels.

    Works for activation units (integer cells) and sampling points (fractional) alike; points outside
    the map map outside the image, nothing is clipped or rounded.
    """
    factor = positive_number(stride, "stride") / positive_number(scale, "scale")
    return (_positions(points, "points") + 0.5) * factor


def image_to_cell(pixels, scale: float, stride: float) -> np.ndarray:
    """Original-image positions (..., 2) (y, x) in pixels -> int64 (..., 2) (i, j) of the feature cell
    containing them (not clipped to the map: the caller knows its size). Inverse of
    :func:`feature_to_image` on cell centres."""
    factor = positive_number(scale, "scale") / positive_number(stride, "stride")
    return np.floor(_positions(pixels, "pixels") * factor).astype(np.int64)
