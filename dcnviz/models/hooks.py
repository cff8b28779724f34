"""Deformable conv layers of any ``nn.Module``, found by type and watched by forward hooks.

A layer type joins with :func:`register_deformable_layer`: it says how to read the layer's input map,
offsets and (for modulated layers) mask from the arguments of a call, and which boundary rule its
sampling follows. ``dcnviz.ops.DeformConv2d`` (DCNv1, ``forward(input, offset)``) and
``torchvision.ops.DeformConv2d`` (DCNv2, ``forward(input, offset, mask=None)``) are registered here.
Any other library's layer joins the same way, as long as its offsets (and mask) are arguments of its
``forward``; the offset layout must be the official one (``(N, 2*G*kh*kw, Ho, Wo)``, (dy, dx) per tap).

Boundary rules (where a sample reads a non-zero bilinear value on an H x W input map):

- ``"dcnv1"``: 0 <= y < H and 0 <= x < W (MXNet's ``DeformableConvolution``, ``dcnviz.ops``);
- ``"dcnv2"``: -1 < y < H and -1 < x < W (torchvision, mmcv: a sample up to a pixel outside still
  weighs the border pixels).

:func:`recording` runs a forward with hooks on chosen modules and returns one :class:`LayerCall` per call,
in call order, with the tensors as they are in the autograd graph (nothing detached), so gradients with
respect to the offsets can be taken afterwards.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import torch
from torch import nn

__all__ = ["BOUNDARY_RULES", "LayerCall", "Probe", "register_deformable_layer", "deformable_modules", "recording",
           "run_until", "StopForward", "sees_calls"]

BOUNDARY_RULES = ("dcnv1", "dcnv2")

Reader = Callable[[nn.Module, tuple, dict], tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]]


@dataclass(frozen=True)
class _Kind:
    read: Reader
    boundary: str


_KINDS: dict[type, _Kind] = {}


def _read_args(module: nn.Module, args: tuple, kwargs: dict):
    """(input, offset, mask) of ``forward(input, offset, mask=None)``, positional or keyword."""
    names = ("input", "offset", "mask")
    values = dict(zip(names, args))
    values.update({k: v for k, v in kwargs.items() if k in names})
    return values.get("input"), values.get("offset"), values.get("mask")


def register_deformable_layer(cls: type, *, boundary: str = "dcnv2", read: Reader | None = None) -> None:
    """Let layers of type ``cls`` (and its subclasses) be found and watched as deformable conv layers.

    ``boundary`` is the layer's sampling rule, "dcnv1" or "dcnv2" (see the module docstring).
    ``read(module, args, kwargs) -> (input, offset, mask or None)`` takes the tensors from a call's
    arguments; the default reads ``forward(input, offset, mask=None)``. The module must have ``weight``
    (F, C/groups, kh, kw) and ``stride``, ``padding``, ``dilation`` (ints or pairs)."""
    if boundary not in BOUNDARY_RULES:
        raise ValueError(f"boundary must be one of {BOUNDARY_RULES}, got {boundary!r}")
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise TypeError(f"cls must be an nn.Module subclass, got {cls!r}")
    _KINDS[cls] = _Kind(read or _read_args, boundary)


def sees_calls(module: nn.Module) -> bool:
    """Whether forward hooks would see a call of ``module`` (its own or global ones). Shortcuts that skip
    a module's call (computing its result otherwise, or reusing its tensors in place) are taken only
    where none would."""
    from torch.nn.modules import module as m

    return bool(module._forward_hooks or module._forward_pre_hooks or m._global_forward_hooks
                or m._global_forward_pre_hooks)


def _kind(module: nn.Module) -> _Kind | None:
    for cls in type(module).__mro__:
        if cls in _KINDS:
            return _KINDS[cls]
    return None


def deformable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every registered deformable layer of ``model`` by its module path (``backbone.res5c.branch2b``), in
    module order (not necessarily the order the forward calls them)."""
    return {name: m for name, m in model.named_modules() if _kind(m) is not None}


@dataclass
class LayerCall:
    """One call of a deformable layer: its ``name`` (as given to :func:`recording`), the module, the
    tensors it was called with and returned (``input`` (N, C, H, W), ``offset`` (N, 2*G*kh*kw, Ho, Wo),
    ``mask`` (N, G*kh*kw, Ho, Wo) or None, ``output`` (N, F, Ho, Wo)) and its ``boundary`` rule."""

    name: str
    module: nn.Module
    input: torch.Tensor
    offset: torch.Tensor
    mask: torch.Tensor | None
    output: torch.Tensor | None
    boundary: str

    @property
    def kernel_size(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.module.weight.shape[-2:])

    @property
    def deformable_groups(self) -> int:
        kh, kw = self.kernel_size
        return int(self.offset.shape[1]) // (2 * kh * kw)


class StopForward(Exception):
    """Raised by :func:`recording`'s hook after the ``stop_after`` layer: nothing above it is computed."""


@contextmanager
def recording(modules: Mapping[str, nn.Module], stop_after: str | None = None) -> Iterator[list[LayerCall]]:
    """Hooks on ``modules`` ({name: deformable layer}) for the duration of the block; the yielded list
    fills with a :class:`LayerCall` per call, in call order.

    With ``stop_after`` (a name), the forward is cut short by :class:`StopForward` once that layer has
    run; the block should catch it (``run_until``). Hooks are removed on exit, also after an error."""
    calls: list[LayerCall] = []
    handles = []
    for name, module in modules.items():
        kind = _kind(module)
        if kind is None:
            raise TypeError(f"{name} ({type(module).__name__}) is not a registered deformable layer type")

        def pre(mod, args, kwargs, name=name, kind=kind):
            x, offset, mask = kind.read(mod, args, kwargs)
            calls.append(LayerCall(name, mod, x, offset, mask, None, kind.boundary))

        def post(mod, args, kwargs, output, name=name):
            next(c for c in reversed(calls) if c.module is mod and c.output is None).output = output
            if name == stop_after:
                raise StopForward(name)

        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(module.register_forward_hook(post, with_kwargs=True))
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def run_until(forward: Callable[[torch.Tensor], object], data: torch.Tensor, modules: Mapping[str, nn.Module],
              stop_after: str | None = None) -> tuple[object, list[LayerCall]]:
    """``forward(data)`` with ``modules`` recorded: (its output, or None when cut at ``stop_after``; the calls)."""
    with recording(modules, stop_after) as calls:
        try:
            out = forward(data)
        except StopForward:
            out = None
    return out, calls


@dataclass
class Probe:
    """What gradient-based analysis (:mod:`dcnviz.analysis.effective`) needs of a model.

    layers: the deformable layers by name ({"res5c": module, ...} or module paths), any order.
    forward: runs the network on a preprocessed input (N, 3, H, W); its output is not used (unit nodes
        are read from the layers' outputs).
    head: for detection nodes, ``head(data, rois)`` with ``rois`` (R, 5) ``[batch, x1, y1, x2, y2]`` in
        network-input pixels returns a dict with ``cls_score`` (R, C), the class scores before softmax,
        and, with deformable PS RoI pooling, ``rfcn_cls_offset`` (R, 2C, part, part); None: no detections.
    parts: the head's :class:`~dcnviz.models.rfcn.PartGeometry` when it pools with deformable PS RoI
        pooling, else None.
    fill: the mean pixel in network-input units, per input channel (what masked pixels are set to).
    """

    layers: dict[str, nn.Module]
    forward: Callable[[torch.Tensor], object]
    head: Callable[[torch.Tensor, torch.Tensor], dict] | None = None
    parts: object | None = None
    fill: tuple[float, ...] = (0.0, 0.0, 0.0)


def _register_builtin() -> None:
    from dcnviz.ops import DeformConv2d

    register_deformable_layer(DeformConv2d, boundary="dcnv1")
    try:
        import torchvision.ops
    except ImportError:  # torchvision is a dependency, but the DCNv1 layers work without it
        return
    register_deformable_layer(torchvision.ops.DeformConv2d, boundary="dcnv2")


_register_builtin()
