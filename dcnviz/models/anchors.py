"""RPN anchors exactly as ``lib/rpn/generate_anchor.py`` (official.md §4.2).

Boxes are ``[x1, y1, x2, y2]`` in input pixels with the "+1" convention (width = x2 - x1 + 1).
"""
from __future__ import annotations

import numpy as np


def _whctrs(anchor: np.ndarray):
    w = anchor[2] - anchor[0] + 1
    h = anchor[3] - anchor[1] + 1
    return w, h, anchor[0] + 0.5 * (w - 1), anchor[1] + 0.5 * (h - 1)


def _make(ws: np.ndarray, hs: np.ndarray, x_ctr: float, y_ctr: float) -> np.ndarray:
    ws, hs = ws[:, None], hs[:, None]
    return np.hstack((x_ctr - 0.5 * (ws - 1), y_ctr - 0.5 * (hs - 1), x_ctr + 0.5 * (ws - 1), y_ctr + 0.5 * (hs - 1)))


def generate_anchors(base_size: int = 16, ratios=(0.5, 1, 2), scales=(8, 16, 32)) -> np.ndarray:
    """(A, 4) float64 anchors centred on the base box (0, 0, base_size-1, base_size-1), ratio-major,
    scale-minor: for ratio r, ``ws = round(sqrt(base_size**2 / r))``, ``hs = round(ws * r)`` (numpy
    rounding, half to even), each scaled by every scale. COCO uses scales (4, 8, 16, 32) -> A = 12."""
    w, h, x_ctr, y_ctr = _whctrs(np.array([0, 0, base_size - 1, base_size - 1], dtype=np.float64))
    ratios = np.asarray(ratios, dtype=np.float64)
    ws = np.round(np.sqrt(w * h / ratios))
    per_ratio = _make(ws, np.round(ws * ratios), x_ctr, y_ctr)
    scales = np.asarray(scales, dtype=np.float64)
    out = []
    for anchor in per_ratio:
        w, h, x_ctr, y_ctr = _whctrs(anchor)
        out.append(_make(w * scales, h * scales, x_ctr, y_ctr))
    return np.vstack(out)


def shifted_anchors(anchors: np.ndarray, height: int, width: int, stride: int = 16) -> np.ndarray:
    """(height*width*A, 4) anchors of every feature cell, ordered (y, x, a) with a fastest; cell (y, x)
    adds ``(x*stride, y*stride, x*stride, y*stride)``."""
    sx, sy = np.meshgrid(np.arange(width) * stride, np.arange(height) * stride)
    shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], axis=1).astype(np.float64)
    return (anchors[None, :, :] + shifts[:, None, :]).reshape(-1, 4)
