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


def no_deformable():
    return nn.Conv2d(3, 3, 1)


def not_a_module():
    return np.zeros(3)


def raises():
    raise RuntimeError("weights server unreachable")
