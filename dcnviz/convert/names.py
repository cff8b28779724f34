"""The one place that knows the official MXNet parameter names and how they map to dcnviz modules.

Official keys look like ``arg:res5a_branch2b_offset_weight`` or ``aux:bn4b22_branch2c_moving_var``
(official.md §2). dcnviz modules carry the official layer names, so the map is mechanical::

    conv1 / bn_conv1                      -> backbone.conv1 / backbone.bn_conv1
    res<S><B>_branch<X>[_offset]          -> backbone.res<S><B>.branch<X>[_offset]
    bn<S><B>_branch<X>                    -> backbone.res<S><B>.bn<X>
    rpn_conv_3x3, rpn_cls_score, rpn_bbox_pred          -> rpn.<layer>
    conv_new_1, rfcn_*, fc6, score, upsampling          -> head.<layer>
    offset, fc_new_1, fc_new_2, cls_score, bbox_pred    -> head.<layer>   (Faster R-CNN)
    offset_p<L> (FPN)                                   -> head.offset_p<L>
    rpn_conv (FPN's RPN, shared by the levels)          -> rpn.rpn_conv
    fpn_p<L>, fpn_p<L>_1x1                              -> neck.<layer>

with parameter suffixes ``_weight/_bias`` -> ``.weight/.bias`` and BatchNorm ``_gamma/_beta`` (arg),
``_moving_mean/_moving_var`` (aux) -> ``.weight/.bias/.running_mean/.running_var``.

``official_params.json`` holds every key and shape of the released networks, with the optional
``rfcn_bbox_*_test`` / ``bbox_pred_*_test`` keys (official.md §2a): the spec's list for the six R-FCN and
DeepLab networks; for ``rcnn_dcn_coco``, ``rcnn_coco``, ``fpn_dcn_coco`` and ``fpn_coco`` the names and shapes MXNet's ``infer_shape``
gives for the official test symbols as ``tools/mxnet_reference.py`` builds them.
"""
from __future__ import annotations

import functools
import json
import os
import re

_BLOCK = r"(\d)([a-z]\d*)"
_CONV_SUFFIX = {"weight": "weight", "bias": "bias"}
_BN_SUFFIX = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_var": "running_var"}
_AUX = {"moving_mean", "moving_var"}
RPN_LAYERS = ("rpn_conv_3x3", "rpn_conv", "rpn_cls_score", "rpn_bbox_pred")
HEAD_LAYERS = ("conv_new_1", "rfcn_cls", "rfcn_bbox", "rfcn_cls_offset_t", "rfcn_bbox_offset_t",
               "fc6", "score", "upsampling",
               "offset", "fc_new_1", "fc_new_2", "cls_score", "bbox_pred")  # Faster R-CNN's 2fc head


def _split_param(name: str) -> tuple[str, str]:
    for suffix in ("moving_mean", "moving_var", "gamma", "beta", "weight", "bias"):
        if name.endswith("_" + suffix):
            return name[: -len(suffix) - 1], suffix
    raise KeyError(name)


def official_to_torch(key: str) -> str:
    """``arg:res5a_branch2b_offset_weight`` -> ``backbone.res5a.branch2b_offset.weight``.

    Raises KeyError for a key that names no dcnviz parameter (wrong prefix included)."""
    prefix, sep, name = key.partition(":")
    if not sep or prefix not in ("arg", "aux"):
        raise KeyError(key)
    layer, suffix = _split_param(name)
    if (prefix == "aux") != (suffix in _AUX):
        raise KeyError(key)
    if m := re.fullmatch(r"bn" + _BLOCK + r"_branch(1|2[abc])", layer):
        if suffix not in _BN_SUFFIX:
            raise KeyError(key)
        return f"backbone.res{m[1]}{m[2]}.bn{m[3]}.{_BN_SUFFIX[suffix]}"
    if layer == "bn_conv1":
        if suffix not in _BN_SUFFIX:
            raise KeyError(key)
        return f"backbone.bn_conv1.{_BN_SUFFIX[suffix]}"
    if suffix not in _CONV_SUFFIX:
        raise KeyError(key)
    if m := re.fullmatch(r"res" + _BLOCK + r"_(branch(?:1|2[abc]|2b_offset))", layer):
        return f"backbone.res{m[1]}{m[2]}.{m[3]}.{suffix}"
    if layer == "conv1":
        return f"backbone.conv1.{suffix}"
    if layer in RPN_LAYERS:
        return f"rpn.{layer}.{suffix}"
    if layer in HEAD_LAYERS or re.fullmatch(r"offset_p[2-5]", layer):
        return f"head.{layer}.{suffix}"
    if re.fullmatch(r"fpn_p[2-6](_1x1)?", layer):
        return f"neck.{layer}.{suffix}"
    raise KeyError(key)


def torch_to_official(key: str) -> str:
    """Inverse of :func:`official_to_torch`: ``backbone.res4b22.bn2c.running_var`` ->
    ``aux:bn4b22_branch2c_moving_var``."""
    parts = key.split(".")
    param = parts[-1]
    bn = {v: k for k, v in _BN_SUFFIX.items()}
    if parts[0] == "backbone" and len(parts) == 4 and (m := re.fullmatch(r"res" + _BLOCK, parts[1])):
        module = parts[2]
        if module.startswith("bn") and param in bn:
            name = f"bn{m[1]}{m[2]}_branch{module[2:]}_{bn[param]}"
        else:
            name = f"res{m[1]}{m[2]}_{module}_{param}"
    elif parts[0] == "backbone" and len(parts) == 3 and parts[1] == "bn_conv1" and param in bn:
        name = f"bn_conv1_{bn[param]}"
    elif len(parts) == 3 and parts[0] in ("backbone", "rpn", "head", "neck"):
        name = f"{parts[1]}_{param}"
    else:
        raise KeyError(key)
    official = ("aux:" if name.endswith(("_moving_mean", "_moving_var")) else "arg:") + name
    if official_to_torch(official) != key:
        raise KeyError(key)
    return official


def base_key(key: str) -> str:
    """The key a ``*_test`` key replaces: the official ``load_param(process=True)`` drops ``_test``
    from every key containing it (rfcn/core/callback.py folds BBOX_STDS into those, §2a)."""
    return key.replace("_test", "")


@functools.lru_cache(maxsize=None)
def _packaged() -> dict:
    with open(os.path.join(os.path.dirname(__file__), "official_params.json")) as f:
        return json.load(f)


def official_specs() -> dict[str, dict[str, tuple[int, ...]]]:
    """Per official model: ``{"arg:NAME" | "aux:NAME": shape}`` of the required keys."""
    return {model: {f"{kind}:{n}": tuple(s) for kind in ("arg", "aux") for n, s in v[kind].items()}
            for model, v in _packaged().items()}


def official_optional() -> dict[str, dict[str, tuple[int, ...]]]:
    """Per official model: the optional ``_test`` keys and their shapes."""
    return {model: {f"arg:{n}": tuple(s) for n, s in v["optional_arg"].items()} for model, v in _packaged().items()}
