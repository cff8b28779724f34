"""The RPN proposal step of the official Python ops ``rfcn/operator_py/proposal.py`` (official.md §4.3)
and, over the levels of a feature pyramid, ``fpn/operator_py/pyramid_proposal.py`` (same steps, the
candidates of every level ranked together).

Deviation from the official code: when fewer than ``post_nms_top_n`` boxes survive NMS, the official
ops pad the output to exactly that many by **random** choice among the kept boxes (``npr.choice``);
dcnviz returns only the kept boxes, so the result is deterministic and has no duplicates (R <= 300).
Padding only repeats RoIs, so the detections after per-class NMS are the same up to duplicates of
kept boxes. Ties in score are resolved by index (see :func:`dcnviz.models.boxes.nms`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dcnviz.models import boxes as B
from dcnviz.models.anchors import shifted_anchors


@dataclass(frozen=True)
class ProposalConfig:
    """Official COCO TEST settings: pre-NMS top 6000, post-NMS top 300, NMS 0.7, min size 0."""

    pre_nms_top_n: int = 6000
    post_nms_top_n: int = 300
    nms_thresh: float = 0.7
    min_size: float = 0.0
    feature_stride: int = 16


def propose(rpn_cls_prob: np.ndarray, rpn_bbox_pred: np.ndarray, anchors: np.ndarray, input_hw: tuple[int, int],
            im_scale: float = 1.0, cfg: ProposalConfig = ProposalConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Proposals of one image.

    Args:
        rpn_cls_prob: (1, 2A, h, w) probabilities; channels A..2A-1 are the foreground scores.
        rpn_bbox_pred: (1, 4A, h, w) deltas; channel 4a + k is coordinate k (dx, dy, dw, dh) of anchor a.
        anchors: (A, 4) base anchors from :func:`~dcnviz.models.anchors.generate_anchors`.
        input_hw: (H, W) of the network input in pixels.
        im_scale: resize factor of the input (only scales ``cfg.min_size``).

    Returns:
        rois (R, 5) float32 ``[0, x1, y1, x2, y2]`` in input pixels, and their scores (R,) float32,
        by decreasing score.

    As in the official op, the grid is ``int(H / stride) x int(W / stride)`` taken from the *input* size,
    so a feature map one cell larger (e.g. 38x63 for 600x1000) loses its last row and column.
    """
    boxes, scores = level_candidates(rpn_cls_prob, rpn_bbox_pred, anchors, input_hw, im_scale, cfg.min_size,
                                     cfg.feature_stride)
    return select(boxes, scores, cfg)


def level_candidates(rpn_cls_prob: np.ndarray, rpn_bbox_pred: np.ndarray, anchors: np.ndarray,
                     input_hw: tuple[int, int], im_scale: float, min_size: float,
                     stride: int) -> tuple[np.ndarray, np.ndarray]:
    """The decoded, clipped boxes (K, 4) of one feature map and their foreground scores (K,), before any
    ranking, in the official (y, x, anchor) order, without those smaller than ``min_size * im_scale``."""
    num_anchors = anchors.shape[0]
    height, width = int(input_hw[0] / stride), int(input_hw[1] / stride)
    scores = rpn_cls_prob[:, num_anchors:, :height, :width]
    deltas = rpn_bbox_pred[:, :, :height, :width]
    height, width = scores.shape[2:]  # a map smaller than the grid keeps its own size (official _clip_pad)
    scores = scores.transpose(0, 2, 3, 1).reshape(-1)
    deltas = deltas.transpose(0, 2, 3, 1).reshape(-1, 4)
    proposals = B.clip(B.decode(shifted_anchors(anchors, height, width, stride), deltas), *input_hw)
    ws = proposals[:, 2] - proposals[:, 0] + 1
    hs = proposals[:, 3] - proposals[:, 1] + 1
    keep = np.where((ws >= min_size * im_scale) & (hs >= min_size * im_scale))[0]
    return proposals[keep], scores[keep]


def select(proposals: np.ndarray, scores: np.ndarray, cfg: ProposalConfig) -> tuple[np.ndarray, np.ndarray]:
    """The official ranking of candidate boxes: the ``pre_nms_top_n`` best, NMS, the ``post_nms_top_n``
    best; returns rois (R, 5) float32 ``[0, x1, y1, x2, y2]`` and scores (R,) float32."""
    order = np.argsort(-scores, kind="stable")
    if cfg.pre_nms_top_n > 0:
        order = order[: cfg.pre_nms_top_n]
    proposals, scores = proposals[order], scores[order]
    # the official GPU NMS sees float32 boxes
    keep = B.nms(proposals.astype(np.float32), scores, cfg.nms_thresh,
                 cfg.post_nms_top_n if cfg.post_nms_top_n > 0 else None)
    rois = np.zeros((len(keep), 5), dtype=np.float32)
    rois[:, 1:] = proposals[keep]
    return rois, scores[keep].astype(np.float32)


def propose_pyramid(levels, input_hw: tuple[int, int], im_scale: float = 1.0,
                    cfg: ProposalConfig = ProposalConfig(12000, 2000, 0.7, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Proposals over the levels of a feature pyramid (``fpn/operator_py/pyramid_proposal.py``): every
    level's candidates (:func:`level_candidates` with that level's stride and anchors), pooled, then
    ranked together by :func:`select`. ``levels`` is a sequence of (rpn_cls_prob, rpn_bbox_pred, anchors,
    stride), finest first as the official op concatenates them (strides 4, 8, 16, 32, 64)."""
    found = [level_candidates(prob, deltas, anchors, input_hw, im_scale, cfg.min_size, stride)
             for prob, deltas, anchors, stride in levels]
    return select(np.concatenate([b for b, _ in found]), np.concatenate([s for _, s in found]), cfg)
