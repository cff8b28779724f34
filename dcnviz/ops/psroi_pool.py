"""Position-sensitive RoI pooling, with the semantics of MXNet's ``PSROIPooling`` (plain R-FCN)."""
from __future__ import annotations

import torch
from torch import nn

from dcnviz.ops import _checks, _ext  # noqa: F401  (_ext registers the kernels)

__all__ = ["psroi_pool", "PSRoIPool"]


def psroi_pool(input: torch.Tensor, rois: torch.Tensor, *, spatial_scale: float, output_dim: int,
               group_size: int, pooled_size: int) -> torch.Tensor:
    """PS RoI pooling of R-FCN, exactly as the official MXNet operator.

    Shapes:
        input  (N, output_dim * group_size**2, H, W); channel ``(c*group_size + gh)*group_size + gw``
        rois   (R, 5) ``[batch_index, x1, y1, x2, y2]`` in input-image pixels (corners inclusive)
        output (R, output_dim, pooled_size, pooled_size)

    Semantics (official.md §3.3): RoI corners rounded half away from zero and scaled, no -0.5 shift
    (end corner ``round(x2) + 1``); each bin averages the whole pixels in ``[floor(start), ceil(end))``,
    clipped to the map, without interpolation; an empty bin is 0.
    """
    _checks.tensor(input, "input", 4, "(N, output_dim*group_size**2, H, W)")
    _checks.floating(input, "input")
    _checks.same(input, "input", rois=rois)
    for name, value in (("output_dim", output_dim), ("group_size", group_size), ("pooled_size", pooled_size)):
        _checks.positive(value, name)
    if input.shape[1] != output_dim * group_size * group_size:
        raise ValueError(f"input must have output_dim*group_size**2 = {output_dim * group_size ** 2} channels, "
                         f"got {input.shape[1]}")
    _checks.rois(rois, input.shape[0])
    return torch.ops.dcnviz.psroi_pool(input, rois, float(spatial_scale), output_dim, group_size, pooled_size)


class PSRoIPool(nn.Module):
    """``nn.Module`` form of :func:`psroi_pool`."""

    def __init__(self, spatial_scale: float, output_dim: int, group_size: int, pooled_size: int):
        super().__init__()
        self.kwargs = dict(spatial_scale=spatial_scale, output_dim=output_dim, group_size=group_size,
                           pooled_size=pooled_size)

    def forward(self, input, rois):
        return psroi_pool(input, rois, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.kwargs.items())


@torch.library.register_fake("dcnviz::psroi_pool")
def _fake(input, rois, spatial_scale, output_dim, group_size, pooled_size):
    return input.new_empty((rois.shape[0], output_dim, pooled_size, pooled_size))


@torch.library.register_fake("dcnviz::_psroi_pool_backward")
def _fake_backward(grad, input, *args):
    return input.new_empty(input.shape)  # contiguous, as the kernels return it (not empty_like's strides)


def _setup_context(ctx, inputs, output):
    input, rois, *params = inputs
    ctx.save_for_backward(input, rois)
    ctx.params = params


def _backward(ctx, grad):
    input, rois = ctx.saved_tensors
    return torch.ops.dcnviz._psroi_pool_backward(grad, input, rois, *ctx.params), None, *([None] * len(ctx.params))


torch.library.register_autograd("dcnviz::psroi_pool", _backward, setup_context=_setup_context)
