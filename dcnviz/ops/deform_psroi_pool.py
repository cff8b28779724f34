"""Deformable position-sensitive RoI pooling, with the semantics of MXNet's ``DeformablePSROIPooling``."""
from __future__ import annotations

import torch
from torch import nn

from dcnviz.ops import _checks, _ext  # noqa: F401  (_ext registers the kernels)

__all__ = ["deform_psroi_pool", "DeformPSRoIPool"]


def deform_psroi_pool(
    input: torch.Tensor,
    rois: torch.Tensor,
    offset: torch.Tensor | None = None,
    *,
    spatial_scale: float,
    output_dim: int,
    group_size: int,
    pooled_size: int,
    part_size: int | None = None,
    sample_per_part: int = 4,
    trans_std: float = 0.0,
) -> torch.Tensor:
    """Deformable PS RoI pooling (Dai et al. 2017, R-FCN head), exactly as the official MXNet operator.

    ``offset=None`` is the official ``no_trans`` mode. With ``group_size=1`` this is the paper's
    deformable RoI pooling; with ``group_size == pooled_size`` it is position-sensitive.

    Shapes:
        input  (N, output_dim * group_size**2, H, W); channel of (class c, bin row gh, bin col gw) is
               ``(c*group_size + gh)*group_size + gw``
        rois   (R, 5) ``[batch_index, x1, y1, x2, y2]`` in input-image pixels (corners inclusive)
        offset (R, 2 * num_classes_trans, part_size, part_size), normalised by the RoI size; channel
               ``2t`` is **dx** and ``2t + 1`` is **dy** (x first, unlike the conv);
               ``output_dim`` must be a multiple of ``num_classes_trans``: output channel ``ctop`` uses
               offset class ``ctop // (output_dim // num_classes_trans)``
        output (R, output_dim, pooled_size, pooled_size); on the CPU, for a channels-last input with
               ``group_size=1``, laid out bin-major in memory ((pooled_size, pooled_size, R, output_dim),
               which a per-bin GEMM reads as it is; the same values, bitwise)

    Semantics (official.md §3.2): RoI corners are rounded half away from zero, scaled by
    ``spatial_scale`` and shifted by -0.5 (the end corner is ``round(x2) + 1``); each bin is moved by
    ``offset * trans_std * roi_size`` and averages ``sample_per_part**2`` bilinear samples that start at
    the bin's top-left corner (not centred). Samples outside ``[-0.5, W-0.5] x [-0.5, H-0.5]`` are
    dropped; a bin with no sample is 0.

    Deviation (CPU): a bin's samples are summed, and its gradient spread, separably (per pixel, the
    product of summed row and column weights), which rounds differently from MXNet's sample-by-sample
    sum; an inf or NaN pixel that a sample weights by exactly 0 is skipped there, where MXNet gets NaN.
    Maps are limited to 2**30 pixels a side and ``sample_per_part`` to 2**15.
    """
    _checks.tensor(input, "input", 4, "(N, output_dim*group_size**2, H, W)")
    _checks.floating(input, "input")
    _checks.same(input, "input", rois=rois, offset=offset)
    for name, value in (("output_dim", output_dim), ("group_size", group_size),
                        ("pooled_size", pooled_size), ("sample_per_part", sample_per_part)):
        _checks.positive(value, name)
    part_size = pooled_size if part_size is None else part_size
    _checks.positive(part_size, "part_size")
    # the kernels' own limits (32-bit vector lanes), checked here too for a ValueError, not a RuntimeError
    if max(input.shape[2:]) > 2 ** 30 or sample_per_part > 2 ** 15:
        raise ValueError(f"the map can be at most 2**30 pixels high and wide and sample_per_part at most 2**15, "
                         f"got {input.shape[2]}x{input.shape[3]} and {sample_per_part}")
    if input.shape[1] != output_dim * group_size * group_size:
        raise ValueError(f"input must have output_dim*group_size**2 = {output_dim * group_size ** 2} channels, "
                         f"got {input.shape[1]}")
    _checks.rois(rois, input.shape[0])
    if offset is not None:
        _checks.tensor(offset, "offset", 4, "(R, 2*num_classes_trans, part_size, part_size)")
        r, t, ph, pw = offset.shape
        if r != rois.shape[0] or t == 0 or t % 2 or (ph, pw) != (part_size, part_size) or output_dim % (t // 2):
            raise ValueError(
                f"offset must have shape (R={rois.shape[0]}, 2*num_classes_trans, part_size={part_size}, "
                f"part_size={part_size}) with output_dim={output_dim} a multiple of num_classes_trans, "
                f"got {tuple(offset.shape)}")
    return torch.ops.dcnviz.deform_psroi_pool(
        input, rois, offset, float(spatial_scale), output_dim, group_size, pooled_size, part_size,
        sample_per_part, float(trans_std))


class DeformPSRoIPool(nn.Module):
    """``nn.Module`` form of :func:`deform_psroi_pool` (the offsets are an input, as in R-FCN)."""

    def __init__(self, spatial_scale: float, output_dim: int, group_size: int, pooled_size: int,
                 part_size: int | None = None, sample_per_part: int = 4, trans_std: float = 0.0):
        super().__init__()
        self.kwargs = dict(spatial_scale=spatial_scale, output_dim=output_dim, group_size=group_size,
                           pooled_size=pooled_size, part_size=part_size, sample_per_part=sample_per_part,
                           trans_std=trans_std)

    def forward(self, input, rois, offset=None):
        return deform_psroi_pool(input, rois, offset, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.kwargs.items())


@torch.library.register_fake("dcnviz::deform_psroi_pool")
def _fake(input, rois, offset, spatial_scale, output_dim, group_size, pooled_size, *args):
    if group_size == 1 and input.device.type == "cpu" and not input.is_contiguous() \
            and input.is_contiguous(memory_format=torch.channels_last):  # the CPU kernel's bin-major output
        return input.new_empty((pooled_size, pooled_size, rois.shape[0], output_dim)).permute(2, 3, 0, 1)
    return input.new_empty((rois.shape[0], output_dim, pooled_size, pooled_size))


@torch.library.register_fake("dcnviz::_deform_psroi_pool_backward")
def _fake_backward(grad, input, rois, offset, *args):
    # The kernels return contiguous gradients whatever the inputs' memory format (not empty_like's strides).
    return input.new_empty(input.shape), (input.new_empty((0,)) if offset is None else offset.new_empty(offset.shape))


def _setup_context(ctx, inputs, output):
    input, rois, offset, *params = inputs
    ctx.save_for_backward(input, rois, offset)
    ctx.params = params


def _backward(ctx, grad):
    input, rois, offset = ctx.saved_tensors
    gi, go = torch.ops.dcnviz._deform_psroi_pool_backward(grad, input, rois, offset, *ctx.params)
    return gi, None, (go if offset is not None else None), *([None] * len(ctx.params))


torch.library.register_autograd("dcnviz::deform_psroi_pool", _backward, setup_context=_setup_context)
