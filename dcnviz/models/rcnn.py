"""Faster R-CNN of the official release (``faster_rcnn/symbols/resnet_v1_101_rcnn{,_dcn}.py``): the R-FCN
trunk and RPN, and a 2fc head on a 256-channel ``conv_new_1`` over res5, pooled per RoI either by RoI max
pooling or by deformable RoI pooling (paper Sec. 2.2: one (dx, dy) per bin from an fc layer).

Blob names follow the official symbols, so ``forward_official`` can be compared with MXNet directly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_pool

from dcnviz.models.postprocess import DetectionConfig
from dcnviz.models.proposal import ProposalConfig
from dcnviz.models.resnet import FEATURE_STRIDE, ResNetV1, conv_bn_relu
from dcnviz.models.rfcn import RFCN, PartGeometry
from dcnviz.ops import deform_roi_pool


class RCNNHead(nn.Module):
    """``conv_new_1`` (1x1 -> 256, ReLU) -> 7x7 RoI features -> ``fc_new_1`` -> ``fc_new_2`` (1024, ReLU)
    -> ``cls_score`` (C) and ``bbox_pred`` (4C, class-specific deltas with BBOX_STDS folded in, §2a).

    Plain: ``roi_pool``, MXNet's ``ROIPooling`` (max over the integer cells of each bin; RoI corners
    ``round(x * 1/16)``), which ``torchvision.ops.roi_pool`` computes the same way.
    Deformable: ``offset_t``, deformable RoI pooling without offsets (R, 256, 7, 7) -> fc ``offset``
    (98) -> ``offset_reshape`` (R, 2, 7, 7: dx, dy per bin, normalised by the RoI size) ->
    ``deformable_roi_pool`` (trans_std 0.1, 4x4 samples per bin)."""

    def __init__(self, in_channels: int, num_classes: int, deformable: bool, mid: int = 256, fc: int = 1024,
                 pooled: int = 7):
        super().__init__()
        self.conv_new_1 = nn.Conv2d(in_channels, mid, 1)
        if deformable:
            self.offset = nn.Linear(mid * pooled * pooled, 2 * pooled * pooled)
        self.fc_new_1 = nn.Linear(mid * pooled * pooled, fc)
        self.fc_new_2 = nn.Linear(fc, fc)
        self.cls_score = nn.Linear(fc, num_classes)
        self.bbox_pred = nn.Linear(fc, 4 * num_classes)
        # group_size 1: every channel pooled over the same (moved) bins
        self.geometry = PartGeometry(deformable, pooled, pooled, 1, 4, 0.1 if deformable else 0.0,
                                     1.0 / FEATURE_STRIDE)

    def forward(self, feat: torch.Tensor, rois: torch.Tensor, out: dict) -> None:
        """Writes the official blobs into ``out``: ``offset_t``, ``offset_reshape`` and
        ``deformable_roi_pool`` (deformable) or ``roi_pool``, then ``cls_score`` (R, C), ``cls_prob``
        (R, C), ``bbox_pred`` (R, 4C)."""
        g = self.geometry
        h = conv_bn_relu(self.conv_new_1, None, feat)
        if g.deformable:
            common = dict(spatial_scale=g.spatial_scale, pooled_size=g.pooled_size, part_size=g.part_size,
                          sample_per_part=g.sample_per_part)
            out["offset_t"] = deform_roi_pool(h, rois, **common)
            out["offset_reshape"] = self.offset(out["offset_t"].flatten(1)).reshape(-1, 2, g.part_size, g.part_size)
            pooled = out["deformable_roi_pool"] = deform_roi_pool(h, rois, out["offset_reshape"],
                                                                  trans_std=g.trans_std, **common)
        else:
            pooled = out["roi_pool"] = roi_pool(h, rois, g.pooled_size, g.spatial_scale)
        x = F.relu(self.fc_new_2(F.relu(self.fc_new_1(pooled.flatten(1)))))
        out["cls_score"] = self.cls_score(x)
        out["cls_prob"] = F.softmax(out["cls_score"], dim=1)
        out["bbox_pred"] = self.bbox_pred(x)


class FasterRCNN(RFCN):
    """Faster R-CNN of the official release: :class:`~dcnviz.models.rfcn.RFCN`'s trunk, RPN, proposals,
    ``forward_official`` and ``predict``, with :class:`RCNNHead` (class-specific box regression)."""

    captured_head_blobs = ("rois", "offset_reshape", "cls_prob")

    def __init__(self, backbone: ResNetV1, classes: tuple[str, ...], scales: tuple[int, int] = (600, 1000),
                 anchor_scales=(4, 8, 16, 32), anchor_ratios=(0.5, 1, 2), deformable_roi_pool: bool = False,
                 head_mid: int = 256, head_fc: int = 1024, rpn_mid: int = 512,
                 proposal: ProposalConfig = ProposalConfig(),
                 detection: DetectionConfig = DetectionConfig(class_agnostic=False)):
        super().__init__(backbone, classes, scales, anchor_scales, anchor_ratios, rpn_mid=rpn_mid, proposal=proposal,
                         detection=detection,
                         head=RCNNHead(backbone.out_channels[1], len(classes), deformable_roi_pool, head_mid, head_fc))
