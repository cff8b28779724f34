"""What the analysis commands read from a model: its deformable conv layers by name, their offset maps for
an image, and the ordinary convs at the same places in a plain twin.

Every R-FCN and DeepLab model has a ResNet-v1 ``backbone`` and lists its deformable convs in forward order
as ``model.deformable_layers`` (:class:`~dcnviz.models.resnet.DeformableLayer`: the layer's geometry and
the name of its offset blob). A layer is named by its block, as the paper does: ``res5c`` is the
deformable ``res5c_branch2b`` (both spellings are accepted). ``predict`` returns the offset maps with its
result (``captured``); :func:`capture_offsets` computes them alone, for statistics over many images.
"""
from __future__ import annotations

import torch
from torch import nn

from dcnviz.models.resnet import DeformableLayer
from dcnviz.structures import Prep

__all__ = ["short_name", "layer_stack", "capture_offsets", "input_offsets", "twin_convs"]

_SUFFIX = "_branch2b"


def short_name(layer: DeformableLayer) -> str:
    """``res5c`` for the layer ``res5c_branch2b``."""
    return layer.name.removesuffix(_SUFFIX)


def layer_stack(model: nn.Module, top: str | None = None, levels: int | None = None,
                default_levels: int = 3) -> list[DeformableLayer]:
    """The deformable layers from ``top`` down, ``levels`` of them, top first (``res5c, res5b, res5a``).

    ``top`` defaults to the last deformable layer, ``levels`` to ``default_levels`` or as many as there
    are below ``top``. Raises ValueError, naming the layers the model has, for a model without deformable
    layers, an unknown ``top`` or more ``levels`` than there are."""
    from dcnviz.analysis.inspection import select_layers

    layers = list(model.deformable_layers)
    top = None if top is None else top.removesuffix(_SUFFIX)
    return [layers[i] for i in select_layers([short_name(layer) for layer in layers], top, levels, default_levels,
                                             [layer.feature_stride for layer in layers])]


@torch.inference_mode()
def capture_offsets(model: nn.Module, image) -> tuple[dict[str, torch.Tensor], Prep]:
    """The offset maps of every deformable layer for one image, from the backbone alone (no RPN, head or
    post-processing): ``{layer.offset: (1, 2*G*kh*kw, Ho, Wo) float32 CPU tensor}`` and the image's
    :class:`~dcnviz.structures.Prep`. ``image`` is a path or a BGR uint8 array, preprocessed as
    ``predict`` does; the maps equal those ``predict`` captures."""
    data, prep = model.preprocess(image)
    return input_offsets(model, data), prep


@torch.inference_mode()
def input_offsets(model: nn.Module, data: torch.Tensor) -> dict[str, torch.Tensor]:
    """:func:`capture_offsets` of an input already preprocessed by ``model.preprocess`` (e.g. in DataLoader
    workers); ``data`` is moved to the model's device (non-blocking from pinned memory) and given its dtype."""
    taps: dict[str, torch.Tensor] = {}
    param = next(model.parameters())
    model.backbone(data.to(param.device, param.dtype, non_blocking=True), taps)
    return {layer.offset: taps[layer.offset].float().cpu() for layer in model.deformable_layers}


def twin_convs(plain: nn.Module, layers: list[DeformableLayer]) -> list[nn.Conv2d]:
    """The ordinary convs of ``plain`` at the places of ``layers`` (``res5c_branch2b`` -> ``backbone.res5c
    .branch2b``). Raises ValueError when ``plain`` has no such conv or has a deformable one there."""
    convs = []
    for layer in layers:
        try:
            conv = plain.backbone.get_submodule(f"{short_name(layer)}.branch2b")
        except AttributeError:
            raise ValueError(f"it has no layer {short_name(layer)}") from None
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"its {short_name(layer)} is {type(conv).__name__}, not an ordinary convolution")
        convs.append(conv)
    return convs


def probe(model: nn.Module):
    """The :class:`~dcnviz.models.hooks.Probe` of a registered R-FCN or DeepLab model: its deformable convs
    by the paper's names (``res5c``: the module ``backbone.res5c.branch2b``), the backbone as the forward
    (unit nodes need nothing above it), the R-FCN head for detection nodes, and the official mean pixel,
    which the official preprocessing maps to zero."""
    from dcnviz.models.hooks import Probe

    layers = {short_name(l): model.backbone.get_submodule(f"{short_name(l)}.branch2b")
              for l in model.deformable_layers}
    head = parts = None
    if getattr(model, "task", None) == "detection":
        head = lambda data, rois: model.forward_official(data, rois)  # noqa: E731
        parts = model.part_geometry if model.part_geometry.deformable else None
    return Probe(layers, lambda data: model.backbone(data), head, parts, (0.0, 0.0, 0.0))
