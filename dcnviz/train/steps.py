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


def detection_losses(model, data: torch.Tensor, targets: list[dict], rng: np.random.Generator,
                     cfg: DetectionTrainConfig = DetectionTrainConfig()) -> dict[str, torch.Tensor]:
    """Losses ``rpn_cls``, ``rpn_box``, ``rcnn_cls``, ``rcnn_box`` of a batch, each the mean over its images.

    ``data`` (B, 3, H, W) network inputs, zero-padded at the bottom and right
    (:func:`dcnviz.data.loader.collate`); ``targets`` as :class:`dcnviz.data.loader.VOCDetSeg` gives them:
    ``boxes`` (N, 4) input pixels, ``labels`` (N,), ``difficult`` (N,), ``prep`` (its ``input_size`` is
    the image's own size inside the padding, where anchors and proposals are clipped)."""
    device = data.device
    t = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    res4, res5 = model.backbone(data)
    score, prob, deltas = model.rpn(res4)
    prob_np, deltas_np = prob.detach().float().cpu().numpy(), deltas.detach().float().cpu().numpy()
    sampling = ProposalTargetConfig(batch_rois=None if cfg.ohem else cfg.batch_rois)
    losses: dict[str, list[torch.Tensor]] = {"rpn_cls": [], "rpn_box": []}
    per_image = []
    for b, target in enumerate(targets):
        keep = ~target["difficult"].numpy().astype(bool)
        gt_boxes = target["boxes"].numpy().astype(np.float64)[keep]
        gt_labels = target["labels"].numpy()[keep]
        input_hw = tuple(target["prep"].input_size)
        labels, box_targets, weights = anchor_targets(model.anchors, tuple(score.shape[-2:]), gt_boxes, input_hw,
                                                      rng, cfg.anchors)
        cls, box = rpn_losses(score[b:b + 1], deltas[b:b + 1], t(labels), t(box_targets), t(weights),
                              cfg.anchors.batch_size)
        losses["rpn_cls"].append(cls)
        losses["rpn_box"].append(box)
        # the official proposal op has no gradient: proposals come from the detached RPN outputs
        proposals, _ = propose(prob_np[b:b + 1], deltas_np[b:b + 1], model.anchors, input_hw, 1.0,
                               model.proposal_cfg)
        rois, *roi_targets = proposal_targets(proposals, gt_boxes, gt_labels, rng, sampling)
        rois[:, 0] = b
        per_image.append([t(rois).to(data.dtype), *(t(a) for a in roi_targets)])
    if cfg.ohem:
        # score every RoI without gradient, then pool only the batch_rois hardest of each image again
        with torch.no_grad():
            scored: dict = {}
            model.head(res5, torch.cat([p[0] for p in per_image]), scored)
        sizes = [len(p[0]) for p in per_image]
        for p, cls_score, bbox_pred in zip(per_image, scored["cls_score"].split(sizes),
                                           scored["bbox_pred"].split(sizes)):
            hard = ohem_keep(cls_score, bbox_pred, *p[1:], cfg.batch_rois)
            p[:] = [a[hard] for a in p]
    out: dict = {}
    model.head(res5, torch.cat([p[0] for p in per_image]), out)
    losses.update(rcnn_cls=[], rcnn_box=[])
    sizes = [len(p[0]) for p in per_image]
    for (_, *roi_targets), cls_score, bbox_pred in zip(per_image, out["cls_score"].split(sizes),
                                                       out["bbox_pred"].split(sizes)):
        cls, box = rfcn_losses(cls_score, bbox_pred, *roi_targets, cfg.batch_rois)
        losses["rcnn_cls"].append(cls)
        losses["rcnn_box"].append(box)
    return {k: torch.stack(v).mean() for k, v in losses.items()}


def segmentation_losses(model, data: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
    """Loss ``seg`` of a batch: cross-entropy of ``croped_score`` against the ``segmentation`` (H, W) label
    maps (padded with 255 by :func:`dcnviz.data.loader.collate`), averaged over the labelled pixels."""
    out = model.forward_official(data)
    labels = torch.stack([t["segmentation"] for t in targets]).to(data.device)
    return dict(seg=segmentation_loss(out["croped_score"], labels))
