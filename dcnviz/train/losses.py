"""Losses of the official end-to-end training (R-FCN: ``rfcn/symbols/resnet_v1_101_rfcn_dcn.py`` with
``box_annotator_ohem``; DeepLab: ``SoftmaxOutput`` with ignore label 255).

Normalisations as the official symbols: softmax losses average over the entries that are not ignored
(``normalization='valid'``); box losses are summed and divided by a fixed count (``grad_scale``): 256
sampled anchors for the RPN, 128 RoIs for R-FCN.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def smooth_l1(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """MXNet ``smooth_l1(x, scalar=sigma)``: 0.5 (sigma x)^2 if |x| < 1/sigma^2, else |x| - 0.5/sigma^2."""
    return F.smooth_l1_loss(x, torch.zeros_like(x), reduction="none", beta=1.0 / sigma**2)


def _softmax_valid(logits: torch.Tensor, labels: torch.Tensor, ignore: int) -> torch.Tensor:
    """Cross-entropy averaged over the labels that are not ``ignore`` (0 when every label is ignored)."""
    if not bool((labels != ignore).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=ignore)


def rpn_losses(score: torch.Tensor, deltas: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
               weights: torch.Tensor, batch_size: int = 256, sigma: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """RPN classification and box losses of one image.

    ``score`` (1, 2A, h, w) with background in channels 0..A-1 and foreground in A..2A-1 (the pairs the
    official reshape to (1, 2, A*h, w) puts under one softmax); ``deltas`` (1, 4A, h, w); ``labels``
    (A, h, w) in {1, 0, -1 ignored}; ``targets``, ``weights`` (4A, h, w). Box loss: smooth L1 with
    sigma 3, summed, divided by ``batch_size``."""
    logits = score.reshape(1, 2, -1)
    cls = _softmax_valid(logits, labels.reshape(1, -1), -1)
    box = (weights[None] * smooth_l1(deltas - targets[None], sigma)).sum() / batch_size
    return cls, box


def ohem_keep(cls_score: torch.Tensor, bbox_pred: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
              weights: torch.Tensor, count: int = 128) -> torch.Tensor:
    """Indices of the ``count`` RoIs with the largest loss (official ``box_annotator_ohem``): per RoI
    -log(softmax + 1e-14)[label] plus the weighted smooth L1 (sigma 1) box loss; ties keep RoI order."""
    with torch.no_grad():
        prob = F.softmax(cls_score.float(), dim=1) + 1e-14
        loss = -torch.log(prob.gather(1, labels[:, None])[:, 0])
        loss = loss + (weights * smooth_l1(bbox_pred.float() - targets, 1.0)).sum(dim=1)
        order = torch.sort(loss, descending=True, stable=True).indices
    return order[:count]


def rfcn_losses(cls_score: torch.Tensor, bbox_pred: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
                weights: torch.Tensor, batch_rois: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """R-FCN classification (mean cross-entropy over the RoIs) and box loss (smooth L1 with sigma 1 on
    the (R, 8) class-agnostic deltas, weighted, summed, divided by ``batch_rois``)."""
    cls = _softmax_valid(cls_score, labels, -1)
    box = (weights * smooth_l1(bbox_pred - targets, 1.0)).sum() / batch_rois
    return cls, box


def segmentation_loss(scores: torch.Tensor, labels: torch.Tensor, ignore: int = 255) -> torch.Tensor:
    """Per-pixel cross-entropy of (N, C, H, W) ``scores`` against (N, H, W) ``labels``, averaged over the
    pixels whose label is not ``ignore``."""
    return _softmax_valid(scores, labels, ignore)
