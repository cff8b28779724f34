"""FPN of the official release (``fpn/symbols/resnet_v1_101_fpn{,_dcn}_rcnn.py``, with the custom ops
``fpn/operator_py/pyramid_proposal.py`` and ``fpn_roi_pooling.py``; test settings of
``experiments/fpn/cfgs/resnet_v1_101_coco_trainval_fpn{,_dcn}_end2end_ohem.yaml``).

- trunk: ResNet-v1-101 with an undilated, stride-2 res5 (output stride 32); DCN: deformable branch2b in
  res3b3, res4b22 and res5a-c (4 groups, offset convs 3x3 pad 1, 72 channels);
- pyramid: laterals ``fpn_p{2..5}_1x1`` (1x1, 256), top-down nearest x2 upsampling and sums, 3x3
  ``fpn_p{2..5}`` on the sums (``fpn_p5`` on the res5 lateral), ``fpn_p6`` 3x3/2 on res5;
- RPN: one set of weights (``rpn_conv`` 3x3 512, ``rpn_cls_score``, ``rpn_bbox_pred``) on every level,
  3 anchors per level (scale 8 x stride, ratios 0.5, 1, 2); proposals over all levels ranked together
  (pre-NMS 12000, NMS 0.7, post-NMS 2000);
- RoI to level (``fpn_roi_pooling``): ``clip(floor(2 + log2(sqrt(w * h) / 224)), 0, 3)`` -> P2..P5, with
  w, h "+1" sizes in input pixels, computed in float32 as the operator does on MXNet's float32 RoIs;
- per-level 7x7 pooling at 1/stride: RoI max pooling (``fpn_coco``), or deformable RoI pooling
  (``fpn_dcn_coco``: a plain pooling ``offset_t`` -> fc ``offset_p{level}`` (98) -> (R, 2, 7, 7) offsets ->
  deformable pooling, trans_std 0.1, 4x4 samples per bin), back in RoI order;
- head: ``fc_new_1``, ``fc_new_2`` (1024, ReLU), ``cls_score`` (81), ``bbox_pred`` (4 x 81, class-specific);
- test: the image zero-padded to multiples of 32 (``IMAGE_STRIDE``), score threshold 1e-3, Gaussian
  soft-NMS (sigma 0.6, at most 100 per class), 100 detections per image.

Deviation: the release's cfgs test at six scales (``TEST_SCALES``, 480/800 ... 1400/2000) and merge the
detections of all of them before soft-NMS; ``predict`` runs one scale, (800, 1280) (the cfg's
single-scale line and its training scale), unless ``test_scales`` asks for the official multi-scale test
(six forward passes, up to 1400x2000: minutes on a CPU).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_pool

from dcnviz.errors import UserError
from dcnviz.models.anchors import generate_anchors
from dcnviz.models.postprocess import DetectionConfig, class_candidates, suppress
from dcnviz.models.preprocess import preprocess
from dcnviz.models.proposal import ProposalConfig, propose_pyramid
from dcnviz.models.resnet import ResNetV1
from dcnviz.models.rfcn import RFCN, RPN, PartGeometry
from dcnviz.ops import deform_roi_pool
from dcnviz.structures import Detections, Prep

RPN_STRIDES = (4, 8, 16, 32, 64)  # P2 .. P6
POOL_STRIDES = (4, 8, 16, 32)  # P2 .. P5, where RoIs are pooled
IMAGE_STRIDE = 32


def roi_levels(rois: torch.Tensor) -> torch.Tensor:
    """The pyramid level of each RoI (R, 5) ``[0, x1, y1, x2, y2]`` as ``fpn_roi_pooling`` assigns it:
    0..3 for P2..P5 (int64, on the RoIs' device). Computed in numpy float32, exactly as the operator
    computes it on the float32 RoIs (``w * h``, ``sqrt``, ``/ 224``, ``log2`` all in float32)."""
    if rois.device.type == "meta":  # shapes only
        return torch.zeros(rois.shape[0], dtype=torch.int64, device="meta")
    r = rois.detach().float().cpu().numpy()
    w = r[:, 3] - r[:, 1] + np.float32(1)
    h = r[:, 4] - r[:, 2] + np.float32(1)
    level = np.clip(np.floor(2 + np.log2(np.sqrt(w * h) / 224)), 0, len(POOL_STRIDES) - 1)
    return torch.from_numpy(level.astype(np.int64)).to(rois.device)


class FPNNeck(nn.Module):
    """The pyramid of ``get_fpn_feature``: P2..P5 (strides 4..32) and P6 (stride 64), 256 channels."""

    def __init__(self, in_channels: tuple[int, int, int, int], dim: int = 256):
        super().__init__()
        for level, c in zip(range(2, 6), in_channels):
            self.add_module(f"fpn_p{level}_1x1", nn.Conv2d(c, dim, 1))
            self.add_module(f"fpn_p{level}", nn.Conv2d(dim, dim, 3, 1, 1))
        self.fpn_p6 = nn.Conv2d(in_channels[3], dim, 3, 2, 1)

    def forward(self, c2, c3, c4, c5) -> dict[str, torch.Tensor]:
        top = self.fpn_p5_1x1(c5)
        out = {"fpn_p5": self.fpn_p5(top), "fpn_p6": self.fpn_p6(c5)}
        for level, c in ((4, c4), (3, c3), (2, c2)):
            # MXNet UpSampling(nearest, scale 2) + ElementWiseSum: the maps must be exactly twice as large
            top = F.interpolate(top, scale_factor=2, mode="nearest") + getattr(self, f"fpn_p{level}_1x1")(c)
            out[f"fpn_p{level}"] = getattr(self, f"fpn_p{level}")(top)
        return out


class PyramidRPN(RPN):
    """``get_rpn_subnet``: ``rpn_conv`` (3x3, 512, ReLU) -> ``rpn_cls_score`` (2A) and ``rpn_bbox_pred``
    (4A), the same weights on every level; the outputs as :class:`~dcnviz.models.rfcn.RPN`'s."""

    conv_name = "rpn_conv"


class FPNHead(nn.Module):
    """``fpn_roi_pooling`` (see the module docstring) -> ``fc_new_1`` -> ``fc_new_2`` -> ``cls_score``,
    ``bbox_pred``. ``geometry.spatial_scale`` is that of P2; a RoI on level l is pooled at
    ``1 / POOL_STRIDES[l]``."""

    def __init__(self, num_classes: int, deformable: bool, dim: int = 256, fc: int = 1024, pooled: int = 7):
        super().__init__()
        if deformable:
            for level in range(2, 2 + len(POOL_STRIDES)):
                self.add_module(f"offset_p{level}", nn.Linear(dim * pooled * pooled, 2 * pooled * pooled))
        self.fc_new_1 = nn.Linear(dim * pooled * pooled, fc)
        self.fc_new_2 = nn.Linear(fc, fc)
        self.cls_score = nn.Linear(fc, num_classes)
        self.bbox_pred = nn.Linear(fc, 4 * num_classes)
        self.dim = dim
        self.geometry = PartGeometry(deformable, pooled, pooled, 1, 4, 0.1 if deformable else 0.0,
                                     1.0 / POOL_STRIDES[0])

    def forward(self, pyramid: dict, rois: torch.Tensor, out: dict) -> None:
        """Writes ``roi_level`` (R,) int64 (0..3 = P2..P5), ``offset_reshape`` (R, 2, 7, 7; deformable
        only), ``fpn_roi_pooling`` (R, 256, 7, 7), ``cls_score``, ``cls_prob`` (R, C), ``bbox_pred`` (R, 4C)
        into ``out``, every row in the order of ``rois``."""
        g = self.geometry
        p = g.pooled_size
        levels = out["roi_level"] = roi_levels(rois)
        pooled = rois.new_zeros((rois.shape[0], self.dim, p, p), dtype=pyramid["fpn_p2"].dtype)
        if g.deformable:
            offsets = rois.new_zeros((rois.shape[0], 2, p, p), dtype=pooled.dtype)
        meta = levels.device.type == "meta"  # shapes only: no RoI on any level
        for i, stride in enumerate(POOL_STRIDES):
            idx = levels[:0] if meta else (levels == i).nonzero().flatten()
            if not meta and idx.numel() == 0:
                continue
            feat, r = pyramid[f"fpn_p{i + 2}"], rois[idx]
            if g.deformable:
                common = dict(spatial_scale=1.0 / stride, pooled_size=p, part_size=g.part_size,
                              sample_per_part=g.sample_per_part)
                t = deform_roi_pool(feat, r, **common)
                off = getattr(self, f"offset_p{i + 2}")(t.flatten(1)).reshape(-1, 2, p, p)
                offsets[idx] = off
                pooled[idx] = deform_roi_pool(feat, r, off, trans_std=g.trans_std, **common)
            else:
                pooled[idx] = roi_pool(feat, r, p, 1.0 / stride)
        if g.deformable:
            out["offset_reshape"] = offsets
        out["fpn_roi_pooling"] = pooled
        x = F.relu(self.fc_new_2(F.relu(self.fc_new_1(pooled.flatten(1)))))
        out["cls_score"] = self.cls_score(x)
        out["cls_prob"] = F.softmax(out["cls_score"], dim=1)
        out["bbox_pred"] = self.bbox_pred(x)


class FPN(RFCN):
    """FPN of the official release (module docstring). Shares :class:`~dcnviz.models.rfcn.RFCN`'s
    ``predict``/``predict_input`` (one scale) and its interface; ``forward_official`` returns the
    pyramid's blobs."""

    captured_head_blobs = ("rois", "offset_reshape", "cls_prob", "roi_level")

    def __init__(self, backbone: ResNetV1, classes: tuple[str, ...], scales: tuple[int, int] = (800, 1280),
                 anchor_scales=(8,), anchor_ratios=(0.5, 1, 2), deformable_roi_pool: bool = False,
                 proposal: ProposalConfig = ProposalConfig(12000, 2000, 0.7, 0.0),
                 detection: DetectionConfig = DetectionConfig(class_agnostic=False, soft_nms=0.6),
                 dim: int = 256, rpn_mid: int = 512, head_fc: int = 1024):
        """``dim`` (pyramid channels), ``rpn_mid`` and ``head_fc`` are the official 256, 512, 1024 (smaller
        for tests)."""
        nn.Module.__init__(self)
        self.backbone = backbone
        self.neck = FPNNeck(backbone.stage_channels, dim)
        self.level_anchors = [generate_anchors(s, anchor_ratios, anchor_scales) for s in RPN_STRIDES]
        self.anchors = self.level_anchors[0]
        self.rpn = PyramidRPN(dim, len(self.anchors), rpn_mid)
        self.head = FPNHead(len(classes), deformable_roi_pool, dim, head_fc)
        self.classes, self.scales = tuple(classes), tuple(scales)
        self.proposal_cfg, self.detection_cfg = proposal, detection

    def preprocess(self, image, scales: tuple[int, int] | None = None):
        """The official test preprocessing, padded to multiples of 32 (``IMAGE_STRIDE``)."""
        return preprocess(image, scales or self.scales, IMAGE_STRIDE)

    def forward_official(self, data: torch.Tensor, rois: torch.Tensor | None = None,
                         features: bool = False) -> dict[str, torch.Tensor]:
        """The official test network on a preprocessed (1, 3, H, W) input, H and W multiples of 32.

        Returns the offset maps of the deformable convs (DCN), ``fpn_p2`` ... ``fpn_p6``, per level l = 2..6
        ``rpn_cls_score_p{l}``, ``rpn_cls_prob_p{l}`` (1, 2A, h, w; background channels first) and
        ``rpn_bbox_pred_p{l}``, ``rois`` (the proposals, or ``rois`` when given: (R, 5) in input pixels),
        the head's blobs (:class:`FPNHead`), and with ``features`` the trunk maps ``feat_*``."""
        h, w = data.shape[-2:]
        if h % IMAGE_STRIDE or w % IMAGE_STRIDE:
            raise UserError(f"FPN input must be padded to multiples of {IMAGE_STRIDE} pixels, got {h}x{w} "
                            f"(use model.preprocess)")
        out: dict[str, torch.Tensor] = {}
        stages = self.backbone.stage_outputs(data, out)
        if not features:
            out = {k: v for k, v in out.items() if not k.startswith("feat_")}
        pyramid = self.neck(*stages)
        out.update(pyramid)
        for level in range(2, 2 + len(RPN_STRIDES)):
            score, prob, deltas = self.rpn(pyramid[f"fpn_p{level}"])
            out.update({f"rpn_cls_score_p{level}": score, f"rpn_cls_prob_p{level}": prob,
                        f"rpn_bbox_pred_p{level}": deltas})
        if rois is None:
            numpy = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
            levels = [(numpy(out[f"rpn_cls_prob_p{level}"]), numpy(out[f"rpn_bbox_pred_p{level}"]), anchors, stride)
                      for level, (stride, anchors) in enumerate(zip(RPN_STRIDES, self.level_anchors), start=2)]
            rois_np, _ = propose_pyramid(levels, (h, w), 1.0, self.proposal_cfg)
            rois = torch.from_numpy(rois_np).to(device=data.device, dtype=data.dtype)
        else:
            rois = torch.as_tensor(rois, device=data.device, dtype=data.dtype)
        out["rois"] = rois
        self.head(pyramid, rois, out)
        return out

    def head_input(self, out: dict):
        """The pyramid levels the head pools from (``fpn_p2`` ... ``fpn_p5``), for :meth:`pool_rois`."""
        return {f"fpn_p{level}": out[f"fpn_p{level}"] for level in range(2, 2 + len(POOL_STRIDES))}

    @torch.inference_mode()
    def pool_rois(self, features: dict, rois) -> dict[str, torch.Tensor]:
        """:meth:`RFCN.pool_rois <dcnviz.models.rfcn.RFCN.pool_rois>` on the pyramid (``features`` from
        ``predict(..., keep_features=True)``): each RoI pooled on its own level."""
        device = next(self.parameters()).device
        pyramid = {k: v.to(device) for k, v in features.items()}
        rois = torch.as_tensor(rois, device=device, dtype=pyramid["fpn_p2"].dtype)
        out = {"rois": rois}
        self.head(pyramid, rois, out)
        return {k: v.float().cpu() for k, v in out.items()}

    def predict_inputs(self, data: Sequence[torch.Tensor], preps: Sequence[Prep], score_thresh: float | None = None
                       ) -> list[Detections]:
        """One forward per input (``--batch`` gains nothing here): the pyramid proposal layer, like the
        official one, takes one image at a time."""
        return [self.predict_input(d, prep, score_thresh=score_thresh) for d, prep in zip(data, preps)]

    @torch.inference_mode()
    def predict(self, image, boxes=None, score_thresh: float | None = None, keep_features: bool = False,
                test_scales: tuple[tuple[int, int], ...] | None = None) -> Detections:
        """:meth:`RFCN.predict <dcnviz.models.rfcn.RFCN.predict>` at ``self.scales``, the input padded to
        multiples of 32; with deformable RoI pooling ``captured`` also holds ``roi_level`` (R,), and with
        ``keep_features`` ``features`` is the pyramid (a dict ``fpn_p2`` ... ``fpn_p5``).

        ``test_scales`` (e.g. the spec's ``test["test_scales"]``) runs the official multi-scale test
        instead (``fpn/core/tester.py``): the detections scoring > the threshold at every scale, merged per
        class, then soft-NMS and ``max_per_image``; ``captured`` is then empty and ``prep`` is that of the
        last scale (the boxes are in original pixels either way)."""
        if not test_scales:
            return super().predict(image, boxes, score_thresh, keep_features)
        if boxes is not None or keep_features:
            raise UserError("the multi-scale test (test_scales) takes no boxes and keeps no features")
        cfg = self.detection_cfg if score_thresh is None else replace(self.detection_cfg, score_thresh=score_thresh)
        device = next(self.parameters()).device
        merged = None
        for scales in test_scales:
            data, prep = self.preprocess(image, tuple(scales))
            out = self.forward_official(data.to(device))
            blobs = {k: out[k].float().cpu().numpy() for k in ("rois", "cls_prob", "bbox_pred")}
            found = class_candidates(blobs["rois"], blobs["cls_prob"], blobs["bbox_pred"], prep.input_size,
                                     prep.scale, cfg)
            merged = found if merged is None else [(np.concatenate([a, c]), np.concatenate([b, d]))
                                                   for (a, b), (c, d) in zip(merged, found)]
        det_boxes, scores, labels = suppress(merged, cfg)
        return Detections(det_boxes, scores, labels, self.classes, prep, {})
