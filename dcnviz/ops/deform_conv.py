"""Deformable convolution v1, with the semantics of MXNet's ``DeformableConvolution``."""
from __future__ import annotations

import torch
from torch import nn

from dcnviz.ops import _checks, _ext  # noqa: F401  (_ext registers the kernels)

__all__ = ["deform_conv2d", "DeformConv2d"]


def _out_size(size: int, pad: int, dil: int, k: int, stride: int) -> int:
    return (size + 2 * pad - (dil * (k - 1) + 1)) // stride + 1


def deform_conv2d(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    deformable_groups: int = 1,
) -> torch.Tensor:
    """Deformable convolution (Dai et al. 2017), exactly as the official MXNet operator.

    Shapes:
        input  (N, C, H, W)
        offset (N, 2 * deformable_groups * kh * kw, Ho, Wo), in input-map pixels
        weight (F, C / groups, kh, kw)
        bias   (F,) or None
        output (N, F, Ho, Wo), Ho = (H + 2*pad_h - (dil_h*(kh-1) + 1)) // stride_h + 1, same for Wo

    Semantics:
        Input channels form ``deformable_groups`` equal consecutive blocks; block g reads offset channels
        ``g*2*kh*kw ...``. For tap k = i*kw + j, channel ``2k`` is the **dy** and ``2k + 1`` the **dx**
        offset (y first, as in the official release and torchvision). Output (ho, wo) samples its tap at
        ``y = ho*stride_h - pad_h + i*dil_h + dy``, ``x = wo*stride_w - pad_w + j*dil_w + dx``.
        Boundary rule of DCNv1 (not torchvision's DCNv2 rule): a sample with y < 0, x < 0, y >= H or
        x >= W is zero; inside, bilinear interpolation clamps to the last row/column once
        floor(y) >= H-1 (or floor(x) >= W-1). NaN or infinite offsets make a sample count as outside.
        Gradients follow the official backward: the offset gradient is zero outside and in the clamped
        edge band, and one-sided (toward +1) at integer coordinates.
    """
    _checks.tensor(input, "input", 4, "(N, C, H, W)")
    _checks.tensor(weight, "weight", 4, "(F, C/groups, kh, kw)")
    _checks.tensor(offset, "offset", 4, "(N, 2*deformable_groups*kh*kw, Ho, Wo)")
    _checks.floating(input, "input")
    _checks.same(input, "input", offset=offset, weight=weight, bias=bias)
    sh, sw = _checks.pair(stride, "stride")
    ph, pw = _checks.pair(padding, "padding")
    dh, dw = _checks.pair(dilation, "dilation")
    _checks.positive(groups, "groups")
    _checks.positive(deformable_groups, "deformable_groups")
    if min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise ValueError(f"stride and dilation must be >= 1 and padding >= 0, got stride={stride}, "
                         f"dilation={dilation}, padding={padding}")
    n, c, h, w = input.shape
    f, cg, kh, kw = weight.shape
    if c % groups or f % groups:
        raise ValueError(f"input channels ({c}) and weight.shape[0] ({f}) must be divisible by groups ({groups})")
    if c % deformable_groups:
        raise ValueError(f"input channels ({c}) must be divisible by deformable_groups ({deformable_groups})")
    if cg != c // groups:
        raise ValueError(f"weight must have shape (F, C/groups={c // groups}, kh, kw), got {tuple(weight.shape)}")
    ho, wo = _out_size(h, ph, dh, kh, sh), _out_size(w, pw, dw, kw, sw)
    if ho < 1 or wo < 1:
        raise ValueError(f"input of size {h}x{w} is too small for kernel {kh}x{kw} with padding "
                         f"({ph}, {pw}) and dilation ({dh}, {dw})")
    expected = (n, 2 * deformable_groups * kh * kw, ho, wo)
    if tuple(offset.shape) != expected:
        raise ValueError(f"offset must have shape (N, 2*deformable_groups*kh*kw, Ho, Wo) = {expected}, "
                         f"got {tuple(offset.shape)}")
    if bias is not None and tuple(bias.shape) != (f,):
        raise ValueError(f"bias must have shape ({f},), got {tuple(bias.shape)}")
    return torch.ops.dcnviz.deform_conv2d(
        input, offset, weight, bias, sh, sw, ph, pw, dh, dw, groups, deformable_groups)


class DeformConv2d(nn.Module):
    """``nn.Module`` form of :func:`deform_conv2d`; the offsets are an input, as in the official layers
    (the official models compute them with a separate, ordinary convolution)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, deformable_groups: int = 1, bias: bool = False):
        super().__init__()
        kh, kw = _checks.pair(kernel_size, "kernel_size")
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.groups, self.deformable_groups = groups, deformable_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kh, kw))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)

    def forward(self, input: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return deform_conv2d(input, offset, self.weight, self.bias, self.stride, self.padding,
                             self.dilation, self.groups, self.deformable_groups)

    def extra_repr(self) -> str:
        f, cg, kh, kw = self.weight.shape
        return (f"{cg * self.groups}, {f}, kernel_size=({kh}, {kw}), stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"deformable_groups={self.deformable_groups}, bias={self.bias is not None}")


def _layout(input: torch.Tensor) -> torch.memory_format:
    """The memory format of the output and of the input gradient: the CPU kernels keep a channels-last
    input's layout (as torch's conv2d does; csrc/cpu/deform_conv_cpu.cpp ``channels_last``), the CUDA
    kernels always return NCHW-contiguous tensors."""
    channels_last = input.permute(0, 2, 3, 1).is_contiguous() and not input.is_contiguous()
    return torch.channels_last if channels_last and input.device.type == "cpu" else torch.contiguous_format


@torch.library.register_fake("dcnviz::deform_conv2d")
def _fake(input, offset, weight, bias, sh, sw, ph, pw, dh, dw, groups, dgroups):
    n, _, h, w = input.shape
    f, _, kh, kw = weight.shape
    shape = (n, f, _out_size(h, ph, dh, kh, sh), _out_size(w, pw, dw, kw, sw))
    return torch.empty(shape, dtype=input.dtype, device=input.device, memory_format=_layout(input))


@torch.library.register_fake("dcnviz::_deform_conv2d_backward")
def _fake_backward(grad, input, offset, weight, *args):
    # offset and weight gradients are contiguous whatever their inputs' layout (not empty_like's strides)
    return (torch.empty(input.shape, dtype=input.dtype, device=input.device, memory_format=_layout(input)),
            offset.new_empty(offset.shape), weight.new_empty(weight.shape), weight.new_empty((weight.shape[0],)))


def _setup_context(ctx, inputs, output):
    input, offset, weight, bias, *params = inputs
    ctx.save_for_backward(input, offset, weight)
    ctx.params = params
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    input, offset, weight = ctx.saved_tensors
    gi, go, gw, gb = torch.ops.dcnviz._deform_conv2d_backward(grad, input, offset, weight, *ctx.params)
    return gi, go, gw, (gb if ctx.has_bias else None), *([None] * len(ctx.params))


torch.library.register_autograd("dcnviz::deform_conv2d", _backward, setup_context=_setup_context)
