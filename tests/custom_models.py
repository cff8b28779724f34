"""Test helper: ``FILE.py:FUNCTION`` models for ``--model`` (tests/custom_models.py:modulated, ...)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from dcnviz.ops import DeformConv2d


class Modulated(nn.Module):
    """Stride-4 stem, then two torchvision modulated deformable 3x3 convs on the same map, random offsets of
    about a cell and a mask in (0, 1)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())
        self.offsets = nn.ModuleList(nn.Conv2d(8, 18, 3, 1, 1) for _ in range(2))
        self.masks = nn.ModuleList(nn.Conv2d(8, 9, 3, 1, 1) for _ in range(2))
        self.dcns = nn.ModuleList(torchvision.ops.DeformConv2d(8, 8, 3, 1, d, d) for d in (1, 2))

    def forward(self, x):
        x = self.stem(x)
        for offset, mask, dcn in zip(self.offsets, self.masks, self.dcns):
            x = F.relu(dcn(x, offset(x), torch.sigmoid(mask(x))))
        return x


def modulated():
    torch.manual_seed(0)
    model = Modulated()
    with torch.no_grad():
        for conv in model.offsets:
            conv.bias.normal_(0, 1.0)
    return model, lambda rgb: torch.from_numpy(rgb.transpose(2, 0, 1).copy()).float()[None] / 127.5 - 1


class DCNv1(nn.Module):
    """One dcnviz (DCNv1) deformable conv, stride 2, with 2 deformable groups, after a stride-2 conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, 2, 1)
        self.offset = nn.Conv2d(4, 36, 3, 2, 1)
        self.dcn = DeformConv2d(4, 6, 3, 2, 1, deformable_groups=2)

    def forward(self, x):
        x = F.relu(self.conv(x))
        return self.dcn(x, self.offset(x))


def dcnv1():
    torch.manual_seed(1)
    return DCNv1()


class TwoStrides(nn.Module):
    """A stride-4 stem, then two torchvision DeformConv2d on maps of different strides: ``low`` (dilation 1,
    stride 1: output stride 4) and ``high`` (dilation 2, stride 2: output stride 8). Their offsets are constant
    (zero-weight offset convs) and spread every tap from the centre by a factor: tap (i, j) moves by
    ((i - 1) * a, (j - 1) * a) cells, so every filter's effective dilation is dilation + a exactly
    (``SPREAD``: a = 0.5 and 1, effective dilations 1.5 and 3)."""

    SPREAD = {"low": 0.5, "high": 1.0}

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 4, 4)
        self.low = torchvision.ops.DeformConv2d(4, 4, 3, 1, 1, 1)
        self.high = torchvision.ops.DeformConv2d(4, 4, 3, 2, 2, 2)
        self.offsets = nn.ModuleDict({name: nn.Conv2d(4, 18, 1, stride) for name, stride in (("low", 1), ("high", 2))})
        taps = torch.arange(9)
        for name, a in self.SPREAD.items():
            spread = torch.stack([(taps // 3 - 1) * a, (taps % 3 - 1) * a], 1).reshape(-1).float()  # dy, dx per tap
            with torch.no_grad():
                self.offsets[name].weight.zero_()
                self.offsets[name].bias.copy_(spread)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.low(x, self.offsets["low"](x)))
        return self.high(x, self.offsets["high"](x))


def two_strides():
    torch.manual_seed(2)
    return TwoStrides()


def no_deformable():
    return nn.Conv2d(3, 3, 1)


def not_a_module():
    return np.zeros(3)


def raises():
    raise RuntimeError("weights server unreachable")
