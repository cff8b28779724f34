"""Effective dilation of deformable filters (paper §4, Table 2).

The effective dilation of one deformable filter (one output position, one deformable group) is the mean
Euclidean distance between its **adjacent** sampling locations, where adjacent means the horizontal and
vertical neighbour pairs of the kh x kw tap grid: kh*(kw-1) + (kh-1)*kw pairs, 12 for 3x3. Diagonal pairs
are not counted, so an undeformed filter has effective dilation exactly equal to its nominal dilation
(with a diagonal pair in the set it would not). Distances are in feature-map cells of the layer's
INPUT map, the unit the offsets are in. Stride and padding move all taps of a filter together, so they
do not enter.
"""
from __future__ import annotations

import numpy as np

from dcnviz.analysis._common import as_float64, pair, split_offset, tap_grid

__all__ = ["effective_dilation"]


def effective_dilation(offset, kernel_size=3, dilation=2, deformable_groups: int = 1) -> np.ndarray:
    """Effective dilation of every filter of one deformable conv layer.

    Args:
        offset: the layer's offset map, torch tensor or numpy array, (N, 2*G*kh*kw, Ho, Wo) or
            (2*G*kh*kw, Ho, Wo), in feature-map cells of the layer's input. Group g owns channels
            [g*2*kh*kw, (g+1)*2*kh*kw); within a group tap k = i*kw + j has dy at 2k and dx at 2k + 1.
        kernel_size, dilation: the layer's kernel (kh, kw) and dilation (dh, dw), ints or pairs.
        deformable_groups: G.

    Returns:
        float64 numpy array (N, G, Ho, Wo), or (G, Ho, Wo) for an unbatched offset: the mean distance, in
        input-map cells, over the 12 (for 3x3) horizontally or vertically adjacent tap pairs. Zero offsets
        give exactly the dilation (for dh != dw: the pair-count-weighted mean of dw and dh).
    """
    kh, kw = pair(kernel_size, "kernel_size")
    dh, dw = pair(dilation, "dilation")
    if min(kh, kw, dh, dw) < 1 or kh * kw < 2:
        raise ValueError(f"kernel_size must be >= 1 with at least two taps and dilation >= 1, got "
                         f"kernel_size={kernel_size}, dilation={dilation}")
    if not isinstance(deformable_groups, int) or deformable_groups < 1:
        raise ValueError(f"deformable_groups must be a positive int, got {deformable_groups!r}")
    off = as_float64(offset, "offset")
    if off.ndim not in (3, 4):
        raise ValueError(f"offset must have shape (N, C, Ho, Wo) or (C, Ho, Wo), got {tuple(off.shape)}")
    off = split_offset(off, "offset", kh, kw, deformable_groups)  # (..., G, kh, kw, 2, Ho, Wo)
    regular = tap_grid(kh, kw, dh, dw).reshape(kh, kw, 2, 1, 1)
    taps = off + regular  # sampling locations relative to the filter's first regular tap
    horizontal = np.linalg.norm(taps[..., :, 1:, :, :, :] - taps[..., :, :-1, :, :, :], axis=-3)
    vertical = np.linalg.norm(taps[..., 1:, :, :, :, :] - taps[..., :-1, :, :, :, :], axis=-3)
    total = horizontal.sum(axis=(-4, -3)) + vertical.sum(axis=(-4, -3))
    return total / (kh * (kw - 1) + (kh - 1) * kw)
