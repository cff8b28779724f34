"""A small segmentation network with torchvision's modulated deformable convolutions (DCNv2), to show
dcnviz on a model of your own: ``dcnviz effective IMAGE --model examples/tiny_dcn.py:build --weights W``.

``build()`` returns ``(module, preprocess)``: dcnviz calls it, loads ``--weights`` (.safetensors) into the
module and feeds it ``preprocess(rgb_uint8_hwc)``. The network: three stride-2 convs (stride 8), then two
3x3 ``torchvision.ops.DeformConv2d`` layers on the same 1/8 map (the second dilated by 2), each with its
own offset conv (18 channels, dy/dx per tap) and mask conv (9 channels, sigmoid), then a 1x1 classifier
upsampled to the input size.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CLASSES = 6  # dcnviz synth: background + worm, star, ring, blob, cross


class ModulatedBlock(nn.Module):
    """Offsets and mask from 3x3 convs on the block's input, then a modulated deformable 3x3 conv + ReLU."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.offset = nn.Conv2d(channels, 18, 3, 1, 1)
        self.mask = nn.Conv2d(channels, 9, 3, 1, 1)
        self.dcn = torchvision.ops.DeformConv2d(channels, channels, 3, 1, dilation, dilation)
        for conv in (self.offset, self.mask):  # start as a plain conv: zero offsets, mask 0.5
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, x):
        return F.relu(self.dcn(x, self.offset(x), torch.sigmoid(self.mask(x))))


class TinyDCN(nn.Module):
    def __init__(self, classes: int = CLASSES, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, width, 3, 2, 1), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, 2, 1), nn.ReLU())
        self.block1 = ModulatedBlock(width, 1)
        self.block2 = ModulatedBlock(width, 2)
        self.classifier = nn.Conv2d(width, classes, 1)

    def forward(self, x):
        logits = self.classifier(self.block2(self.block1(self.stem(x))))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def preprocess(rgb: np.ndarray) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> (1, 3, H, W) float32, ImageNet-normalised, at the image's own size."""
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float()[None] / 255.0
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def build():
    torch.manual_seed(0)
    return TinyDCN(), preprocess
