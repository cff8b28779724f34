"""Argument checks shared by the op wrappers: one clear ValueError/TypeError naming the argument."""
from __future__ import annotations

import torch


def pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return int(value[0]), int(value[1])


def tensor(t, name: str, ndim: int, shape_doc: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape_doc}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have shape {shape_doc}, got {tuple(t.shape)}")


def floating(t: torch.Tensor, name: str) -> None:
    # bfloat16 and float16 compute in float32 on every device (CPU: upcast copies; CUDA: opmath).
    allowed = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{name} must be one of {names}, got {str(t.dtype).replace('torch.', '')}")


def same(ref: torch.Tensor, ref_name: str, **others: torch.Tensor | None) -> None:
    """Every tensor in ``others`` must share ``ref``'s device and dtype."""
    for name, t in others.items():
        if t is None:
            continue
        if t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")
        if t.dtype != ref.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}")


def positive(value, name: str) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def rois(r: torch.Tensor, batch: int) -> None:
    """(R, 5) [batch_index, x1, y1, x2, y2]; values checked only outside tracing (they are data)."""
    tensor(r, "rois", 2, "(R, 5) [batch_index, x1, y1, x2, y2]")
    if r.shape[1] != 5:
        raise ValueError(f"rois must have shape (R, 5) [batch_index, x1, y1, x2, y2], got {tuple(r.shape)}")
    if r.numel() == 0 or torch.compiler.is_compiling() or r.device.type == "meta":
        return
    if not bool(torch.isfinite(r).all()):
        raise ValueError("rois must be finite, got NaN or inf")
    idx = r[:, 0]
    if bool((idx < 0).any()) or bool((idx >= batch).any()) or bool((idx != idx.trunc()).any()):
        raise ValueError(f"rois[:, 0] must hold integer batch indices in [0, {batch}), got "
                         f"values in [{idx.min().item():g}, {idx.max().item():g}]")
