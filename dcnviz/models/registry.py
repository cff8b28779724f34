"""Model registry in the spirit of timm: each name maps to a factory and a config record."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass(frozen=True)
class ModelSpec:
    """Everything dcnviz knows about a registered model.

    ``task`` is "detection" or "segmentation"; ``classes`` includes the background class where the
    model has one (index 0 for R-FCN); ``palette`` gives an RGB colour per class; ``scales`` are the
    test-time (short side, max long side) in pixels; ``weights`` is the official MXNet file name
    (official models) or the bundled ``.safetensors`` file in ``weights/`` (dcnviz's own models); ``twin``
    names the registered model that is the same network without its deformable convs, if there is one
    (``dcnviz receptive-field`` compares the two).
    """

    name: str
    factory: Callable[[], torch.nn.Module]
    task: str
    dataset: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    scales: tuple[int, int]
    weights: str
    bundled: bool = False
    test: dict = field(default_factory=dict)
    description: str = ""
    twin: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known models: {', '.join(list_models())}"
        raise ValueError(f"unknown model {name!r}{hint}")
    return _REGISTRY[name]
