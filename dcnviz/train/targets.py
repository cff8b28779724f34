"""Training targets of the official end-to-end R-FCN (``lib/rpn/rpn.py:assign_anchor``,
``rfcn/operator_py/proposal_target.py`` + ``lib/rcnn/rcnn.py:sample_rois``), in numpy.

Boxes are ``[x1, y1, x2, y2]`` in network-input pixels with the "+1" convention (width = x2 - x1 + 1,
centre = x1 + 0.5 (width - 1)), as in :mod:`dcnviz.models.boxes`. Random subsampling draws from the
``numpy.random.Generator`` passed in, so a training step is a function of its seed.

Deviations from the official code:

- a ground-truth box that overlaps no anchor inside the image does not make every anchor positive (the
  official ``overlaps == gt_max_overlaps`` test marks all anchors whose overlap equals that max of 0);
- ``proposal_targets`` returns fewer RoIs rather than padding to a fixed count: the official op (built
  for fixed-shape MXNet executors) pads with random RoIs that it labels background even when they are
  foreground, which with OHEM (capped at 25 % foreground) happens whenever a scene has many objects.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dcnviz.models.anchors import shifted_anchors

BBOX_MEANS = (0.0, 0.0, 0.0, 0.0)
BBOX_STDS = (0.1, 0.1, 0.2, 0.2)


def overlaps(boxes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """(N, K) IoU of (N, 4) ``boxes`` with (K, 4) ``query`` boxes, areas with "+1" (``bbox_overlaps``)."""
    boxes, query = boxes.astype(np.float64), query.astype(np.float64)
    area_q = (query[:, 2] - query[:, 0] + 1) * (query[:, 3] - query[:, 1] + 1)
    area_b = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    iw = np.minimum(boxes[:, None, 2], query[None, :, 2]) - np.maximum(boxes[:, None, 0], query[None, :, 0]) + 1
    ih = np.minimum(boxes[:, None, 3], query[None, :, 3]) - np.maximum(boxes[:, None, 1], query[None, :, 1]) + 1
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
    return np.where(inter > 0, inter / np.maximum(area_b[:, None] + area_q[None, :] - inter, 1e-12), 0.0)


def encode(boxes: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(N, 4) deltas (dx, dy, dw, dh) that turn ``boxes`` into ``gt`` (official ``nonlinear_transform``,
    the inverse of :func:`dcnviz.models.boxes.decode`): dx = (gx - x) / w, dw = log(gw / w)."""
    boxes, gt = boxes.astype(np.float64), gt.astype(np.float64)
    w, h = boxes[:, 2] - boxes[:, 0] + 1.0, boxes[:, 3] - boxes[:, 1] + 1.0
    gw, gh = gt[:, 2] - gt[:, 0] + 1.0, gt[:, 3] - gt[:, 1] + 1.0
    dx = (gt[:, 0] + 0.5 * (gw - 1) - boxes[:, 0] - 0.5 * (w - 1)) / (w + 1e-14)
    dy = (gt[:, 1] + 0.5 * (gh - 1) - boxes[:, 1] - 0.5 * (h - 1)) / (h + 1e-14)
    return np.stack([dx, dy, np.log(gw / w), np.log(gh / h)], axis=1)


@dataclass(frozen=True)
class AnchorTargetConfig:
    """Official TRAIN settings: 256 anchors per image, at most half foreground; fg IoU >= 0.7, bg < 0.3;
    anchors crossing the image border by more than ``allowed_border`` pixels are ignored."""

    batch_size: int = 256
    fg_fraction: float = 0.5
    positive_overlap: float = 0.7
    negative_overlap: float = 0.3
    allowed_border: float = 0.0


def anchor_targets(anchors: np.ndarray, feat_hw: tuple[int, int], gt_boxes: np.ndarray, input_hw: tuple[int, int],
                   rng: np.random.Generator, cfg: AnchorTargetConfig = AnchorTargetConfig(), stride: int = 16):
    """RPN targets of one image (``assign_anchor``).

    Args:
        anchors: (A, 4) base anchors; feat_hw: (h, w) of the RPN maps; gt_boxes: (G, 4) input pixels
        (difficult boxes already removed, as the official loader does); input_hw: (H, W) of the input.

    Returns ``labels`` (A, h, w) int64 in {1 fg, 0 bg, -1 ignored}, ``targets`` (4A, h, w) float32 and
    ``weights`` (4A, h, w) float32 (1 for the four deltas of every fg anchor), laid out like
    ``rpn_cls_score`` / ``rpn_bbox_pred`` (anchor a at channel a, delta k of anchor a at 4a + k).

    Rules: for anchors inside the image, bg when the best IoU < 0.3; fg when >= 0.7, and for every gt the
    anchors reaching its best IoU (ties included); then at most 128 fg and 256 - #fg bg are kept at random.
    """
    h, w = feat_hw
    num = len(anchors)
    all_anchors = shifted_anchors(anchors, h, w, stride)
    b = cfg.allowed_border
    inside = np.where((all_anchors[:, 0] >= -b) & (all_anchors[:, 1] >= -b) & (all_anchors[:, 2] < input_hw[1] + b)
                      & (all_anchors[:, 3] < input_hw[0] + b))[0]
    labels = np.full(len(inside), -1, np.int64)
    targets = np.zeros((len(inside), 4), np.float64)
    if len(gt_boxes):
        iou = overlaps(all_anchors[inside], gt_boxes)
        argmax = iou.argmax(axis=1)
        best = iou[np.arange(len(inside)), argmax]
        gt_best = iou.max(axis=0)
        labels[best < cfg.negative_overlap] = 0
        # deviation: skip gts that touch no anchor (see the module docstring)
        labels[np.where((iou == gt_best[None, :]) & (gt_best[None, :] > 0))[0]] = 1
        labels[best >= cfg.positive_overlap] = 1
        targets = encode(all_anchors[inside], gt_boxes[argmax])
    else:
        labels[:] = 0
    fg = np.where(labels == 1)[0]
    max_fg = int(cfg.fg_fraction * cfg.batch_size)
    if len(fg) > max_fg:
        labels[rng.choice(fg, len(fg) - max_fg, replace=False)] = -1
    bg = np.where(labels == 0)[0]
    max_bg = cfg.batch_size - int(np.sum(labels == 1))
    if len(bg) > max_bg:
        labels[rng.choice(bg, len(bg) - max_bg, replace=False)] = -1
    full_labels = np.full(len(all_anchors), -1, np.int64)
    full_labels[inside] = labels
    full_targets = np.zeros((len(all_anchors), 4), np.float32)
    full_targets[inside] = targets
    full_weights = np.zeros((len(all_anchors), 4), np.float32)
    full_weights[inside[labels == 1]] = 1.0
    # (h*w*A) ordered (y, x, a) -> channel-first maps
    return (full_labels.reshape(h, w, num).transpose(2, 0, 1),
            full_targets.reshape(h, w, 4 * num).transpose(2, 0, 1),
            full_weights.reshape(h, w, 4 * num).transpose(2, 0, 1))


@dataclass(frozen=True)
class ProposalTargetConfig:
    """Official TRAIN settings: fg when IoU >= 0.5 with a gt, bg when in [bg_lo, 0.5). ``batch_rois`` None
    keeps every RoI (the OHEM configuration, BATCH_ROIS -1; OHEM then picks the 128 hardest), else the
    RoIs are sampled to ``batch_rois`` with at most ``fg_fraction`` foreground."""

    batch_rois: int | None = None
    fg_fraction: float = 0.25
    fg_thresh: float = 0.5
    bg_thresh_hi: float = 0.5
    bg_thresh_lo: float = 0.0


def proposal_targets(rois: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray, rng: np.random.Generator,
                     cfg: ProposalTargetConfig = ProposalTargetConfig()):
    """Sampled RoIs and their R-FCN targets (``proposal_target`` + ``sample_rois``, class-agnostic boxes).

    Args:
        rois: (R, 5) ``[0, x1, y1, x2, y2]`` proposals; the gt boxes are appended to them as RoIs first.
        gt_boxes: (G, 4) input pixels; gt_labels: (G,) classes 1..C-1.

    Returns ``rois`` (S, 5) float32, ``labels`` (S,) int64 (0 = background), ``targets`` (S, 8) float32 and
    ``weights`` (S, 8) float32: the deltas of fg RoIs normalised by means 0 and stds (0.1, 0.1, 0.2, 0.2)
    sit in the foreground slots 4..7 with weight 1; background slots 0..3 stay zero.
    Foreground RoIs come first (at most ``fg_fraction`` of the count), then background RoIs; RoIs that
    are neither are dropped (see the module docstring). Without any gt every RoI is background.
    """
    if len(gt_boxes):
        gt_rois = np.hstack([np.zeros((len(gt_boxes), 1)), gt_boxes]).astype(np.float32)
        rois = np.vstack([rois.astype(np.float32), gt_rois])
        iou = overlaps(rois[:, 1:], gt_boxes)
        assign = iou.argmax(axis=1)
        best = iou.max(axis=1)
        labels = gt_labels[assign].astype(np.int64)
    else:
        assign, best = np.zeros(len(rois), np.int64), np.zeros(len(rois))
        labels = np.zeros(len(rois), np.int64)
    per_image = len(rois) if cfg.batch_rois is None else cfg.batch_rois
    fg_per_image = int(np.round(cfg.fg_fraction * per_image))
    fg = np.where(best >= cfg.fg_thresh)[0]
    n_fg = min(fg_per_image, len(fg))
    if len(fg) > n_fg:
        fg = rng.choice(fg, n_fg, replace=False)
    bg = np.where((best < cfg.bg_thresh_hi) & (best >= cfg.bg_thresh_lo))[0]
    n_bg = min(per_image - n_fg, len(bg))
    if len(bg) > n_bg:
        bg = rng.choice(bg, n_bg, replace=False)
    keep = np.append(fg, bg).astype(np.int64)
    labels = labels[keep]
    labels[n_fg:] = 0
    rois = rois[keep]
    targets = np.zeros((len(keep), 8), np.float32)
    weights = np.zeros((len(keep), 8), np.float32)
    if len(gt_boxes) and n_fg:
        deltas = encode(rois[:n_fg, 1:], gt_boxes[assign[keep[:n_fg]]])
        targets[:n_fg, 4:] = (deltas - np.array(BBOX_MEANS)) / np.array(BBOX_STDS)
        weights[:n_fg, 4:] = 1.0
    return rois.astype(np.float32), labels, targets, weights
