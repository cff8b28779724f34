"""Deformable RoI pooling (Dai et al. 2017, Sec. 2.2), as the official Faster R-CNN and FPN heads compute it.

The official code has no operator of its own for it: it calls MXNet's ``DeformablePSROIPooling`` with
``group_size=1``. With one group the channel map of that operator is the identity (every bin of output
channel ``c`` reads input channel ``c``), so this is a thin wrapper over :func:`deform_psroi_pool` with
``output_dim = C`` and ``group_size = 1``: the same kernels, the same registered op
(``torch.ops.dcnviz.deform_psroi_pool``, with its fake kernel and autograd formula), hence exactly the
same rounding, sampling and offset scaling. ``tests/conformance/droi_*.npz`` check it against MXNet's
operator called the way the official symbols call it.
"""
from __future__ import annotations

import torch
from torch import nn

from dcnviz.ops import _checks
from dcnviz.ops.deform_psroi_pool import deform_psroi_pool

__all__ = ["deform_roi_pool", "DeformRoIPool"]


def deform_roi_pool(
    input: torch.Tensor,
    rois: torch.Tensor,
    offset: torch.Tensor | None = None,
    *,
    spatial_scale: float,
    pooled_size: int,
    part_size: int | None = None,
    sample_per_part: int = 4,
    trans_std: float = 0.0,
) -> torch.Tensor:
    """Deformable RoI pooling: every channel pooled over the same ``pooled_size x pooled_size`` bins,
    each bin moved by one learned (dx, dy) offset.

    ``offset=None`` is the official ``no_trans`` mode (plain bins: what the official Faster R-CNN DCN head
    pools to get the features its offset fc layer reads).

    Shapes:
        input  (N, C, H, W) feature map
        rois   (R, 5) ``[batch_index, x1, y1, x2, y2]`` in input-image pixels (corners inclusive)
        offset (R, 2 * T, part_size, part_size), normalised by the RoI width and height; channel ``2t``
               is **dx** and ``2t + 1`` is **dy** (x first). The official heads use T = 1 (one field for
               all channels, the paper's form, from an fc layer reshaped to (R, 2, 7, 7)); MXNet's operator
               also accepts T > 1 dividing C, giving channel ``c`` the field ``c // (C // T)``.
        output (R, C, pooled_size, pooled_size)

    Semantics (official.md §3.2 with group_size = 1): RoI corners are rounded half away from zero, scaled
    by ``spatial_scale`` and shifted by -0.5 (the end corner is ``round(x2) + 1``); bin (i, j) of a RoI of
    size (roi_w, roi_h) in feature pixels starts at its regular corner moved by
    ``(dx * trans_std * roi_w, dy * trans_std * roi_h)`` read at part ``(i * part_size // pooled_size,
    j * part_size // pooled_size)``, and averages ``sample_per_part**2`` bilinear samples that start at
    the bin's top-left corner (not centred). Samples outside ``[-0.5, W-0.5] x [-0.5, H-0.5]`` are
    dropped; a bin with no sample is 0. The paper's formula (offsets scaled by gamma and the RoI size, bins
    averaged) is this with gamma = ``trans_std``.
    """
    _checks.tensor(input, "input", 4, "(N, C, H, W)")
    return deform_psroi_pool(input, rois, offset, spatial_scale=spatial_scale, output_dim=input.shape[1],
                             group_size=1, pooled_size=pooled_size, part_size=part_size,
                             sample_per_part=sample_per_part, trans_std=trans_std)


class DeformRoIPool(nn.Module):
    """``nn.Module`` form of :func:`deform_roi_pool` (the offsets are an input: in the official heads
    they come from an fc layer on the no-offset pooling of the same RoIs)."""

    def __init__(self, spatial_scale: float, pooled_size: int, part_size: int | None = None,
                 sample_per_part: int = 4, trans_std: float = 0.0):
        super().__init__()
        self.kwargs = dict(spatial_scale=spatial_scale, pooled_size=pooled_size, part_size=part_size,
                           sample_per_part=sample_per_part, trans_std=trans_std)

    def forward(self, input, rois, offset=None):
        return deform_roi_pool(input, rois, offset, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.kwargs.items())
