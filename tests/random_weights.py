"""Test helper: weight files with deterministic random values for any registered architecture, so the
CLI can be run end to end without trained weights: ``.safetensors`` as ``dcnviz train`` writes them and
official-format MXNet ``.params`` files as the released models are."""
from __future__ import annotations

import numpy as np
import torch

from dcnviz.convert import names
from dcnviz.convert.weights import write_safetensors
from dcnviz.models import get_spec

import params_writer


def random_model(name: str, seed: int = 0) -> torch.nn.Module:
    """Registered model ``name`` with PyTorch's default initialisation drawn from ``seed``."""
    torch.manual_seed(seed)
    return get_spec(name).factory().eval()


def official_arrays(model: torch.nn.Module, test_keys: bool = False) -> dict[str, np.ndarray]:
    """The model's state dict under the official MXNet names (``arg:``/``aux:``). ``test_keys`` adds the
    ``rfcn_bbox_*_test`` copies with the box-target stds folded in, as rfcn/core/callback.py writes them."""
    arrays = {names.torch_to_official(k): v.numpy().copy() for k, v in model.state_dict().items()}
    if test_keys:
        stds = np.repeat(np.tile([0.1, 0.1, 0.2, 0.2], 2), arrays["arg:rfcn_bbox_bias"].shape[0] // 8)
        arrays["arg:rfcn_bbox_weight_test"] = (arrays["arg:rfcn_bbox_weight"] * stds[:, None, None, None]).astype(
            np.float32)
        arrays["arg:rfcn_bbox_bias_test"] = (arrays["arg:rfcn_bbox_bias"] * stds).astype(np.float32)
    return arrays


def write_random_safetensors(name: str, path, seed: int = 0, model_name: str | None = None) -> str:
    """``random_model(name, seed)`` saved like ``dcnviz train`` saves weights; the metadata names
    ``model_name`` (default ``name``), so a test can also write a file that claims another model."""
    state = random_model(name, seed).state_dict()
    write_safetensors(state, str(path), {"format": "dcnviz", "model": model_name or name})
    return str(path)


def write_random_params(name: str, path, seed: int = 0) -> str:
    """``random_model(name, seed)`` as an official MXNet ``.params`` file (V2 arrays)."""
    params_writer.write(str(path), official_arrays(random_model(name, seed)))
    return str(path)
