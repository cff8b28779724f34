"""Test helper: the official architectures at tiny widths (same blocks, names and heads), fast on a CPU."""
from __future__ import annotations

import torch

from dcnviz.data.classes import voc_palette
from dcnviz.models.deeplab import DeepLab
from dcnviz.models.fpn import FPN
from dcnviz.models.registry import ModelSpec
from dcnviz.models.resnet import DeformableSpec, ResNetV1
from dcnviz.models.rcnn import FasterRCNN
from dcnviz.models.rfcn import RFCN

DET_CLASSES = ("__background__", "cat", "dog", "bird")
SEG_CLASSES = ("road", "sky", "car")
SCALES = (64, 96)

# name -> (deformable conv spec or None, PS RoI pooling parts, deformable PS RoI pooling)
RFCN_VARIANTS = {
    "rfcn_dcn": (DeformableSpec(4, 2), 7, True),
    "rfcn": (None, 7, False),
    "deform_conv": (DeformableSpec(1, 1), 7, False),
    "deform_psroi": (None, 3, True),
}


def backbone(deformable=None) -> ResNetV1:
    return ResNetV1(units=(1, 2, 1, 2), widths=(4, 4, 8, 8), stem=8, deformable=deformable)


def rfcn(variant: str, seed: int = 0) -> RFCN:
    dcn, parts, dpsroi = RFCN_VARIANTS[variant]
    torch.manual_seed(seed)
    model = RFCN(backbone(dcn), DET_CLASSES, SCALES, anchor_scales=(2, 4), parts=parts, deformable_psroi=dpsroi,
                 head_mid=16, rpn_mid=8)
    return randomize(model, seed).eval()


def rcnn(deformable: bool, seed: int = 0) -> FasterRCNN:
    """Faster R-CNN at tiny width; with ``deformable`` both the res5 convs and the RoI pooling."""
    torch.manual_seed(seed)
    model = FasterRCNN(backbone(DeformableSpec(4, 2) if deformable else None), DET_CLASSES, SCALES,
                       anchor_scales=(2, 4), deformable_roi_pool=deformable, head_mid=8, head_fc=16, rpn_mid=8)
    return randomize(model, seed).eval()


def fpn(deformable: bool, seed: int = 0) -> FPN:
    """FPN at tiny width: undilated stride-32 res5; with ``deformable`` the official deformable blocks
    (res3b, res4b, res5a, res5b at this depth) and deformable RoI pooling."""
    torch.manual_seed(seed)
    trunk = ResNetV1(units=(1, 2, 1, 2), widths=(4, 4, 8, 8), stem=8, res5_dilation=1,
                     deformable=DeformableSpec(4, 1) if deformable else None,
                     deformable_blocks=("res3b", "res4a", "res5a", "res5b"))
    model = FPN(trunk, DET_CLASSES, SCALES, deformable_roi_pool=deformable, dim=8, rpn_mid=8, head_fc=16)
    return randomize(model, seed).eval()


def deeplab(deformable: bool, seed: int = 0) -> DeepLab:
    torch.manual_seed(seed)
    model = DeepLab(backbone(DeformableSpec(1, 1) if deformable else None), SEG_CLASSES, voc_palette(3), SCALES,
                    head_mid=16)
    return randomize(model, seed).eval()


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random BN statistics and offset convs large enough to move samples by a few cells."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith(("running_mean", "bn1.bias", "bn2a.bias", "bn2b.bias", "bn2c.bias")):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif "offset" in name:
                t.copy_(torch.randn(t.shape, generator=g))
    return model


def spec(name: str, factory, task: str = "detection") -> ModelSpec:
    classes = DET_CLASSES if task == "detection" else SEG_CLASSES
    return ModelSpec(name=name, factory=factory, task=task, dataset="test", classes=classes,
                     palette=voc_palette(len(classes)), scales=SCALES, weights=f"{name}.safetensors")


def register(monkeypatch) -> None:
    """Registers ``tiny_rfcn_dcn`` and ``tiny_deeplab`` for one test (pytest's monkeypatch undoes it)."""
    from dcnviz.models import registry

    monkeypatch.setitem(registry._REGISTRY, "tiny_rfcn_dcn", spec("tiny_rfcn_dcn", lambda: rfcn("rfcn_dcn")))
    monkeypatch.setitem(registry._REGISTRY, "tiny_deeplab",
                        spec("tiny_deeplab", lambda: deeplab(True), "segmentation"))
