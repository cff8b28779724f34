"""Your own model: any ``torch.nn.Module`` with deformable conv layers, named ``FILE.py:FUNCTION``.

``FUNCTION()`` (no arguments) returns the module, or a pair ``(module, preprocess)`` where
``preprocess(rgb_uint8_hwc_numpy) -> (1, 3, H, W) float tensor``; without one, dcnviz feeds RGB in [0, 1]
at the image's own size (:func:`default_preprocess`). Weights come from the function itself or from a
``.safetensors`` state dict (never a pickle). The deformable layers are found by type
(:func:`dcnviz.models.hooks.deformable_modules`: ``torchvision.ops.DeformConv2d``,
``dcnviz.ops.DeformConv2d`` and whatever :func:`dcnviz.models.hooks.register_deformable_layer` added)
and watched by forward hooks, which read each call's offsets and (modulated layers) mask; a layer is
named by its module path (``features.3.dcn``).

What dcnviz derives from one forward (:meth:`CustomModel.capture`): each layer's geometry (kernel from
the weight, stride/padding/dilation from the module, deformable groups from the offset channels), its
input and output map sizes, and its feature stride, ``round(network input size / map size)``. The image's
resize factor is ``network input width / image width``. A model has no detections or segmentation, so
units are given by position (or the automatic background unit).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from dcnviz.errors import UserError, WeightsError
from dcnviz.models.hooks import LayerCall, Probe, deformable_modules, run_until
from dcnviz.structures import Prep

__all__ = ["CustomModelError", "CustomModel", "is_custom_spec", "load_custom", "default_preprocess"]


class CustomModelError(UserError):
    """A ``FILE.py:FUNCTION`` that does not give a usable model (the CLI reports it as a usage error)."""


def is_custom_spec(spec: str | None) -> bool:
    """Whether a ``--model`` value names a Python file and function rather than a registered model."""
    return bool(spec) and ":" in spec and spec.rsplit(":", 1)[0].endswith(".py")


def default_preprocess(rgb: np.ndarray) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> (1, 3, H, W) float32 in [0, 1], at the image's own size."""
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0)


def _import(path: Path, spec: str):
    name = f"dcnviz_user_model_{abs(hash(os.fspath(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickling-free helpers in the file may look themselves up
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # the user's file: any error is theirs, reported in one line
        del sys.modules[name]
        raise CustomModelError(f"{spec}: importing {path} failed: {type(e).__name__}: {e}") from None
    return module


@dataclass
class CustomModel:
    """A loaded ``FILE.py:FUNCTION`` model: the module (eval mode), its preprocessing and deformable layers
    ({module path: layer}, in module order)."""

    name: str
    module: nn.Module
    preprocess_fn: Callable[[np.ndarray], torch.Tensor]
    layers: dict[str, nn.Module]

    @property
    def device(self) -> torch.device:
        return next(iter(self.layers.values())).weight.device

    def preprocess(self, image_bgr: np.ndarray) -> tuple[torch.Tensor, Prep]:
        """The network input of a BGR uint8 image and its :class:`~dcnviz.structures.Prep` (scale = input
        width / image width)."""
        data = self.preprocess_fn(np.ascontiguousarray(image_bgr[:, :, ::-1]))
        if not isinstance(data, torch.Tensor) or data.ndim != 4 or data.shape[:2] != (1, 3) \
                or not data.is_floating_point():
            shape = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
            raise CustomModelError(f"{self.name}: preprocess must return a (1, 3, H, W) float tensor, got {shape}")
        h, w = image_bgr.shape[:2]
        return data, Prep((h, w), data.shape[-1] / w, tuple(int(s) for s in data.shape[-2:]))

    def fill(self, data: torch.Tensor) -> tuple[float, ...]:
        """The mean pixel in network-input units: this input's mean per channel (a custom model has no
        dataset mean to refer to)."""
        return tuple(float(v) for v in data.detach().double().mean(dim=(0, 2, 3)))

    def probe(self, data: torch.Tensor) -> Probe:
        """The :class:`~dcnviz.models.hooks.Probe` for :mod:`dcnviz.analysis.effective` (no detection head;
        the mean pixel of ``data``)."""
        return Probe(self.layers, self.module, fill=self.fill(data))

    @torch.no_grad()
    def run(self, data: torch.Tensor) -> list[LayerCall]:
        """One forward of the network input ``data`` (1, 3, H, W): every deformable layer call (in call order;
        tensors detached on the CPU)."""
        try:
            _, calls = run_until(self.module, data.to(self.device), self.layers)
        except Exception as e:  # the user's forward
            raise UserError(f"{self.name}: the forward failed: {type(e).__name__}: {e}") from None
        for c in calls:
            c.input, c.offset, c.output = (t.detach().float().cpu() for t in (c.input, c.offset, c.output))
            c.mask = None if c.mask is None else c.mask.detach().float().cpu()
        if not calls:
            raise UserError(f"{self.name}: the forward called none of its deformable layers "
                            f"({', '.join(self.layers)})")
        return calls

    def capture(self, image_bgr: np.ndarray) -> tuple[list[LayerCall], Prep, torch.Tensor]:
        """:meth:`run` on the image's network input: (the calls, the :class:`Prep`, the network input)."""
        data, prep = self.preprocess(image_bgr)
        return self.run(data), prep, data


def load_custom(spec: str, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"
                ) -> CustomModel:
    """Import ``FILE.py``, call ``FUNCTION()``, load ``weights`` (a ``.safetensors`` state dict, strict) and
    move the module to ``device`` in eval mode.

    Raises :class:`CustomModelError` for a bad spec, file, function or return value, or a model without
    registered deformable layers; :class:`~dcnviz.errors.WeightsError` for weights that are not a
    ``.safetensors`` file or do not fit the module."""
    if not is_custom_spec(spec):
        raise CustomModelError(f"{spec!r}: expected FILE.py:FUNCTION")
    file, function = spec.rsplit(":", 1)
    path = Path(file)
    if not path.is_file():
        raise CustomModelError(f"{spec}: no such file {file}")
    if not function.isidentifier():
        raise CustomModelError(f"{spec}: {function!r} is not a function name")
    factory = getattr(_import(path, spec), function, None)
    if not callable(factory):
        raise CustomModelError(f"{spec}: {file} has no function {function}")
    try:
        made = factory()
    except Exception as e:
        raise CustomModelError(f"{spec}: {function}() raised {type(e).__name__}: {e}") from None
    module, preprocess = made if isinstance(made, tuple) and len(made) == 2 else (made, default_preprocess)
    if not isinstance(module, nn.Module) or not callable(preprocess):
        raise CustomModelError(f"{spec}: {function}() must return an nn.Module or (module, preprocess), "
                               f"got {type(made).__name__}")
    layers = deformable_modules(module)
    if not layers:
        raise CustomModelError(f"{spec}: the module has no deformable conv layers (torchvision.ops.DeformConv2d, "
                               "dcnviz.ops.DeformConv2d or a registered type)")
    if weights is not None:
        load_safetensors(module, weights)
    return CustomModel(spec, module.to(device).eval(), preprocess, layers)


def load_safetensors(module: nn.Module, weights: str | os.PathLike) -> None:
    """Load a ``.safetensors`` state dict into ``module`` (strict: every key, every shape)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if Path(weights).suffix.lower() != ".safetensors":
        raise WeightsError(f"{weights}: weights of a FILE.py:FUNCTION model must be a .safetensors file")
    try:
        state = load_file(os.fspath(weights))
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"cannot read {weights} as .safetensors: {e}") from None
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise WeightsError(f"{weights} does not fit the model: {' '.join(lines[1:])[:500]}") from None
