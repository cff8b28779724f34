"""MSRA/Caffe-style ResNet-v1 backbone of the official R-FCN and DeepLab models (official.md §1.1-1.2),
with the width and depth as parameters so that smaller models can reuse the same blocks.

- stem: conv1 7x7/2 (pad 3) -> bn_conv1 -> ReLU -> pool1 3x3/2 pad 0 in ceil mode;
- bottleneck ``resXY``: branch2a 1x1 -> BN -> ReLU -> branch2b 3x3 -> BN -> ReLU -> branch2c 1x1 -> BN,
  plus the shortcut (identity, or branch1 1x1 -> BN in the first block of a stage), then ReLU;
  the stride-2 step of res3a/res4a sits on the **1x1** convs (branch2a and branch1);
- the last stage (res5) runs at stride 1 with dilation 2 (pad 2) in every branch2b, so the output
  stride stays 16 (R-FCN, Faster R-CNN, DeepLab); FPN's res5 (``res5_dilation=1``) runs at stride 2
  (on res5a's 1x1 convs, as res3a/res4a), without dilation, for an output stride of 32;
- with ``deformable`` set, the branch2b convs of ``deformable_blocks`` (default: res5's three) are
  deformable, each fed by an ordinary offset conv ``branch2b_offset`` (3x3, with bias) on the branch2a
  output (FPN DCN also makes res3b3 and res4b22 deformable);
- every conv has no bias; BatchNorm uses the stored statistics with eps 1e-5 (frozen); for inference
  :mod:`dcnviz.models.mxnet_cpu` folds it into the convs as MXNet's CPU executor does.

Module names are the official layer names (``res4b22.branch2c``, ``res4b22.bn2c``), see
:mod:`dcnviz.convert.names`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dcnviz.models.hooks import sees_calls
from dcnviz.ops import DeformConv2d

FEATURE_STRIDE = 16


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics: ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``
    (MXNet ``use_global_stats=True, fix_gamma=False``). All four tensors are buffers."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


@dataclass(frozen=True)
class DeformableSpec:
    """Geometry of the deformable branch2b convs of one model.

    ``deformable_groups`` 4 with offset dilation 2 for the R-FCN COCO model (72 offset channels);
    1 with offset dilation 1 for DeepLab DCN and ``deform_conv`` (18 channels); 4 with offset dilation 1
    for FPN DCN. The deformable conv itself is 3x3, stride 1, with its block's dilation (2 in a dilated
    res5, else 1) and pad."""

    deformable_groups: int
    offset_dilation: int


@dataclass(frozen=True)
class DeformableLayer:
    """Everything a visualization needs to place the samples of one deformable conv (field names as
    :class:`dcnviz.analysis.LayerGeometry`, which ``LayerGeometry.from_module`` also reads from the module).

    Output cell (ho, wo) samples input cell ``(ho*stride - padding + i*dilation + dy, wo*stride - padding +
    j*dilation + dx)`` for tap (i, j) of the ``kernel_size`` x ``kernel_size`` filter, reading ``dy, dx``
    from channels ``g*2*K + 2k, g*2*K + 2k + 1`` (K = kernel_size**2, k = i*kernel_size + j) of the blob
    named ``offset``; positions are in cells of a map with ``feature_stride`` input pixels per cell. The
    ``offset_*`` fields describe the ordinary conv that computes the offsets."""

    name: str
    offset: str
    kernel_size: int
    dilation: int
    padding: int
    stride: int
    deformable_groups: int
    offset_kernel_size: int
    offset_dilation: int
    offset_padding: int
    feature_stride: int = FEATURE_STRIDE


def block_names(stage: int, count: int) -> list[str]:
    """Official block names: ``res2a, res2b, res2c`` for up to 3 blocks, else ``res3a, res3b1, res3b2, ...``."""
    if count <= 3:
        return [f"res{stage}{'abc'[i]}" for i in range(count)]
    return [f"res{stage}a"] + [f"res{stage}b{i}" for i in range(1, count)]


def conv_bn_relu(conv: nn.Module, bn: nn.Module | None, x: torch.Tensor, shortcut: torch.Tensor | None = None,
                 consume: bool = False) -> torch.Tensor:
    """``relu(bn(conv(x)) [+ shortcut])`` (``bn`` None: no BatchNorm). Where the BatchNorm is folded into a
    oneDNN conv (:func:`dcnviz.models.mxnet_cpu.mxnet_cpu_inference`) or there is none, one call with the
    add and the ReLU as oneDNN post-ops (``OneDNNConv2d.fused``), the same bits without the passes over the
    map in between; with ``consume`` (nothing reads ``shortcut`` afterwards) the sum may be written into
    ``shortcut``. Modules that forward hooks watch are called as themselves."""
    plain = bn is None or isinstance(bn, nn.Identity)
    if plain and hasattr(conv, "fused") and not (sees_calls(conv) or (bn is not None and sees_calls(bn))):
        return conv.fused(x, shortcut, consume)
    y = conv(x) if bn is None else bn(conv(x))
    return F.relu(y if shortcut is None else shortcut + y)


class Bottleneck(nn.Module):
    """One ResNet-v1 bottleneck with official layer names; optionally a deformable branch2b."""

    def __init__(self, in_channels: int, mid: int, out: int, stride: int, dilation: int, shortcut: bool,
                 deformable: DeformableSpec | None = None):
        super().__init__()
        self.dilation = dilation
        if shortcut:
            self.branch1 = nn.Conv2d(in_channels, out, 1, stride, bias=False)
            self.bn1 = FrozenBatchNorm2d(out)
        self.branch2a = nn.Conv2d(in_channels, mid, 1, stride, bias=False)
        self.bn2a = FrozenBatchNorm2d(mid)
        if deformable is None:
            self.branch2b = nn.Conv2d(mid, mid, 3, 1, dilation, dilation, bias=False)
        else:
            dg, od = deformable.deformable_groups, deformable.offset_dilation
            self.branch2b_offset = nn.Conv2d(mid, 2 * dg * 9, 3, 1, od, od, bias=True)
            self.branch2b = DeformConv2d(mid, mid, 3, 1, dilation, dilation, deformable_groups=dg)
        self.bn2b = FrozenBatchNorm2d(mid)
        self.branch2c = nn.Conv2d(mid, out, 1, bias=False)
        self.bn2c = FrozenBatchNorm2d(out)
        self.deformable = deformable

    def forward(self, x: torch.Tensor, taps: dict | None = None, name: str = "", consume: bool = False) -> torch.Tensor:
        """``consume``: nothing reads ``x`` after this call (:meth:`ResNetV1.stage_outputs` says so of a
        block's input that only the block before it has made), so an identity shortcut's sum may be
        written into ``x``. A branch1 shortcut is the block's own tensor, consumed unless hooks see it."""
        a = conv_bn_relu(self.branch2a, self.bn2a, x)
        if self.deformable is None:
            b = conv_bn_relu(self.branch2b, self.bn2b, a)
        else:
            offset = self.branch2b_offset(a)
            if taps is not None:
                taps[name + "_branch2b_offset"] = offset
            b = F.relu(self.bn2b(self.branch2b(a, offset)))
        if hasattr(self, "branch1"):
            shortcut = self.bn1(self.branch1(x))
            consume = not (sees_calls(self.branch1) or sees_calls(self.bn1))
        else:
            shortcut = x
        return conv_bn_relu(self.branch2c, self.bn2c, b, shortcut, consume)


class ResNetV1(nn.Module):
    """ResNet-v1 trunk up to res5 at output stride 16.

    ``units`` blocks per stage (res2..res5), ``widths`` the bottleneck (mid) width per stage, outputs
    ``expansion * width``. The official ResNet-101 is ``units=(3, 4, 23, 3), widths=(64, 128, 256, 512),
    stem=64``. ``forward`` returns the res4 output (RPN input, ``4*widths[2]`` channels, stride 16) and the
    res5 output (``4*widths[3]`` channels, stride 16, or 32 with ``res5_dilation=1``).
    ``deformable_blocks`` names the blocks whose branch2b is deformable when ``deformable`` is set (default:
    every res5 block)."""

    def __init__(self, units=(3, 4, 23, 3), widths=(64, 128, 256, 512), stem: int = 64, expansion: int = 4,
                 deformable: DeformableSpec | None = None, res5_dilation: int = 2,
                 deformable_blocks: tuple[str, ...] | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
        self.bn_conv1 = FrozenBatchNorm2d(stem)
        self.stages: list[list[str]] = []
        self.strides: dict[str, int] = {}  # block name -> input pixels per cell of its output
        channels, stride_so_far = stem, 4
        strided = (3, 4) if res5_dilation > 1 else (3, 4, 5)
        if deformable_blocks is None:
            deformable_blocks = tuple(block_names(5, units[3]))
        for stage, (count, mid) in enumerate(zip(units, widths), start=2):
            names = block_names(stage, count)
            dilation = res5_dilation if stage == 5 else 1
            for i, name in enumerate(names):
                stride = 2 if i == 0 and stage in strided else 1
                stride_so_far *= stride
                block = Bottleneck(channels, mid, expansion * mid, stride, dilation, shortcut=i == 0,
                                   deformable=deformable if name in deformable_blocks else None)
                self.add_module(name, block)
                self.strides[name] = stride_so_far
                channels = expansion * mid
            self.stages.append(names)
        self.out_channels = (expansion * widths[2], expansion * widths[3])
        self.stage_channels = tuple(expansion * w for w in widths)
        self.deformable = deformable
        self.deformable_blocks = tuple(n for names in self.stages for n in names
                                       if deformable is not None and n in deformable_blocks)

    @property
    def deformable_layers(self) -> list[DeformableLayer]:
        """Geometry of each deformable conv, in forward order (res5a, res5b, res5c; FPN DCN: res3b3,
        res4b22 first)."""
        if self.deformable is None:
            return []
        od = self.deformable.offset_dilation
        return [DeformableLayer(name=n + "_branch2b", offset=n + "_branch2b_offset", kernel_size=3,
                                dilation=getattr(self, n).dilation, padding=getattr(self, n).dilation, stride=1,
                                deformable_groups=self.deformable.deformable_groups, offset_kernel_size=3,
                                offset_dilation=od, offset_padding=od, feature_stride=self.strides[n])
                for n in self.deformable_blocks]

    def stage_outputs(self, x: torch.Tensor, taps: dict | None = None) -> list[torch.Tensor]:
        """The outputs of res2, res3, res4 and res5. ``taps``, when a dict, receives the offset maps
        ``resXY_branch2b_offset`` and the official intermediate blobs ``feat_pool1`` and
        ``feat_<last block of each stage>_relu``."""
        x = conv_bn_relu(self.conv1, self.bn_conv1, x)
        x = F.max_pool2d(x, 3, 2, 0, ceil_mode=True)
        if taps is not None:
            taps["feat_pool1"] = x
        outputs = []
        for names in self.stages:
            for i, name in enumerate(names):
                block = getattr(self, name)
                # the previous block's output, seen by nothing else unless hooks see the handover
                consume = i > 0 and not (sees_calls(getattr(self, names[i - 1])) or sees_calls(block))
                x = block(x, taps, name, consume)
            if taps is not None:
                taps[f"feat_{names[-1]}_relu"] = x
            outputs.append(x)
        return outputs

    def forward(self, x: torch.Tensor, taps: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The res4 and res5 outputs (see :meth:`stage_outputs` for ``taps``)."""
        outputs = self.stage_outputs(x, taps)
        return outputs[2], outputs[3]
