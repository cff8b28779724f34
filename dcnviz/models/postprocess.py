"""Detection post-processing of ``rfcn/core/tester.py`` (``im_detect`` + ``pred_eval``, official.md §4.4),
and the selection of detections to show (:func:`select_detections`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from dcnviz.models import boxes as B

# Detections scoring at least this much are shown (``detect --conf``) and count as objects when the
# analysis chooses units; lower than the official demo's 0.7, which hides most of a small model's boxes.
DEFAULT_CONF = 0.5


@dataclass(frozen=True)
class DetectionConfig:
    """Official COCO TEST settings: score threshold 1e-3 (evaluation; the demo shows > 0.7), per-class
    NMS 0.3, at most 100 detections per image, class-agnostic box regression. ``soft_nms`` > 0 replaces
    the per-class NMS by Gaussian soft-NMS with that sigma (FPN: ``USE_SOFTNMS``, ``SOFTNMS_THRESH`` 0.6),
    keeping at most ``max_per_image`` per class as the official ``py_softnms_wrapper(max_dets=...)``."""

    score_thresh: float = 1e-3
    nms_thresh: float = 0.3
    max_per_image: int = 100
    class_agnostic: bool = True
    soft_nms: float = 0.0


def detect(rois: np.ndarray, cls_prob: np.ndarray, bbox_pred: np.ndarray, input_hw: tuple[int, int],
           im_scale: float, cfg: DetectionConfig = DetectionConfig()):
    """Boxes, scores and labels of one image in ORIGINAL image pixels.

    Args:
        rois: (R, 5) ``[0, x1, y1, x2, y2]`` in input pixels, the RoIs the head scored.
        cls_prob: (R, C) class probabilities, class 0 is background.
        bbox_pred: (R, 4 * num_reg_classes) deltas; class-agnostic models have 8 (background, foreground)
            and every class uses the foreground set ``[4:8]``.
        input_hw: (H, W) of the network input; im_scale: its resize factor from the original image.

    Returns ``boxes`` (K, 4) float32, ``scores`` (K,) float32, ``labels`` (K,) int64 (1..C-1).

    Steps (official): decode the deltas on the RoIs, clip to the input, divide by ``im_scale``; per class
    j >= 1 keep scores > ``score_thresh`` and apply NMS (IoU with "+1" on the original-pixel boxes, keep
    IoU <= ``nms_thresh``), or soft-NMS (``cfg.soft_nms``); if more than ``max_per_image`` survive over all
    classes, keep those scoring >= the ``max_per_image``-th best (ties at that score may keep a few more,
    as in the official code). The result is ordered by decreasing score (stable; the official code
    groups by class instead).
    """
    return suppress(class_candidates(rois, cls_prob, bbox_pred, input_hw, im_scale, cfg), cfg)


def class_candidates(rois: np.ndarray, cls_prob: np.ndarray, bbox_pred: np.ndarray, input_hw: tuple[int, int],
                     im_scale: float, cfg: DetectionConfig = DetectionConfig()) -> list:
    """The first half of :func:`detect`: per class j >= 1 (list index j - 1), the boxes (K, 4) in
    original pixels and scores (K,) of the RoIs scoring > ``score_thresh``. FPN's multi-scale test
    concatenates these over scales before :func:`suppress`."""
    boxes = B.clip(B.decode(rois[:, 1:], bbox_pred), *input_hw) / im_scale
    out = []
    for j in range(1, cls_prob.shape[1]):
        idx = np.where(cls_prob[:, j] > cfg.score_thresh)[0]
        out.append((boxes[idx, 4:8] if cfg.class_agnostic else boxes[idx, 4 * j:4 * j + 4], cls_prob[idx, j]))
    return out


def suppress(candidates: list, cfg: DetectionConfig = DetectionConfig()):
    """The second half of :func:`detect`: per-class NMS (or soft-NMS), then ``max_per_image``."""
    out_boxes, out_scores, out_labels = [], [], []
    for j, (cls_boxes, cls_scores) in enumerate(candidates, start=1):
        if cfg.soft_nms > 0:
            keep, kept_scores = B.soft_nms(cls_boxes.astype(np.float64), cls_scores.astype(np.float64),
                                           cfg.soft_nms, cfg.max_per_image if cfg.max_per_image > 0 else None)
        else:
            keep = B.nms(cls_boxes, cls_scores.astype(np.float64), cfg.nms_thresh)
            kept_scores = cls_scores[keep]
        out_boxes.append(cls_boxes[keep])
        out_scores.append(kept_scores)
        out_labels.append(np.full(len(keep), j, dtype=np.int64))
    boxes = np.concatenate(out_boxes).reshape(-1, 4)
    scores = np.concatenate(out_scores).astype(np.float32)
    labels = np.concatenate(out_labels)
    if cfg.max_per_image > 0 and len(scores) > cfg.max_per_image:
        keep = scores >= np.sort(scores)[-cfg.max_per_image]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    order = np.argsort(-scores, kind="stable")
    return boxes[order].astype(np.float32), scores[order], labels[order]


def select_detections(dets, conf: float = 0.0, classes=None, max_det: int | None = None) -> np.ndarray:
    """Indices of the detections with ``score >= conf`` and (if given) a label in ``classes`` (a set of
    class ids), the ``max_det`` highest-scoring of them, by decreasing score (stable)."""
    scores = np.asarray(dets.scores)
    keep = scores >= conf
    if classes is not None:
        keep &= np.isin(np.asarray(dets.labels), sorted(classes))
    order = np.flatnonzero(keep)
    return order[np.argsort(-scores[order], kind="stable")][:max_det]


def filter_detections(dets, conf: float = 0.0, classes=None, max_det: int | None = None):
    """The :class:`~dcnviz.structures.Detections` that :func:`select_detections` picks, sorted by
    decreasing score."""
    order = select_detections(dets, conf, classes, max_det)
    return dataclasses.replace(dets, boxes=np.asarray(dets.boxes)[order].reshape(-1, 4),
                               scores=np.asarray(dets.scores)[order], labels=np.asarray(dets.labels)[order])
