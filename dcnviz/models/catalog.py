"""What dcnviz knows about each registered model without loading its weights: task, dataset, classes,
size, and where its weights are expected and whether they are there (``dcnviz models``)."""
from __future__ import annotations

import dataclasses
import os

import torch

from dcnviz.models.loading import expected_weights_path
from dcnviz.models.registry import get_spec, list_models


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """One registered model.

    ``parameters`` counts every value of the model's state dict (learned weights and the frozen
    BatchNorm statistics), i.e. what its weights file holds. ``weights_kind`` is "bundled" (trained by
    dcnviz, shipped in ``weights/``) or "converted" (official MXNet weights the user converts with
    ``dcnviz convert``); ``weights_path`` is where ``load_model`` looks without an explicit file, and
    ``weights_bytes`` that file's size, None when it is missing. ``official_file`` is the MXNet file
    name of the official release (None for bundled models)."""

    name: str
    task: str
    dataset: str
    classes: tuple[str, ...]
    parameters: int
    weights_kind: str
    weights_path: str
    weights_bytes: int | None
    official_file: str | None
    description: str

    @property
    def weights_present(self) -> bool:
        return self.weights_bytes is not None


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered model (the network is built on the meta device: no memory,
    no weights read)."""
    spec = get_spec(name)
    with torch.device("meta"):
        state = spec.factory().state_dict()
    path = expected_weights_path(spec)
    return ModelInfo(
        name=spec.name, task=spec.task, dataset=spec.dataset, classes=tuple(spec.classes),
        parameters=sum(t.numel() for t in state.values()),
        weights_kind="bundled" if spec.bundled else "converted", weights_path=path,
        weights_bytes=os.path.getsize(path) if os.path.isfile(path) else None,
        official_file=None if spec.bundled else spec.weights, description=spec.description)


def all_models() -> list[ModelInfo]:
    """:func:`model_info` of every registered model, by name."""
    return [model_info(name) for name in list_models()]
