"""Inference with the arithmetic of MXNet's CPU executor, which ran the official test on a CPU.

MXNet 1.9 (MKLDNN backend) does not execute a ResNet layer by layer as written: its subgraph pass folds
every frozen BatchNorm into the preceding convolution (``UpdateConvWeightBias``) and runs the convolutions
through oneDNN. :func:`mxnet_cpu_inference` does the same to a dcnviz model: it is mathematically the same
network, but float32 now rounds (nearly) as in MXNet. Measured on the MXNet references of
``tests/test_models_official.py`` (random well-scaled weights, res4 activations up to ~30): the stem and
res2 come out bitwise equal, and ``rpn_cls_prob`` differs by at most 5.6e-5, where the model as written
differs by up to 1.8e-4 in float32 and 1.35e-4 even in float64 (i.e. MXNet's own float32 rounding). From
res3 on the two still round differently: MXNet's oneDNN keeps its own blocked layouts and picks its
kernels by them, which PyTorch cannot request. That was on AVX-512 CPUs; on an AVX2-only one (AMD Zen 3)
the two oneDNN builds round differently from the stem on, and this is no closer to MXNet than the model
as written (``rpn_cls_prob`` 1.09e-4 against 1.06e-4 on one reference, each side ~6e-5 from the float64
model). The oneDNN channels-last convolutions are also PyTorch's fastest CPU path.
"""
from __future__ import annotations

import torch
from torch import nn

from dcnviz.models.resnet import FrozenBatchNorm2d, ResNetV1
from dcnviz.ops import DeformConv2d


class OneDNNConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (same parameters and state dict) that runs float32 CPU inputs through oneDNN on
    channels-last tensors, whatever the thread count and shape (``F.conv2d`` picks its CPU algorithm by
    those); its output is channels-last. bfloat16 CPU inputs go through ``F.conv2d`` on channels-last
    tensors (its bfloat16 kernels, AMX where the CPU has it; on contiguous tensors it converted layouts
    around every call, which cost as much as the convolutions), and ``fused`` takes oneDNN for them too.
    Other dtypes and devices go through ``F.conv2d`` as they are."""

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> OneDNNConv2d:
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                  conv.groups, conv.bias is not None, conv.padding_mode, device="meta")
        new.weight, new.bias = conv.weight, conv.bias
        # stored channels-last once, as forward reads it: a 3x3 weight was otherwise copied on every call
        new.weight.data = new.weight.data.contiguous(memory_format=torch.channels_last)
        return new.train(conv.training)

    def _onednn(self, x: torch.Tensor, dtypes: tuple[torch.dtype, ...] = (torch.float32,)) -> bool:
        return (x.device.type == "cpu" and x.dtype in dtypes and self.weight.dtype == x.dtype
                and self.padding_mode == "zeros" and torch.backends.mkldnn.is_available()
                and torch.backends.mkldnn.enabled
                and (x.dtype != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported()))

    def fused(self, x: torch.Tensor, shortcut: torch.Tensor | None = None, consume: bool = False) -> torch.Tensor:
        """``relu(self(x) [+ shortcut])`` as one oneDNN convolution with post-ops (the add, then the ReLU),
        on float32 CPU inputs and, where oneDNN has bfloat16 kernels, bfloat16 ones, when nothing needs a
        gradient (the fused op has no backward); otherwise as separate ops. In float32 the post-ops give
        the separate ops' bits; in bfloat16 they act on the float32 accumulator and round once, where the
        separate ops rounded the conv's output, the sum and the ReLU's input to bfloat16 (closer to float32,
        and ~1.5x faster at res4's expansion convs).

        ``consume``: nothing reads ``shortcut`` after this call, so the sum is written into it (oneDNN's
        in-place sum, as MXNet's executor plans it), and it is returned. Reading the shortcut as a second
        input instead cost ~30 % more at ResNet-101's res4 and res5 expansions and ~2.5x at res2, whose
        38 MB map it streamed once more (2 threads, 600x1000). A shortcut that is not channels-last is
        copied into that layout first, and the copy is consumed whatever ``consume`` says."""
        grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad
                                            or (shortcut is not None and shortcut.requires_grad))
        if not self._onednn(x, (torch.float32, torch.bfloat16)) or grad:
            y = self(x)
            return torch.relu(y if shortcut is None else shortcut + y)
        cl = torch.channels_last
        x, w = x.contiguous(memory_format=cl), self.weight.contiguous(memory_format=cl)
        args = (self.bias, self.padding, self.stride, self.dilation, self.groups)
        if shortcut is None:
            return torch.ops.mkldnn._convolution_pointwise(x, w, *args, "relu", [], "")
        other = shortcut.contiguous(memory_format=cl)
        if (consume or other is not shortcut) and other.dtype == x.dtype:
            return torch.ops.mkldnn._convolution_pointwise_.binary(other, x, w, *args, "add", None, "relu", [], "")
        return torch.ops.mkldnn._convolution_pointwise.binary(x, other, w, *args, "add", None, "relu", [], "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cl = torch.channels_last
        if self._onednn(x):
            return torch.mkldnn_convolution(x.contiguous(memory_format=cl), self.weight.contiguous(memory_format=cl),
                                            self.bias, self.padding, self.stride, self.dilation, self.groups)
        if x.device.type == "cpu" and x.dtype == torch.bfloat16:
            return self._conv_forward(x.contiguous(memory_format=cl), self.weight.contiguous(memory_format=cl),
                                      self.bias)
        return super().forward(x)


def fold_batchnorm(backbone: ResNetV1) -> ResNetV1:
    """Fold every ordinary conv -> :class:`FrozenBatchNorm2d` pair into the conv, in place, with MXNet's
    arithmetic: per output channel ``alpha = gamma / sqrt(var + eps)`` in double precision, rounded once to
    the weight dtype, then ``w' = w * alpha`` and ``b' = beta - alpha * mean`` in that dtype; the BatchNorm
    becomes an identity. The deformable branch2b convs keep theirs: MXNet runs ``DeformableConvolution``
    outside that pass. Afterwards the state dict no longer has the official keys; folding again changes
    nothing."""
    blocks = [getattr(backbone, name) for names in backbone.stages for name in names]
    candidates = [(backbone, "conv1", "bn_conv1")] + [
        (block, conv, bn) for block in blocks
        for conv, bn in (("branch1", "bn1"), ("branch2a", "bn2a"), ("branch2b", "bn2b"), ("branch2c", "bn2c"))]
    # a deformable conv is not an nn.Conv2d, and a BatchNorm folded before is an Identity by now
    pairs = [(parent, conv, bn) for parent, conv, bn in candidates
             if isinstance(getattr(parent, conv, None), nn.Conv2d)
             and isinstance(getattr(parent, bn, None), FrozenBatchNorm2d)]
    with torch.no_grad():
        for parent, conv_name, bn_name in pairs:
            conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
            alpha = (bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)).to(conv.weight.dtype)
            conv.weight.mul_(alpha[:, None, None, None])
            conv.bias = nn.Parameter(bn.bias - alpha * bn.running_mean, requires_grad=conv.weight.requires_grad)
            setattr(parent, bn_name, nn.Identity())
    return backbone


def mxnet_cpu_inference(model: nn.Module) -> nn.Module:
    """Fold the BatchNorms of ``model.backbone`` (:func:`fold_batchnorm`), turn every ``nn.Conv2d`` of the
    model into a :class:`OneDNNConv2d` and store every :class:`~dcnviz.ops.DeformConv2d` weight channels-last,
    in place. Returns the model.

    A channels-last deformable weight is the tap-major matrix the op's GEMM reads, used in place, where a
    contiguous one is permuted into it on every call (~1.2 ms at ResNet-101's res5, ~3 % of the op)."""
    fold_batchnorm(model.backbone)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Conv2d:
                setattr(parent, name, OneDNNConv2d.from_conv(child))
            elif isinstance(child, DeformConv2d):
                child.weight.data = child.weight.data.contiguous(memory_format=torch.channels_last)
    return model
