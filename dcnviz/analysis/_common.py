"""Argument handling shared by the analysis modules: array conversion, int pairs, the offset layout."""
from __future__ import annotations

import numpy as np
import torch


def pair(value, name: str) -> tuple[int, int]:
    """An int or a pair of ints -> (h, w); TypeError naming ``name`` otherwise."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    if not (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return int(value[0]), int(value[1])


def as_float64(x, name: str) -> np.ndarray:
    """A torch tensor (any device; detached, copied to CPU), numpy array, or (nested) list/tuple of
    numbers -> float64 numpy array."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    if isinstance(x, (list, tuple)):
        x = np.asarray(x)
    if isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"{name} must hold numbers, got dtype {x.dtype}")
        return x.astype(np.float64, copy=False)
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def positive_number(value, name: str) -> float:
    """A positive finite real number (int, float or numpy scalar; not bool) -> float."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def split_offset(offset: np.ndarray, name: str, kh: int, kw: int, groups: int) -> np.ndarray:
    """Offset map (..., 2*G*kh*kw, H, W) -> (..., G, kh, kw, 2, H, W), last-but-two axis (dy, dx).

    The layout is the official one: group g owns channels [g*2*kh*kw, (g+1)*2*kh*kw); inside a group,
    tap k = i*kw + j (row-major) has dy at channel 2k and dx at 2k + 1.
    """
    channels = 2 * groups * kh * kw
    if offset.ndim < 3 or offset.shape[-3] != channels:
        raise ValueError(f"{name} must have shape (..., 2*deformable_groups*kh*kw = {channels}, H, W), "
                         f"got {tuple(offset.shape)}")
    if not np.isfinite(offset).all():
        raise ValueError(f"{name} contains NaN or inf")
    return offset.reshape(offset.shape[:-3] + (groups, kh, kw, 2) + offset.shape[-2:])


def tap_grid(kh: int, kw: int, dh: int, dw: int) -> np.ndarray:
    """Regular (undeformed) tap positions relative to the first tap: (kh*kw, 2) rows (i*dh, j*dw), k = i*kw + j."""
    i, j = np.meshgrid(np.arange(kh), np.arange(kw), indexing="ij")
    return np.stack([i * dh, j * dw], axis=-1).reshape(-1, 2).astype(np.float64)
