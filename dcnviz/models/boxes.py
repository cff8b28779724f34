"""Box arithmetic of the official code (``lib/bbox/bbox_transform.py``, ``lib/nms/nms.py``), in numpy.

Boxes are ``[x1, y1, x2, y2]`` pixels with the "+1" convention: width = x2 - x1 + 1, and a box's
centre is x1 + 0.5 * (width - 1).
"""
from __future__ import annotations

import numpy as np
import torch

import dcnviz.ops._ext  # noqa: F401  (registers torch.ops.dcnviz._nms)


def decode(boxes: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """Apply (dx, dy, dw, dh) deltas: ``ctr' = d * size + ctr``, ``size' = exp(d) * size``; ``deltas`` is
    (N, 4k) for k box sets, the result (N, 4k) float64 (official ``nonlinear_pred``; no std scaling)."""
    boxes = boxes.astype(np.float64, copy=False)
    if len(boxes) == 0:
        return np.zeros((0, deltas.shape[1]), np.float64)
    widths = boxes[:, 2] - boxes[:, 0] + 1.0
    heights = boxes[:, 3] - boxes[:, 1] + 1.0
    ctr_x = boxes[:, 0] + 0.5 * (widths - 1.0)
    ctr_y = boxes[:, 1] + 0.5 * (heights - 1.0)
    dx, dy, dw, dh = (deltas[:, i::4] for i in range(4))
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = np.exp(dw) * widths[:, None]
    pred_h = np.exp(dh) * heights[:, None]
    out = np.zeros(deltas.shape, dtype=np.float64)
    out[:, 0::4] = pred_ctr_x - 0.5 * (pred_w - 1.0)
    out[:, 1::4] = pred_ctr_y - 0.5 * (pred_h - 1.0)
    out[:, 2::4] = pred_ctr_x + 0.5 * (pred_w - 1.0)
    out[:, 3::4] = pred_ctr_y + 0.5 * (pred_h - 1.0)
    return out


def clip(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Clip (N, 4k) boxes to [0, width-1] x [0, height-1] (in place and returned)."""
    boxes[:, 0::4] = np.maximum(np.minimum(boxes[:, 0::4], width - 1), 0)
    boxes[:, 1::4] = np.maximum(np.minimum(boxes[:, 1::4], height - 1), 0)
    boxes[:, 2::4] = np.maximum(np.minimum(boxes[:, 2::4], width - 1), 0)
    boxes[:, 3::4] = np.maximum(np.minimum(boxes[:, 3::4], height - 1), 0)
    return boxes


def nms(boxes: np.ndarray, scores: np.ndarray, thresh: float, max_keep: int | None = None) -> np.ndarray:
    """Greedy NMS of the official ``py_nms``: visit boxes by decreasing score, keep one, drop every
    remaining box whose IoU with it is > ``thresh`` (areas and intersections with "+1").

    Returns the kept indices in visiting order, at most ``max_keep`` (stopping early gives the same
    prefix). The loop is the compiled ``torch.ops.dcnviz._nms`` (``csrc/cpu/nms_cpu.cpp``), which computes
    in the boxes' dtype (float32 or float64; others as float64) exactly as numpy would, so it keeps what
    ``py_nms`` keeps. Deviation: ties in score are visited in index order (stable sort); numpy's unstable
    ``argsort()[::-1]`` in the official code leaves their order unspecified.
    """
    order = np.argsort(-scores, kind="stable")
    if boxes.dtype not in (np.float32, np.float64):
        boxes = boxes.astype(np.float64)
    keep = torch.ops.dcnviz._nms(torch.from_numpy(np.ascontiguousarray(boxes[:, :4])), torch.from_numpy(order),
                                 float(thresh), -1 if max_keep is None else int(max_keep))
    return keep.numpy()


def soft_nms(boxes: np.ndarray, scores: np.ndarray, sigma: float, max_keep: int | None = None):
    """Gaussian soft-NMS of the official ``soft_nms`` (``lib/nms/nms.py``, FPN's test setting): visit
    boxes by decreasing (current) score, keep one, multiply every remaining score by
    ``exp(-IoU**2 / sigma)`` (IoU with "+1" against the kept box), re-rank; nothing is dropped, at most
    ``max_keep`` are kept.

    Returns the kept indices in visiting order and their rescored scores (float64). Deviation: ties are
    visited in index order (stable sort), as in :func:`nms`."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    current = scores[order].astype(np.float64)
    keep, kept_scores = [], []
    while order.size > 0 and (max_keep is None or len(keep) < max_keep):
        i = order[0]
        keep.append(i)
        kept_scores.append(current[0])
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        overlap = inter / (areas[i] + areas[rest] - inter)
        current = current[1:] * np.exp(-overlap ** 2 / sigma)
        rank = np.argsort(-current, kind="stable")
        order, current = rest[rank], current[rank]
    return np.asarray(keep, dtype=np.int64), np.asarray(kept_scores, dtype=np.float64)
