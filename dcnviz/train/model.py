"""Turning a registered model into a trainable one and back: initialisation, trainable BatchNorm,
parameter groups, and the exported state dict with the box-regression stds folded in.

The official models start from ImageNet weights and keep BatchNorm frozen. dcnviz's small models are
trained from scratch, so their BatchNorm layers become ``nn.BatchNorm2d`` and train as usual: batch
statistics in the forward pass, running averages (momentum 0.1) kept for inference, exported as the
models' frozen BatchNorm (same keys: weight, bias, running_mean, running_var). This needs several
images per step: with one image per step and fixed statistics (the official recipe's BatchNorm
without ImageNet statistics) the small models did not learn beyond the class prior in thousands of
steps (``weights/README.md``). Everything else is the model's own structure.
"""
from __future__ import annotations

import zlib

import torch
from torch import nn

from dcnviz.models.resnet import FrozenBatchNorm2d
from dcnviz.train.targets import BBOX_MEANS, BBOX_STDS

# Output layers: small normal init (std 0.01) as the official new layers; offset layers start at zero.
PREDICTORS = ("rpn_cls_score", "rpn_bbox_pred", "rfcn_cls", "rfcn_bbox", "score")


def is_offset_param(name: str) -> bool:
    """The offset-computing layers: res5 ``branch2b_offset`` convs and the R-FCN ``rfcn_*_offset_t`` convs."""
    return "_offset." in name or "_offset_t." in name


def _generator(seed: int, name: str) -> torch.Generator:
    # one stream per parameter name, so the deformable and plain twins start from the same weights
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def init_weights(model: nn.Module, seed: int) -> None:
    """Initialise every trainable parameter from (``seed``, its name): offset layers zero (official);
    weights of the output layers in :data:`PREDICTORS` normal with std 0.01 (official); other conv weights
    He-normal (fan-out, ReLU); biases zero. Fixed layers (the DeepLab bilinear ``upsampling``) keep their
    values and are frozen."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            layer = name.rsplit(".", 2)[-2]
            if layer == "upsampling":
                p.requires_grad_(False)  # official lr_mult 0: the fixed bilinear kernel
            elif is_offset_param(name) or name.endswith(".bias"):
                p.zero_()
            elif layer in PREDICTORS:
                p.copy_(torch.randn(p.shape, generator=_generator(seed, name)) * 0.01)
            elif p.dim() == 4:
                std = (2.0 / (p.shape[0] * p.shape[2] * p.shape[3])) ** 0.5
                p.copy_(torch.randn(p.shape, generator=_generator(seed, name)) * std)


def thaw_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every :class:`FrozenBatchNorm2d` by an ``nn.BatchNorm2d`` (trainable gamma and beta) holding
    the same values, in eval mode (``model.train()`` switches it to batch statistics). Returns the model,
    changed in place."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, FrozenBatchNorm2d):
                bn = nn.BatchNorm2d(child.weight.shape[0], eps=child.eps).eval()
                with torch.no_grad():
                    for key in ("weight", "bias", "running_mean", "running_var"):
                        getattr(bn, key).copy_(getattr(child, key))
                setattr(parent, child_name, bn.to(child.weight.device))
    return model


def param_groups(model: nn.Module, weight_decay: float, offset_lr_mult: float) -> list[dict]:
    """SGD parameter groups with an ``lr_mult`` each: conv weights with weight decay, biases and BatchNorm
    without, and the offset layers (:func:`is_offset_param`) at ``offset_lr_mult`` times the learning
    rate (weights with decay, biases without)."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((is_offset_param(name), p.dim() > 1), []).append(p)
    return [dict(params=ps, lr_mult=offset_lr_mult if offset else 1.0, weight_decay=weight_decay if decay else 0.0)
            for (offset, decay), ps in sorted(groups.items())]


def export_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The float32 CPU state dict of the model's inference structure (frozen BatchNorm keys), with the
    R-FCN box-target normalisation folded into ``rfcn_bbox`` as the official training callback does:
    the channel of delta k (layout (k, row, col)) is multiplied by ``BBOX_STDS[k % 4]`` and its bias
    shifted by ``BBOX_MEANS[k % 4]``, so the saved model outputs unnormalised deltas."""
    state = {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    head = getattr(model, "head", None)
    if head is not None and hasattr(head, "rfcn_bbox"):
        bins = head.geometry.pooled_size ** 2
        outputs = head.rfcn_bbox.weight.shape[0] // bins
        stds = torch.tensor(BBOX_STDS * (outputs // 4)).repeat_interleave(bins)
        means = torch.tensor(BBOX_MEANS * (outputs // 4)).repeat_interleave(bins)
        state["head.rfcn_bbox.weight"] *= stds[:, None, None, None]
        state["head.rfcn_bbox.bias"] = state["head.rfcn_bbox.bias"] * stds + means
    return state
