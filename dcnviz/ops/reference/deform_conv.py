"""Deformable convolution v1 in plain PyTorch: gather-based bilinear sampling, then a grouped matmul.

Slow and memory-hungry (it materialises every sample of every channel), but short enough to check by
eye against official.md §3.1. Its autograd gradients are the official ones: corners come from
``floor`` (no gradient), so at an integer coordinate the derivative is the one-sided difference toward
+1; in the clamped edge band the fractional weight is a constant 0, so the derivative along that axis
is 0; a sample outside the map is replaced by a constant 0, so it has no gradient at all.
"""
from __future__ import annotations

import torch

from dcnviz.ops import _checks


def _axis(coord: torch.Tensor, size: int):
    """Floor-based corners along one axis for coordinates already known to lie in [0, size).

    Returns (low index, high index, fractional weight of the high corner). Once floor(coord) >= size-1
    both corners are the last row/column and the fraction is a constant 0 (edge replicated).
    """
    low = coord.detach().floor()
    band = low >= size - 1
    low = torch.where(band, torch.full_like(low, size - 1), low).long()
    high = torch.where(band, low, low + 1)
    frac = torch.where(band, torch.zeros_like(coord), coord - low.to(coord.dtype))
    return low, high, frac


def deform_conv2d(input: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None = None, stride=1, padding=0, dilation=1, groups: int = 1,
                  deformable_groups: int = 1) -> torch.Tensor:
    """Same arguments, shapes and semantics as :func:`dcnviz.ops.deform_conv2d` (no argument checks
    beyond what the shapes need).

    input (N, C, H, W); offset (N, 2*DG*kh*kw, Ho, Wo) with (dy, dx) pairs per tap in row-major tap
    order, in input pixels; weight (F, C/groups, kh, kw); returns (N, F, Ho, Wo).
    """
    (sh, sw), (ph, pw), (dh, dw) = (_checks.pair(v, name) for v, name in
                                    ((stride, "stride"), (padding, "padding"), (dilation, "dilation")))
    n, c, h, w = input.shape
    f, cg, kh, kw = weight.shape
    dg, k = deformable_groups, kh * kw
    ho, wo = offset.shape[-2:]

    off = offset.reshape(n, dg, k, 2, ho, wo)
    taps_y = torch.arange(kh, device=input.device).repeat_interleave(kw) * dh  # (K,)
    taps_x = torch.arange(kw, device=input.device).repeat(kh) * dw
    base_y = taps_y.view(k, 1, 1) + (torch.arange(ho, device=input.device) * sh - ph).view(1, ho, 1)
    base_x = taps_x.view(k, 1, 1) + (torch.arange(wo, device=input.device) * sw - pw).view(1, 1, wo)
    y = base_y.to(input.dtype) + off[:, :, :, 0]  # (N, DG, K, Ho, Wo)
    x = base_x.to(input.dtype) + off[:, :, :, 1]

    # v1 hard cut: outside [0, H) x [0, W) the sample is 0 (NaN fails the test and is outside too).
    inside = (y >= 0) & (x >= 0) & (y < h) & (x < w)
    zero = torch.zeros((), dtype=input.dtype, device=input.device)
    y0, y1, ly = _axis(torch.where(inside, y, zero), h)
    x0, x1, lx = _axis(torch.where(inside, x, zero), w)

    # Gather the four corners for every channel of each deformable group: (N, DG, C/DG, K*Ho*Wo).
    planes = input.reshape(n, dg, c // dg, h * w)

    def corner(yi, xi):
        index = (yi * w + xi).reshape(n, dg, 1, k * ho * wo).expand(-1, -1, c // dg, -1)
        return planes.gather(3, index).reshape(n, dg, c // dg, k, ho, wo)

    ly, lx, inside = ly.unsqueeze(2), lx.unsqueeze(2), inside.unsqueeze(2)
    value = ((1 - ly) * (1 - lx) * corner(y0, x0) + (1 - ly) * lx * corner(y0, x1)
             + ly * (1 - lx) * corner(y1, x0) + ly * lx * corner(y1, x1))
    columns = torch.where(inside, value, zero).reshape(n, groups, cg * k, ho * wo)

    out = torch.einsum("gfk,ngkp->ngfp", weight.reshape(groups, f // groups, cg * k), columns)
    out = out.reshape(n, f, ho, wo)
    return out if bias is None else out + bias.view(1, f, 1, 1)
