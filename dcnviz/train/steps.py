"""One training forward pass per task: image and targets in, named losses out.

Detection follows the official end-to-end R-FCN: RPN anchor targets on the res4 maps; proposals from the
detached RPN outputs (the official proposal op has no gradient) with the model's proposal settings
(pre/post NMS 6000/300, NMS 0.7, as the COCO TRAIN yaml); the gt boxes appended as RoIs; RoI targets;
with OHEM the head first scores every RoI without gradient and only the 128 hardest are pooled again
for the backward pass (the same gradient as the official single pass, where the other RoIs get zero
loss weight, at a fraction of the cost). Difficult objects are left out of training, as the official
VOC loader does by default.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from dcnviz.models.proposal import propose
from dcnviz.train.losses import ohem_keep, rfcn_losses, rpn_losses, segmentation_loss
from dcnviz.train.targets import AnchorTargetConfig, ProposalTargetConfig, anchor_targets, proposal_targets


@dataclass(frozen=True)
class DetectionTrainConfig:
    """``ohem``: keep the ``batch_rois`` hardest of all RoIs (official); otherwise sample ``batch_rois``
    RoIs with at most 25 % foreground."""

    ohem: bool = True
    batch_rois: int = 128
    anchors: AnchorTargetConfig = field(default_factory=AnchorTargetConfig)


def detection_losses(model, data: torch.Tensor, target: dict, rng: np.random.Generator,
                     cfg: DetectionTrainConfig = DetectionTrainConfig()) -> dict[str, torch.Tensor]:
    """Losses ``rpn_cls``, ``rpn_box``, ``rcnn_cls``, ``rcnn_box`` of one image.

    ``data`` (1, 3, H, W) network input; ``target`` as :class:`dcnviz.data.loader.VOCDetSeg` gives it:
    ``boxes`` (N, 4) input pixels, ``labels`` (N,), ``difficult`` (N,)."""
    device = data.device
    keep = ~target["difficult"].numpy().astype(bool)
    gt_boxes = target["boxes"].numpy().astype(np.float64)[keep]
    gt_labels = target["labels"].numpy()[keep]
    input_hw = tuple(data.shape[-2:])

    res4, res5 = model.backbone(data)
    score, prob, deltas = model.rpn(res4)
    labels, targets, weights = anchor_targets(model.anchors, tuple(score.shape[-2:]), gt_boxes, input_hw, rng,
                                              cfg.anchors)
    t = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    rpn_cls, rpn_box = rpn_losses(score, deltas, t(labels), t(targets), t(weights), cfg.anchors.batch_size)

    proposals, _ = propose(prob.detach().float().cpu().numpy(), deltas.detach().float().cpu().numpy(),
                           model.anchors, input_hw, 1.0, model.proposal_cfg)
    sampling = ProposalTargetConfig(batch_rois=None if cfg.ohem else cfg.batch_rois)
    rois, roi_labels, roi_targets, roi_weights = (t(a) for a in proposal_targets(proposals, gt_boxes, gt_labels,
                                                                                  rng, sampling))
    rois = rois.to(data.dtype)
    if cfg.ohem:
        with torch.no_grad():
            scored: dict = {}
            model.head(res5, rois, scored)
            hard = ohem_keep(scored["cls_score"], scored["bbox_pred"], roi_labels, roi_targets, roi_weights,
                             cfg.batch_rois)
        rois, roi_labels, roi_targets, roi_weights = rois[hard], roi_labels[hard], roi_targets[hard], roi_weights[hard]
    out: dict = {}
    model.head(res5, rois, out)
    rcnn_cls, rcnn_box = rfcn_losses(out["cls_score"], out["bbox_pred"], roi_labels, roi_targets, roi_weights,
                                     cfg.batch_rois)
    return dict(rpn_cls=rpn_cls, rpn_box=rpn_box, rcnn_cls=rcnn_cls, rcnn_box=rcnn_box)


def segmentation_losses(model, data: torch.Tensor, target: dict) -> dict[str, torch.Tensor]:
    """Loss ``seg`` of one image: cross-entropy of ``croped_score`` against ``target["segmentation"]``
    (H, W) at the input size, 255 ignored."""
    out = model.forward_official(data)
    return dict(seg=segmentation_loss(out["croped_score"], target["segmentation"][None].to(data.device)))
