"""R-FCN detector of the official release (official.md §1.3-1.4, §4.3-4.4): ResNet-v1 trunk, RPN on res4,
position-sensitive head on res5 with plain PS RoI pooling or deformable PS RoI pooling.

Blob names follow the official symbols, so ``forward_official`` can be compared with MXNet directly.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dcnviz.errors import UserError
from dcnviz.models.anchors import generate_anchors
from dcnviz.models.hooks import sees_calls
from dcnviz.models.postprocess import DetectionConfig, detect
from dcnviz.models.preprocess import preprocess
from dcnviz.models.proposal import ProposalConfig, propose
from dcnviz.models.resnet import FEATURE_STRIDE, ResNetV1, conv_bn_relu
from dcnviz.ops import deform_psroi_pool, psroi_pool
from dcnviz.structures import Detections, Prep


class RPN(nn.Module):
    """``rpn_conv_3x3`` (3x3, pad 1) -> ReLU -> ``rpn_cls_score`` (2A) and ``rpn_bbox_pred`` (4A), 1x1.

    Returns ``rpn_cls_score`` (N, 2A, h, w), ``rpn_cls_prob`` (N, 2A, h, w: a softmax over {channel a,
    channel A + a}, i.e. background scores in channels 0..A-1 and foreground in A..2A-1) and
    ``rpn_bbox_pred`` (N, 4A, h, w; channel 4a + k is delta k = dx, dy, dw, dh of anchor a)."""

    conv_name = "rpn_conv_3x3"  # the official parameter name of the 3x3 conv (FPN's is rpn_conv)

    def __init__(self, in_channels: int, num_anchors: int, mid: int = 512):
        super().__init__()
        setattr(self, self.conv_name, nn.Conv2d(in_channels, mid, 3, 1, 1))
        self.rpn_cls_score = nn.Conv2d(mid, 2 * num_anchors, 1)
        self.rpn_bbox_pred = nn.Conv2d(mid, 4 * num_anchors, 1)

    def forward(self, x: torch.Tensor):
        r = conv_bn_relu(getattr(self, self.conv_name), None, x)
        score = self.rpn_cls_score(r)
        n, c, h, w = score.shape
        prob = F.softmax(score.reshape(n, 2, -1, w), dim=1).reshape(n, c, h, w)
        return score, prob, self.rpn_bbox_pred(r)


@dataclass(frozen=True)
class PartGeometry:
    """How the head pools a RoI: ``pooled_size`` x ``pooled_size`` bins, each bin reading its own
    score-map channel (``group_size``; 1 for Faster R-CNN, where every channel is pooled over all bins); with deformable pooling each part (``part_size`` x ``part_size``)
    is moved by ``trans * trans_std * roi_size`` (trans channel 2c = dx, 2c+1 = dy of class c) and averages
    ``sample_per_part``**2 samples. RoIs are in input pixels, maps have ``1 / spatial_scale`` pixels a cell."""

    deformable: bool
    pooled_size: int
    part_size: int
    group_size: int
    sample_per_part: int
    trans_std: float
    spatial_scale: float


def _score_maps(conv: nn.Conv2d, h: torch.Tensor) -> torch.Tensor:
    """The 1x1 conv ``conv`` of ``h`` as one matrix product per image, written NCHW-contiguous: the layout
    the position-sensitive pooling reads. On a channels-last ``h`` (the oneDNN convs' output) the conv's
    own output would be channels-last, and transposing the 3969-channel COCO class map cost ~30 ms of a
    ~1.2 s forward on 2 threads. The same values, rounded as a GEMM instead of a convolution. A ``conv``
    with forward hooks is called as itself."""
    if sees_calls(conv):
        return conv(h).contiguous()
    n, c, height, width = h.shape
    w = conv.weight.reshape(conv.out_channels, c)
    # (out, H*W) per image: torch.mm reads a channels-last image as a transposed matrix, without a copy
    maps = [torch.mm(w, x) if conv.bias is None else torch.addmm(conv.bias[:, None], w, x) for x in h.flatten(2)]
    return (maps[0][None] if n == 1 else torch.stack(maps)).view(n, conv.out_channels, height, width)


class RFCNHead(nn.Module):
    """``conv_new_1`` (1x1, ReLU) -> ``rfcn_cls`` (P*P*C) and ``rfcn_bbox`` (P*P*4*num_reg_classes) score maps,
    pooled per RoI and averaged over the P x P bins. With ``deformable``, ``rfcn_cls_offset_t`` (2*P*P*C:
    class-specific offsets) and ``rfcn_bbox_offset_t`` (2*P*P: one field for all box outputs) are pooled
    without offsets (``rfcn_cls_offset`` (R, 2C, P, P), ``rfcn_bbox_offset`` (R, 2, P, P)) and move the
    parts of the main pooling (trans_std 0.1, 4x4 samples per part)."""

    def __init__(self, in_channels: int, num_classes: int, parts: int = 7, deformable: bool = False, mid: int = 1024,
                 num_reg_classes: int = 2, sample_per_part: int = 4, trans_std: float = 0.1):
        super().__init__()
        p, c = parts, num_classes
        self.num_classes, self.num_reg_classes = num_classes, num_reg_classes
        self.conv_new_1 = nn.Conv2d(in_channels, mid, 1)
        self.rfcn_cls = nn.Conv2d(mid, p * p * c, 1)
        self.rfcn_bbox = nn.Conv2d(mid, p * p * 4 * num_reg_classes, 1)
        if deformable:
            self.rfcn_cls_offset_t = nn.Conv2d(mid, 2 * p * p * c, 1)
            self.rfcn_bbox_offset_t = nn.Conv2d(mid, 2 * p * p, 1)
        self.geometry = PartGeometry(deformable, p, p, p, sample_per_part, trans_std if deformable else 0.0,
                                     1.0 / FEATURE_STRIDE)

    def forward(self, feat: torch.Tensor, rois: torch.Tensor, out: dict) -> None:
        """Writes the official blobs into ``out``: [``rfcn_cls_offset``, ``rfcn_bbox_offset``,]
        ``psroipooled_cls_rois``, ``psroipooled_loc_rois``, ``cls_score`` (R, C), ``cls_prob`` (R, C),
        ``bbox_pred`` (R, 4*num_reg_classes)."""
        g = self.geometry
        h = conv_bn_relu(self.conv_new_1, None, feat)
        cls_maps, bbox_maps = _score_maps(self.rfcn_cls, h), _score_maps(self.rfcn_bbox, h)
        nbox = 4 * self.num_reg_classes
        if g.deformable:
            common = dict(spatial_scale=g.spatial_scale, group_size=g.group_size, pooled_size=g.pooled_size,
                          part_size=g.part_size, sample_per_part=g.sample_per_part)
            cls_off, bbox_off = self._offsets(h, rois, common)
            out["rfcn_cls_offset"], out["rfcn_bbox_offset"] = cls_off, bbox_off
            pooled_cls = deform_psroi_pool(cls_maps, rois, cls_off, output_dim=self.num_classes,
                                           trans_std=g.trans_std, **common)
            pooled_loc = deform_psroi_pool(bbox_maps, rois, bbox_off, output_dim=nbox, trans_std=g.trans_std,
                                           **common)
        else:
            common = dict(spatial_scale=g.spatial_scale, group_size=g.group_size, pooled_size=g.pooled_size)
            pooled_cls = psroi_pool(cls_maps, rois, output_dim=self.num_classes, **common)
            pooled_loc = psroi_pool(bbox_maps, rois, output_dim=nbox, **common)
        out["psroipooled_cls_rois"], out["psroipooled_loc_rois"] = pooled_cls, pooled_loc
        out["cls_score"] = pooled_cls.mean(dim=(2, 3))
        out["cls_prob"] = F.softmax(out["cls_score"], dim=1)
        out["bbox_pred"] = pooled_loc.mean(dim=(2, 3))


    def _offsets(self, h: torch.Tensor, rois: torch.Tensor, common: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """``rfcn_cls_offset`` and ``rfcn_bbox_offset``: the official no_trans position-sensitive pooling of
        the 1x1 convs ``rfcn_cls_offset_t`` and ``rfcn_bbox_offset_t`` of ``h``.

        Pooling without offsets averages fixed bilinear samples, so it commutes with a 1x1 conv: the
        pooled output of channel c in bin b equals row c of the conv weight times the average of h over
        that bin's samples, plus the bias where the bin has samples (a bin without any is 0 either way).
        When that is cheaper, h is pooled once per (RoI, bin) over all its channels and each bin gets
        its P*P-th of the weight rows as one small GEMM. At the R-FCN COCO head (300 RoIs on a 38x63
        map) this is 8x fewer multiply-adds than the 7938-channel conv over the whole map, and no 76 MB
        map: the same values, rounded differently (to float32 rounding; the MXNet parity tests hold). Convs
        with forward hooks are called as themselves, in the official order."""
        convs = (self.rfcn_cls_offset_t, self.rfcn_bbox_offset_t)
        outs = tuple(conv.out_channels // (self.geometry.group_size ** 2) for conv in convs)
        n, c, height, width = h.shape
        p2 = self.geometry.pooled_size ** 2
        # multiply-adds: pooling all channels (4 corners per sample) + the GEMMs, against the convs
        pooled_cost = rois.shape[0] * p2 * c * (4 * self.geometry.sample_per_part ** 2 + sum(outs))
        if (self.geometry.group_size != self.geometry.pooled_size or any(map(sees_calls, convs))
                or pooled_cost >= n * height * width * c * p2 * sum(outs)):
            return tuple(deform_psroi_pool(conv(h), rois, None, output_dim=k, **common) for conv, k in zip(convs, outs))
        single = dict(common, group_size=1)
        # channels-last: the pooling kernel's vector loop runs over a pixel's channels
        hc = h.contiguous(memory_format=torch.channels_last) if h.device.type == "cpu" else h
        features = deform_psroi_pool(hc, rois, None, output_dim=c, **single)  # (R, C, P, P)
        has_samples = deform_psroi_pool(h.new_ones(n, 1, height, width), rois, None, output_dim=1, **single)
        by_bin = features.flatten(2).permute(2, 0, 1)  # (P*P, R, C)
        result = []
        for conv, k in zip(convs, outs):
            # conv channel (k_out * P + ph) * P + pw: bin-major weight (P*P, C, k) and bias (P*P, 1, k)
            weight = conv.weight.view(k, p2, c).permute(1, 2, 0)
            out = torch.bmm(by_bin, weight) + conv.bias.view(k, p2).t().unsqueeze(1)
            result.append(out.permute(1, 2, 0).unflatten(2, (self.geometry.pooled_size,) * 2) * has_samples)
        return tuple(result)


class RFCN(nn.Module):
    """R-FCN of the official release.

    ``classes`` includes ``__background__`` at index 0; ``scales`` is the test (short, long) size;
    ``anchor_scales``/``anchor_ratios`` define the A anchors (COCO: 4, 8, 16, 32 x 0.5, 1, 2).
    """

    task = "detection"
    # blobs of the head that ``predict`` returns in ``captured`` when the RoI pooling is deformable
    captured_head_blobs = ("rois", "rfcn_cls_offset", "cls_prob")

    def __init__(self, backbone: ResNetV1, classes: tuple[str, ...], scales: tuple[int, int] = (600, 1000),
                 anchor_scales=(4, 8, 16, 32), anchor_ratios=(0.5, 1, 2), parts: int = 7,
                 deformable_psroi: bool = False, head_mid: int = 1024, rpn_mid: int = 512,
                 proposal: ProposalConfig = ProposalConfig(), detection: DetectionConfig = DetectionConfig(),
                 head: nn.Module | None = None):
        """``head`` replaces the R-FCN head (``parts``, ``deformable_psroi`` and ``head_mid`` are then
        unused): a module with the :class:`RFCNHead` interface (``forward(res5, rois, out)``, ``geometry``)."""
        super().__init__()
        self.backbone = backbone
        self.anchors = generate_anchors(FEATURE_STRIDE, anchor_ratios, anchor_scales)
        self.rpn = RPN(backbone.out_channels[0], len(self.anchors), rpn_mid)
        self.head = head if head is not None else RFCNHead(backbone.out_channels[1], len(classes), parts,
                                                           deformable_psroi, head_mid)
        self.classes, self.scales = tuple(classes), tuple(scales)
        self.proposal_cfg, self.detection_cfg = proposal, detection

    @property
    def deformable_layers(self):
        """Geometry of the deformable convs (:class:`~dcnviz.models.resnet.DeformableLayer`), may be empty."""
        return self.backbone.deformable_layers

    @property
    def part_geometry(self) -> PartGeometry:
        return self.head.geometry

    def preprocess(self, image) -> tuple[torch.Tensor, Prep]:
        """The official test preprocessing at this model's scales: (1, 3, H, W) input and its ``Prep``."""
        return preprocess(image, self.scales)

    def forward(self, data: torch.Tensor, rois: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return self.forward_official(data, rois)

    def forward_official(self, data: torch.Tensor, rois: torch.Tensor | None = None,
                         features: bool = False) -> dict[str, torch.Tensor]:
        """The official test network on a preprocessed (1, 3, H, W) input (or N inputs of one size, (N, 3, H, W):
        the proposals of each, its batch index in ``rois[:, 0]``).

        ``rois`` (R, 5) ``[0, x1, y1, x2, y2]`` in input pixels replaces the proposals when given.
        Returns the official blobs: ``res5{a,b,c}_branch2b_offset`` (DCN models), ``rpn_cls_score``,
        ``rpn_cls_prob``, ``rpn_bbox_pred``, ``rois``, the head's blobs (see :class:`RFCNHead`), and with
        ``features`` the intermediate maps ``feat_pool1``, ``feat_res2c_relu`` ... ``feat_res5c_relu``.
        """
        out: dict[str, torch.Tensor] = {}
        res4, res5 = self.backbone(data, out)
        if not features:
            out = {k: v for k, v in out.items() if not k.startswith("feat_")}
        score, prob, deltas = self.rpn(res4)
        out.update(rpn_cls_score=score, rpn_cls_prob=prob, rpn_bbox_pred=deltas)
        if rois is None:  # each image's proposals, its batch index in column 0
            prob_np, deltas_np = prob.detach().float().cpu().numpy(), deltas.detach().float().cpu().numpy()
            found = []
            for n in range(len(data)):
                rois_np, _ = propose(prob_np[n:n + 1], deltas_np[n:n + 1], self.anchors, tuple(data.shape[-2:]), 1.0,
                                     self.proposal_cfg)
                rois_np[:, 0] = n
                found.append(rois_np)
            rois = torch.from_numpy(np.concatenate(found)).to(device=data.device, dtype=data.dtype)
        else:
            rois = torch.as_tensor(rois, device=data.device, dtype=data.dtype)
        out["rois"] = rois
        self.head(res5, rois, out)
        return out

    @torch.inference_mode()
    def predict(self, image, boxes=None, score_thresh: float | None = None, keep_features: bool = False) -> Detections:
        """Detect objects in ``image`` (path, or BGR uint8 (H, W, 3) array as OpenCV reads it).

        ``boxes`` (K, 4) ``[x1, y1, x2, y2]`` in original pixels replaces the proposals (scaled and rounded
        as the official demos do); ``score_thresh`` overrides the test threshold (1e-3; the demo uses 0.7).
        Returns :class:`~dcnviz.structures.Detections` in original pixels; ``captured`` holds the
        ``res5*_branch2b_offset`` maps (1, 2*DG*9, h, w) and, with deformable RoI pooling, the head blobs
        named by ``captured_head_blobs``: ``rois`` (R, 5, input pixels), the pooling offsets (R-FCN:
        ``rfcn_cls_offset`` (R, 2C, P, P); Faster R-CNN: ``offset_reshape`` (R, 2, 7, 7); normalised, x
        first) and the RoIs' class probabilities ``cls_prob`` (R, C, before box regression and NMS), all
        on the CPU. With ``keep_features`` it also holds ``features``, the head's input (res5 output, on
        the model's device), so that :meth:`pool_rois` can pool other RoIs later without running the
        backbone again.
        """
        data, prep = self.preprocess(image)
        return self.predict_input(data, prep, boxes, score_thresh, keep_features)

    @torch.inference_mode()
    def predict_input(self, data: torch.Tensor, prep: Prep, boxes=None, score_thresh: float | None = None,
                      keep_features: bool = False) -> Detections:
        """:meth:`predict` on an input already preprocessed (``data`` and ``prep`` from :meth:`preprocess`,
        e.g. by DataLoader workers); ``data`` is moved to the model's device (non-blocking from pinned
        memory) and given its dtype (a model cast with ``.to(torch.bfloat16)`` runs in bfloat16, RoIs
        included); the captured blobs are float32 whatever the model's dtype."""
        param = next(self.parameters())
        data = data.to(param.device, param.dtype, non_blocking=True)
        rois = None
        if boxes is not None:
            b = np.asarray(boxes, dtype=np.float64)
            if b.ndim != 2 or b.shape[1] != 4 or not np.isfinite(b).all():
                raise UserError(f"boxes must be finite [x1, y1, x2, y2] rows of shape (K, 4), got shape {b.shape}")
            rois = np.hstack([np.zeros((len(b), 1)), np.round(b * prep.scale)]).astype(np.float32)
            rois = torch.from_numpy(rois)
        out = self.forward_official(data, rois, features=keep_features)
        det = self._detections(out, 0, prep, score_thresh)
        if keep_features:
            det.captured["features"] = self.head_input(out)
        return det

    @torch.inference_mode()
    def predict_inputs(self, data: Sequence[torch.Tensor], preps: Sequence[Prep], score_thresh: float | None = None
                       ) -> list[Detections]:
        """:meth:`predict_input` of N inputs of the same size (``data`` (1, 3, H, W) each) in one forward;
        the proposals, box decoding and NMS per image (:func:`dcnviz.models.batching.predict_batch`)."""
        param = next(self.parameters())
        out = self.forward_official(torch.cat(list(data)).to(param.device, param.dtype, non_blocking=True))
        return [self._detections(out, n, prep, score_thresh) for n, prep in enumerate(preps)]

    def _detections(self, out: dict, n: int, prep: Prep, score_thresh: float | None) -> Detections:
        """The detections of image ``n`` of the batch from the blobs ``out`` of :meth:`forward_official`."""
        cfg = self.detection_cfg if score_thresh is None else replace(self.detection_cfg, score_thresh=score_thresh)
        mine = out["rois"][:, 0] == n
        numpy = {k: out[k][mine].float().cpu().numpy() for k in ("rois", "cls_prob", "bbox_pred")}
        numpy["rois"][:, 0] = 0
        det_boxes, scores, labels = detect(numpy["rois"], numpy["cls_prob"], numpy["bbox_pred"],
                                           prep.input_size, prep.scale, cfg)
        captured = {layer.offset: out[layer.offset][n:n + 1].float().cpu() for layer in self.deformable_layers}
        if self.head.geometry.deformable:
            captured.update({k: out[k][mine].float().cpu() for k in self.captured_head_blobs})
            captured["rois"][:, 0] = 0
        return Detections(det_boxes, scores, labels, self.classes, prep, captured)

    def head_input(self, out: dict):
        """What the head pools from, among the blobs of ``forward_official(..., features=True)``: res5."""
        return out[f"feat_{self.backbone.stages[-1][-1]}_relu"]

    @torch.inference_mode()
    def pool_rois(self, features: torch.Tensor, rois) -> dict[str, torch.Tensor]:
        """The head alone on ``features`` (``predict(..., keep_features=True).captured["features"]``) with
        ``rois`` (R, 5) ``[0, x1, y1, x2, y2]`` in input pixels: the head's blobs (:class:`RFCNHead`) and
        ``rois``, float32 on the CPU. They equal what ``predict(image, boxes=...)`` computes for those RoIs,
        since the head sees the same input; only the backbone is not run again."""
        device = next(self.parameters()).device
        rois = torch.as_tensor(rois, device=device, dtype=features.dtype)
        out = {"rois": rois}
        self.head(features.to(device), rois, out)
        return {k: v.float().cpu() for k, v in out.items()}
