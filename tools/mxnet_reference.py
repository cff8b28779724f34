"""MXNet references for dcnviz's whole-network parity tests (tests/test_models_official.py, DCNVIZ_MXREF).

Builds an official network of the Deformable ConvNets v1 release as an MXNet 1.9.1 symbol, layer by layer
as the official test-mode symbols build it (rfcn/symbols/resnet_v1_101_rfcn*.py, deform_*_demo.py,
deeplab/symbols/resnet_v1_101_deeplab*.py, faster_rcnn/symbols/resnet_v1_101_rcnn*.py,
fpn/symbols/resnet_v1_101_fpn*_rcnn.py), fills it with random but well-scaled weights, saves them in the
official .params format and runs MXNet's CPU forward on one image. The proposal layers (Python custom ops
in the release) are replaced by a ``rois`` input, so the head runs on known RoIs; dcnviz's proposal layer
has its own tests. FPN's RoI pooling, also a Python custom op in the release, is this tool's own
:class:`FPNRoIPooling` (MXNet CustomOp), which also returns the level of each RoI; FPN's proposals are also
computed, by this tool's :class:`PyramidProposal` CustomOp on MXNet's RPN maps, and saved as
``proposal_rois`` (2000, 5; rows past ``proposal_count`` are -1), beside the head's given RoIs.

usage (in the MXNet venv, see tools/README.md):
    python tools/mxnet_reference.py OUT_DIR --image PATH [--models M1,M2|all] [--seed N] [--short S]

writes, per model, OUT_DIR/MODEL-0000.params (mx.nd.save: V2 arrays), MODEL-0000.legacy.params and
MODEL-0000.v1.params (the same arrays in the two older encodings; not with --v2-only) and MODEL-ref.npz with the exact input
``data`` (1, 3, H, W), ``im_info``, ``rois`` (R, 5) ``[0, x1, y1, x2, y2]`` in input pixels (detectors),
every official output blob (names as in the symbols; see ``build``), the ``feat_*`` trunk maps, and
``meta`` (a JSON string: model, seed, image, short, long, scale, MXNet version, forward time).

Weights: He-normal convs and fc layers; BatchNorm moving statistics set to the statistics of their input
on this image (computed by a calibration network whose BNs normalise with batch statistics), so every
BN really normalises; the offset
convs, the offset fc and the heads rescaled to a target output RMS (offsets ~1.5 px, normalised RoI
offsets ~1, scores ~1.5) so that the deformable ops move samples by a few pixels and softmaxes are not flat.
The files hold what a training checkpoint of the release holds, including the ``*_test`` box-regression
keys with BBOX_STDS folded in (official.md §2a); the forward uses those, as ``load_param(process=True)``.
"""
import argparse
import json
import os
import struct
import sys
import time

import cv2
import mxnet as mx
import numpy as np

PIXEL_MEANS_BGR = (103.06, 115.90, 123.15)
BBOX_STDS = (0.1, 0.1, 0.2, 0.2)
STRIDE = 16

# name: (kind, classes, anchors, res5 deformable (groups, offset dilation) or None, head, parts, short, long)
MODELS = {
    "rfcn_dcn_coco": ("rfcn", 81, 12, (4, 2), "dpsroi", 7, 600, 1000),
    "rfcn_coco": ("rfcn", 81, 12, None, "psroi", 7, 600, 1000),
    "deform_conv": ("rfcn", 21, 9, (1, 1), "psroi", 7, 600, 1000),
    "deform_psroi": ("rfcn", 21, 9, None, "dpsroi", 3, 600, 1000),
    "deeplab_dcn_cityscapes": ("deeplab", 19, 0, (1, 1), None, 0, 1024, 2048),
    "deeplab_cityscapes": ("deeplab", 19, 0, None, None, 0, 1024, 2048),
    "rcnn_dcn_coco": ("rcnn", 81, 12, (4, 2), "deformable_roi_pool", 7, 600, 1000),
    "rcnn_coco": ("rcnn", 81, 12, None, "roi_pool", 7, 600, 1000),
    # FPN: deformable res3b3, res4b22 and res5 (offset convs 3x3 pad 1), 3 anchors per level, 800/1280
    "fpn_dcn_coco": ("fpn", 81, 3, (4, 1), "deformable_roi_pool", 7, 800, 1280),
    "fpn_coco": ("fpn", 81, 3, None, "roi_pool", 7, 800, 1280),
}
FPN_RPN_STRIDES = (4, 8, 16, 32, 64)
FPN_POOL_STRIDES = (4, 8, 16, 32)
IMAGE_STRIDE = {"fpn": 32}  # official IMAGE_STRIDE: zero padding of the resized image
TRUNK_TAPS = ("pool1", "res2c_relu", "res3b3_relu", "res4b22_relu", "res5c_relu")


# ----------------------------------------------------------------------------- the symbols

class Builder:
    """Builds one network; ``bn_train`` makes every BatchNorm use batch statistics (calibration)."""

    def __init__(self, bn_train=False):
        self.bn_train = bn_train
        self.blobs = {}  # official output name -> symbol
        self.bn_stats = []  # with bn_train: (BN name, mean symbol, variance symbol) of each BN input

    def conv(self, x, name, filters, kernel=1, stride=1, pad=0, dilate=1, bias=False):
        return mx.sym.Convolution(data=x, name=name, num_filter=filters, kernel=(kernel, kernel),
                                  stride=(stride, stride), pad=(pad, pad), dilate=(dilate, dilate), no_bias=not bias)

    def bn(self, x, name):
        if self.bn_train:
            # normalise with this input's own per-channel statistics, written out explicitly so that they
            # can be read back as the moving statistics that reproduce this normalisation at test time
            mean = mx.sym.mean(x, axis=(0, 2, 3), keepdims=True)
            centred = mx.sym.broadcast_sub(x, mean)
            var = mx.sym.mean(mx.sym.square(centred), axis=(0, 2, 3), keepdims=True)
            self.bn_stats.append((name, mx.sym.flatten(mean), mx.sym.flatten(var)))
            y = mx.sym.broadcast_mul(centred, mx.sym.rsqrt(var + 1e-5))
            per_channel = lambda suffix: mx.sym.reshape(mx.sym.Variable(name + suffix), shape=(1, -1, 1, 1))
            return mx.sym.broadcast_add(mx.sym.broadcast_mul(y, per_channel("_gamma")), per_channel("_beta"))
        return mx.sym.BatchNorm(data=x, name=name, use_global_stats=True, fix_gamma=False, eps=1e-5)

    @staticmethod
    def relu(x, name):
        return mx.sym.Activation(data=x, act_type="relu", name=name)

    def block(self, x, name, mid, out, stride, shortcut, dcn=None, dilate=1):
        """Bottleneck ``resXY`` (BN ``bnXY_*``), stride on the 1x1 convs (Caffe ResNet-v1)."""
        tag = name[3:]
        if shortcut:
            x_short = self.bn(self.conv(x, name + "_branch1", out, 1, stride), "bn%s_branch1" % tag)
        else:
            x_short = x
        a = self.relu(self.bn(self.conv(x, name + "_branch2a", mid, 1, stride), "bn%s_branch2a" % tag),
                      name + "_branch2a_relu")
        if dcn is not None:
            groups, odil = dcn
            offset = self.conv(a, name + "_branch2b_offset", 18 * groups, 3, 1, odil, odil, bias=True)
            self.blobs[name + "_branch2b_offset"] = offset
            b = mx.sym.contrib.DeformableConvolution(
                data=a, offset=offset, name=name + "_branch2b", num_filter=mid, kernel=(3, 3), stride=(1, 1),
                pad=(dilate, dilate), dilate=(dilate, dilate), num_deformable_group=groups, no_bias=True)
        else:
            b = self.conv(a, name + "_branch2b", mid, 3, 1, dilate, dilate)
        b = self.relu(self.bn(b, "bn%s_branch2b" % tag), name + "_branch2b_relu")
        c = self.bn(self.conv(b, name + "_branch2c", out, 1), "bn%s_branch2c" % tag)
        return self.relu(mx.sym.broadcast_add(x_short, c, name=name), name + "_relu")

    def trunk(self, data, dcn, dilated=True, dcn_blocks=("res5a", "res5b", "res5c")):
        """ResNet-v1-101 with a dilated, stride-1 res5 (``dilated``, R-FCN, Faster R-CNN, DeepLab), or a
        stride-2 undilated one (FPN); ``dcn`` makes the branch2b of ``dcn_blocks`` deformable. Returns the
        outputs of res2, res3, res4 and res5."""
        x = self.relu(self.bn(self.conv(data, "conv1", 64, 7, 2, 3), "bn_conv1"), "conv1_relu")
        x = mx.sym.Pooling(data=x, name="pool1", kernel=(3, 3), stride=(2, 2), pool_type="max",
                           pooling_convention="full")
        self.blobs["feat_pool1"] = x
        stages = [(2, ["a", "b", "c"], 64, 256, 1), (3, ["a", "b1", "b2", "b3"], 128, 512, 2),
                  (4, ["a"] + ["b%d" % i for i in range(1, 23)], 256, 1024, 2),
                  (5, ["a", "b", "c"], 512, 2048, 1 if dilated else 2)]
        outputs = []
        for stage, blocks, mid, out, stride in stages:
            for i, b in enumerate(blocks):
                name = "res%d%s" % (stage, b)
                x = self.block(x, name, mid, out, stride if i == 0 else 1, i == 0,
                               dcn=dcn if name in dcn_blocks else None, dilate=2 if stage == 5 and dilated else 1)
            self.blobs["feat_res%d%s_relu" % (stage, blocks[-1])] = x
            outputs.append(x)
        return outputs

    def rpn(self, x, anchors):
        r = self.relu(self.conv(x, "rpn_conv_3x3", 512, 3, 1, 1, bias=True), "rpn_relu")
        score = self.conv(r, "rpn_cls_score", 2 * anchors, bias=True)
        prob = mx.sym.SoftmaxActivation(mx.sym.Reshape(score, shape=(0, 2, -1, 0), name="rpn_cls_score_reshape"),
                                        mode="channel", name="rpn_cls_prob")
        self.blobs.update(rpn_cls_score=score, rpn_bbox_pred=self.conv(r, "rpn_bbox_pred", 4 * anchors, bias=True),
                          rpn_cls_prob=mx.sym.Reshape(prob, shape=(0, 2 * anchors, -1, 0), name="rpn_cls_prob_reshape"))

    def rfcn_head(self, feat, rois, classes, head, parts):
        """R-FCN: PS score maps pooled per RoI (deformably with ``dpsroi``), averaged over the bins."""
        h = self.relu(self.conv(feat, "conv_new_1", 1024, bias=True), "conv_new_1_relu")
        cls_maps = self.conv(h, "rfcn_cls", parts * parts * classes, bias=True)
        loc_maps = self.conv(h, "rfcn_bbox", parts * parts * 8, bias=True)  # class-agnostic: 2 x 4
        if head == "dpsroi":
            common = dict(rois=rois, group_size=parts, pooled_size=parts, part_size=parts, sample_per_part=4,
                          spatial_scale=1.0 / STRIDE)
            off_cls = mx.sym.contrib.DeformablePSROIPooling(
                data=self.conv(h, "rfcn_cls_offset_t", 2 * parts * parts * classes, bias=True),
                name="rfcn_cls_offset", no_trans=True, output_dim=2 * classes, **common)
            off_loc = mx.sym.contrib.DeformablePSROIPooling(
                data=self.conv(h, "rfcn_bbox_offset_t", 2 * parts * parts, bias=True),
                name="rfcn_bbox_offset", no_trans=True, output_dim=2, **common)
            pooled_cls = mx.sym.contrib.DeformablePSROIPooling(
                data=cls_maps, trans=off_cls, name="psroipooled_cls_rois", trans_std=0.1, output_dim=classes, **common)
            pooled_loc = mx.sym.contrib.DeformablePSROIPooling(
                data=loc_maps, trans=off_loc, name="psroipooled_loc_rois", trans_std=0.1, output_dim=8, **common)
            self.blobs.update(rfcn_cls_offset=off_cls, rfcn_bbox_offset=off_loc)
        else:
            common = dict(rois=rois, group_size=parts, pooled_size=parts, spatial_scale=1.0 / STRIDE)
            pooled_cls = mx.sym.contrib.PSROIPooling(data=cls_maps, name="psroipooled_cls_rois", output_dim=classes,
                                                     **common)
            pooled_loc = mx.sym.contrib.PSROIPooling(data=loc_maps, name="psroipooled_loc_rois", output_dim=8, **common)
        avg = dict(pool_type="avg", global_pool=True, kernel=(parts, parts))
        cls_score = mx.sym.Reshape(mx.sym.Pooling(pooled_cls, name="ave_cls_scors_rois", **avg), shape=(-1, classes),
                                   name="cls_score_reshape")
        bbox_pred = mx.sym.Reshape(mx.sym.Pooling(pooled_loc, name="ave_bbox_pred_rois", **avg), shape=(-1, 8),
                                   name="bbox_pred_reshape")
        self.blobs.update(psroipooled_cls_rois=pooled_cls, psroipooled_loc_rois=pooled_loc, cls_score=cls_score,
                          cls_prob=mx.sym.SoftmaxActivation(cls_score, name="cls_prob"), bbox_pred=bbox_pred)

    def rcnn_head(self, feat, rois, classes, head):
        """Faster R-CNN 2fc head on ``conv_new_1`` (256 channels): RoI max pooling, or deformable RoI pooling
        whose (R, 2, 7, 7) offsets come from the fc layer ``offset`` on the plain (no_trans) pooling."""
        h = self.relu(self.conv(feat, "conv_new_1", 256, bias=True), "conv_new_1_relu")
        if head == "deformable_roi_pool":
            common = dict(rois=rois, group_size=1, pooled_size=7, part_size=7, sample_per_part=4, output_dim=256,
                          spatial_scale=1.0 / STRIDE)
            offset_t = mx.sym.contrib.DeformablePSROIPooling(data=h, name="offset_t", no_trans=True, **common)
            offset = mx.sym.FullyConnected(offset_t, name="offset", num_hidden=7 * 7 * 2)
            offset = mx.sym.Reshape(offset, shape=(-1, 2, 7, 7), name="offset_reshape")
            pooled = mx.sym.contrib.DeformablePSROIPooling(data=h, trans=offset, name="deformable_roi_pool",
                                                           trans_std=0.1, **common)
            self.blobs.update(offset_t=offset_t, offset_reshape=offset, deformable_roi_pool=pooled)
        else:
            pooled = mx.sym.ROIPooling(data=h, rois=rois, name="roi_pool", pooled_size=(7, 7),
                                       spatial_scale=1.0 / STRIDE)
            self.blobs["roi_pool"] = pooled
        f = self.relu(mx.sym.FullyConnected(pooled, name="fc_new_1", num_hidden=1024), "fc_new_1_relu")
        f = self.relu(mx.sym.FullyConnected(f, name="fc_new_2", num_hidden=1024), "fc_new_2_relu")
        cls_score = mx.sym.FullyConnected(f, name="cls_score", num_hidden=classes)
        self.blobs.update(cls_score=cls_score, cls_prob=mx.sym.SoftmaxActivation(cls_score, name="cls_prob"),
                          bbox_pred=mx.sym.FullyConnected(f, name="bbox_pred", num_hidden=4 * classes))

    def fpn_feature(self, c2, c3, c4, c5):
        """get_fpn_feature: laterals, nearest x2 top-down sums, 3x3 smoothing; P6 3x3/2 on res5."""
        top = self.conv(c5, "fpn_p5_1x1", 256, bias=True)
        p = {"fpn_p5": self.conv(top, "fpn_p5", 256, 3, 1, 1, bias=True),
             "fpn_p6": self.conv(c5, "fpn_p6", 256, 3, 2, 1, bias=True)}
        for level, c in ((4, c4), (3, c3), (2, c2)):
            up = mx.sym.UpSampling(top, scale=2, sample_type="nearest", name="fpn_p%d_upsample" % (level + 1))
            top = mx.sym.ElementWiseSum(up, self.conv(c, "fpn_p%d_1x1" % level, 256, bias=True),
                                        name="fpn_p%d_sum" % level)
            p["fpn_p%d" % level] = self.conv(top, "fpn_p%d" % level, 256, 3, 1, 1, bias=True)
        self.blobs.update(p)
        return p

    def fpn_rpn(self, pyramid, anchors):
        """get_rpn_subnet on every level, one set of weights (rpn_conv, rpn_cls_score, rpn_bbox_pred)."""
        shared = {n: (mx.sym.Variable(n + "_weight"), mx.sym.Variable(n + "_bias"))
                  for n in ("rpn_conv", "rpn_cls_score", "rpn_bbox_pred")}

        def conv(x, layer, suffix, filters, kernel, pad):
            w, b = shared[layer]
            return mx.sym.Convolution(data=x, weight=w, bias=b, name=layer + "_" + suffix, num_filter=filters,
                                      kernel=(kernel, kernel), pad=(pad, pad))
        for level in range(2, 7):
            suffix = "p%d" % level
            r = self.relu(conv(pyramid["fpn_" + suffix], "rpn_conv", suffix, 512, 3, 1), "rpn_relu_" + suffix)
            score = conv(r, "rpn_cls_score", suffix, 2 * anchors, 1, 0)
            t1 = mx.sym.Reshape(score, shape=(0, 2, -1, 0), name="rpn_cls_score_t1_" + suffix)
            prob = mx.sym.SoftmaxActivation(t1, mode="channel", name="rpn_cls_prob_" + suffix)
            self.blobs.update({
                "rpn_cls_score_" + suffix: score,
                "rpn_cls_prob_" + suffix: mx.sym.Reshape(prob, shape=(0, 2 * anchors, -1, 0),
                                                         name="rpn_cls_prob_t_" + suffix),
                "rpn_bbox_pred_" + suffix: conv(r, "rpn_bbox_pred", suffix, 4 * anchors, 1, 0)})

    def fpn_head(self, pyramid, rois, classes, head):
        """fpn_roi_pooling (this tool's CustomOp, see FPNRoIPooling) -> 2fc -> cls_score, bbox_pred."""
        deformable = head == "deformable_roi_pool"
        inputs = {"data_p%d" % l: pyramid["fpn_p%d" % l] for l in range(2, 6)}
        if deformable:
            for l in range(2, 6):
                inputs["offset_weight_p%d" % l] = mx.sym.Variable("offset_p%d_weight" % l)
                inputs["offset_bias_p%d" % l] = mx.sym.Variable("offset_p%d_bias" % l)
        outs = mx.sym.Custom(rois=rois, op_type="dcnviz_fpn_roi_pooling", name="fpn_roi_pooling",
                             with_deformable=str(deformable), **inputs)
        pooled, level = outs[0], outs[1]
        self.blobs.update(fpn_roi_pooling=pooled, roi_level=level)
        if deformable:
            self.blobs["offset_reshape"] = outs[2]
        f = self.relu(mx.sym.FullyConnected(pooled, name="fc_new_1", num_hidden=1024), "fc_new_1_relu")
        f = self.relu(mx.sym.FullyConnected(f, name="fc_new_2", num_hidden=1024), "fc_new_2_relu")
        cls_score = mx.sym.FullyConnected(f, name="cls_score", num_hidden=classes)
        self.blobs.update(cls_score=cls_score, cls_prob=mx.sym.SoftmaxActivation(cls_score, name="cls_prob"),
                          bbox_pred=mx.sym.FullyConnected(f, name="bbox_pred", num_hidden=4 * classes))

    def deeplab_head(self, data, feat, classes):
        f = self.relu(self.conv(feat, "fc6", 1024, bias=True), "relu_fc6")
        score = self.conv(f, "score", classes, bias=True)
        up = mx.sym.Deconvolution(score, name="upsampling", num_filter=classes, kernel=(32, 32), stride=(16, 16),
                                  num_group=classes, no_bias=True)
        crop = mx.sym.Crop(up, data, num_args=2, offset=(8, 8), name="croped_score")
        self.blobs.update(score=score, croped_score=crop, softmax_prob=mx.sym.softmax(crop, axis=1, name="softmax"))


# ----------------------------------------------------------------------------- FPN's RoI pooling

def fpn_levels(rois):
    """The level (0..3 = P2..P5) of each RoI, by the rule of the release's fpn_roi_pooling operator, on the
    float32 RoIs as MXNet hands them to a Python operator."""
    w = rois[:, 3] - rois[:, 1] + 1
    h = rois[:, 4] - rois[:, 2] + 1
    return np.clip(np.floor(2 + np.log2(np.sqrt(w * h) / 224)), 0, len(FPN_POOL_STRIDES) - 1)


class FPNRoIPooling(mx.operator.CustomOp):
    """Test-time forward of the release's ``fpn_roi_pooling``: each RoI pooled (7x7) on its level at
    1/stride, by ROIPooling, or by deformable RoI pooling (DeformablePSROIPooling, group_size 1) whose
    offsets come from that level's fc ``offset_p<L>`` on a no_trans pooling; rows back in RoI order.
    Outputs: the pooled features, the level of each RoI, and (deformable) the (R, 2, 7, 7) offsets."""

    def __init__(self, deformable):
        super(FPNRoIPooling, self).__init__()
        self.deformable = deformable

    def forward(self, is_train, req, in_data, out_data, aux):
        rois = in_data[-1]
        level = fpn_levels(rois.asnumpy())
        pieces, offsets, order = [], [], []
        for i, stride in enumerate(FPN_POOL_STRIDES):
            idx = np.where(level == i)[0]
            if len(idx) == 0:
                continue
            r = mx.nd.take(rois, mx.nd.array(idx, ctx=rois.context))
            feat = in_data[i]
            if self.deformable:
                common = dict(group_size=1, pooled_size=7, part_size=7, sample_per_part=4, output_dim=256,
                              spatial_scale=1.0 / stride)
                t = mx.nd.contrib.DeformablePSROIPooling(data=feat, rois=r, no_trans=True, **common)
                off = mx.nd.FullyConnected(t, weight=in_data[4 + 2 * i], bias=in_data[5 + 2 * i],
                                           num_hidden=98).reshape((-1, 2, 7, 7))
                pieces.append(mx.nd.contrib.DeformablePSROIPooling(data=feat, rois=r, trans=off, no_trans=False,
                                                                   trans_std=0.1, **common))
                offsets.append(off)
            else:
                pieces.append(mx.nd.ROIPooling(feat, r, pooled_size=(7, 7), spatial_scale=1.0 / stride))
            order.append(idx)
        # the rows come level by level; put them back in RoI order
        back = mx.nd.array(np.argsort(np.concatenate(order)), ctx=rois.context)
        self.assign(out_data[0], req[0], mx.nd.take(mx.nd.concat(*pieces, dim=0), back))
        self.assign(out_data[1], req[1], mx.nd.array(level, ctx=rois.context))
        if self.deformable:
            self.assign(out_data[2], req[2], mx.nd.take(mx.nd.concat(*offsets, dim=0), back))

    def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
        raise NotImplementedError("test-time forward only")


@mx.operator.register("dcnviz_fpn_roi_pooling")
class FPNRoIPoolingProp(mx.operator.CustomOpProp):
    def __init__(self, with_deformable="False"):
        super(FPNRoIPoolingProp, self).__init__(need_top_grad=False)
        self.deformable = with_deformable == "True"

    def list_arguments(self):
        args = ["data_p%d" % l for l in range(2, 6)]
        if self.deformable:
            for l in range(2, 6):
                args += ["offset_weight_p%d" % l, "offset_bias_p%d" % l]
        return args + ["rois"]

    def list_outputs(self):
        return ["output", "level"] + (["offset"] if self.deformable else [])

    def infer_shape(self, in_shape):
        r = in_shape[-1][0]
        if self.deformable:
            for i in range(4):
                in_shape[4 + 2 * i], in_shape[5 + 2 * i] = [98, 7 * 7 * 256], [98]
        outs = [[r, in_shape[0][1], 7, 7], [r]] + ([[r, 2, 7, 7]] if self.deformable else [])
        return in_shape, outs, []

    def create_operator(self, ctx, shapes, dtypes):
        return FPNRoIPooling(self.deformable)


# ----------------------------------------------------------------------------- FPN's proposals

def anchors_at(base_size, ratios=(0.5, 1, 2), scales=(8,)):
    """lib/rpn/generate_anchor.py's anchors (ratio-major, then scale), "+1" boxes around the base cell."""
    w = h = float(base_size)
    cx, cy = 0.5 * (w - 1), 0.5 * (h - 1)
    out = []
    for r in ratios:
        rw = np.round(np.sqrt(w * h / r))
        rh = np.round(rw * r)
        for s in scales:
            sw, sh = rw * s, rh * s
            out.append([cx - 0.5 * (sw - 1), cy - 0.5 * (sh - 1), cx + 0.5 * (sw - 1), cy + 0.5 * (sh - 1)])
    return np.array(out)


def greedy_nms(boxes, thresh):
    """Greedy NMS of boxes (N, 4) already in visiting order, "+1" areas, keep IoU <= thresh."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order, keep = np.arange(len(boxes)), []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= thresh]
    return np.array(keep, np.int64)


class PyramidProposal(mx.operator.CustomOp):
    """Test-time forward of the release's ``pyramid_proposal``: every level's anchors (scale 8 x stride)
    decoded by its deltas on the grid int(H / stride) x int(W / stride), clipped, pooled over the levels,
    the 12000 best, NMS 0.7, the 2000 best. Two departures, as dcnviz documents them: ties in score keep
    index order (stable sort), and the output is not padded by random choice: rows past ``count`` are -1."""

    def __init__(self, height, width, pre, post, thresh):
        super(PyramidProposal, self).__init__()
        self.hw, self.pre, self.post, self.thresh = (height, width), pre, post, thresh

    def forward(self, is_train, req, in_data, out_data, aux):
        boxes, scores = [], []
        for i, stride in enumerate(FPN_RPN_STRIDES):
            prob, deltas = in_data[i].asnumpy(), in_data[len(FPN_RPN_STRIDES) + i].asnumpy()
            base = anchors_at(stride)
            a = len(base)
            h, w = int(self.hw[0] / stride), int(self.hw[1] / stride)
            prob, deltas = prob[:, a:, :h, :w], deltas[:, :, :h, :w]
            h, w = prob.shape[2:]
            sx, sy = np.meshgrid(np.arange(w) * stride, np.arange(h) * stride)
            shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], 1)
            anchors = (base[None] + shifts[:, None]).reshape(-1, 4)
            d = deltas.transpose(0, 2, 3, 1).reshape(-1, 4)
            aw, ah = anchors[:, 2] - anchors[:, 0] + 1.0, anchors[:, 3] - anchors[:, 1] + 1.0
            cx, cy = anchors[:, 0] + 0.5 * (aw - 1.0), anchors[:, 1] + 0.5 * (ah - 1.0)
            pcx, pcy = d[:, 0] * aw + cx, d[:, 1] * ah + cy
            pw, ph = np.exp(d[:, 2]) * aw, np.exp(d[:, 3]) * ah
            b = np.stack([pcx - 0.5 * (pw - 1.0), pcy - 0.5 * (ph - 1.0), pcx + 0.5 * (pw - 1.0),
                          pcy + 0.5 * (ph - 1.0)], 1)
            b[:, 0::2] = np.clip(b[:, 0::2], 0, self.hw[1] - 1)
            b[:, 1::2] = np.clip(b[:, 1::2], 0, self.hw[0] - 1)
            boxes.append(b)  # RPN_MIN_SIZE 0: no box is filtered
            scores.append(prob.transpose(0, 2, 3, 1).reshape(-1))
        boxes, scores = np.concatenate(boxes), np.concatenate(scores)
        order = np.argsort(-scores, kind="stable")[:self.pre]
        keep = greedy_nms(boxes[order].astype(np.float32), self.thresh)[:self.post]
        out = -np.ones((self.post, 5), np.float32)
        out[:len(keep), 0] = 0
        out[:len(keep), 1:] = boxes[order][keep]
        self.assign(out_data[0], req[0], mx.nd.array(out))
        self.assign(out_data[1], req[1], mx.nd.array([len(keep)]))

    def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
        raise NotImplementedError("test-time forward only")


@mx.operator.register("dcnviz_pyramid_proposal")
class PyramidProposalProp(mx.operator.CustomOpProp):
    def __init__(self, height, width, pre="12000", post="2000", thresh="0.7"):
        super(PyramidProposalProp, self).__init__(need_top_grad=False)
        self.args = int(height), int(width), int(pre), int(post), float(thresh)

    def list_arguments(self):
        return (["rpn_cls_prob_stride%d" % s for s in FPN_RPN_STRIDES]
                + ["rpn_bbox_pred_stride%d" % s for s in FPN_RPN_STRIDES])

    def list_outputs(self):
        return ["output", "count"]

    def infer_shape(self, in_shape):
        return in_shape, [[self.args[3], 5], [1]], []

    def create_operator(self, ctx, shapes, dtypes):
        return PyramidProposal(*self.args)


def build(model, bn_train=False, input_hw=None):
    """The test network of ``model``: a Builder whose ``blobs`` maps official output names to symbols."""
    kind, classes, anchors, dcn, head, parts = MODELS[model][:6]
    b = Builder(bn_train)
    data = mx.sym.Variable("data")
    if kind == "fpn":
        stages = b.trunk(data, dcn, dilated=False, dcn_blocks=("res3b3", "res4b22", "res5a", "res5b", "res5c"))
        pyramid = b.fpn_feature(*stages)
        b.fpn_rpn(pyramid, anchors)
        b.fpn_head(pyramid, mx.sym.Variable("rois"), classes, head)
        if input_hw is not None:  # the proposals (not fed to the head, which pools the given RoIs)
            inputs = {"rpn_cls_prob_stride%d" % s: b.blobs["rpn_cls_prob_p%d" % l]
                      for l, s in zip(range(2, 7), FPN_RPN_STRIDES)}
            inputs.update({"rpn_bbox_pred_stride%d" % s: b.blobs["rpn_bbox_pred_p%d" % l]
                           for l, s in zip(range(2, 7), FPN_RPN_STRIDES)})
            proposals = mx.sym.Custom(op_type="dcnviz_pyramid_proposal", name="proposal", height=input_hw[0],
                                      width=input_hw[1], **inputs)
            b.blobs.update(proposal_rois=proposals[0], proposal_count=proposals[1])
        return b
    _, _, res4, res5 = b.trunk(data, dcn)
    if kind == "deeplab":
        b.deeplab_head(data, res5, classes)
        return b
    b.rpn(res4, anchors)
    rois = mx.sym.Variable("rois")
    if kind == "rfcn":
        b.rfcn_head(res5, rois, classes, head, parts)
    else:
        b.rcnn_head(res5, rois, classes, head)
    return b


# ----------------------------------------------------------------------------- input

def load_image(path, short, long_, stride=0):
    """lib/utils/image.py of the release: BGR read, resize by short side (long side capped), zero padding
    to multiples of ``stride`` (FPN's IMAGE_STRIDE), RGB minus means; im_info holds the padded size."""
    im = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if im is None:
        sys.exit("cannot read image %s" % path)
    scale = float(short) / min(im.shape[:2])
    if np.round(scale * max(im.shape[:2])) > long_:
        scale = float(long_) / max(im.shape[:2])
    im = cv2.resize(im, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    if stride:
        padded = np.zeros((int(np.ceil(im.shape[0] / float(stride)) * stride),
                           int(np.ceil(im.shape[1] / float(stride)) * stride), 3))
        padded[:im.shape[0], :im.shape[1]] = im
        im = padded
    data = np.zeros((1, 3) + im.shape[:2])
    for i in range(3):
        data[0, i] = im[:, :, 2 - i] - PIXEL_MEANS_BGR[2 - i]
    return data.astype(np.float32), np.array([[im.shape[0], im.shape[1], scale]], np.float32)


def make_rois(height, width, count, rng, pyramid=False):
    """Clipped boxes like proposals: the whole image, the corners and edges, tiny and degenerate boxes,
    .5 corners (rounded half away from zero), then random boxes. [0, x1, y1, x2, y2] in input pixels.
    With ``pyramid`` (FPN), squares on both sides of each level boundary of fpn_roi_pooling that fits
    (sqrt(w h) = 112, 224, 448 with the "+1" sizes) come after the first nine."""
    X, Y = width - 1.0, height - 1.0
    boxes = [[0, 0, X, Y], [0, 0, 40, 40], [X - 40, Y - 40, X, Y], [X - 70, 0, X, Y], [0, Y - 50, X, Y],
             [60, 60, 60, 60], [80.5, 50.5, 86.5, 57.5], [10.5, 20.5, X / 2 + 0.5, Y / 2 + 0.5], [X - 4, Y - 4, X, Y]]
    if pyramid:
        boxes += [[0, 0, side - 1, side - 1] for edge in (112, 224, 448) for side in (edge - 1, edge)
                  if side <= min(width, height)]
    boxes = boxes[:count]
    while len(boxes) < count:
        w, h = rng.uniform(8, 0.8 * width), rng.uniform(8, 0.8 * height)
        x1, y1 = rng.uniform(0, width - w), rng.uniform(0, height - h)
        boxes.append([x1, y1, x1 + w, y1 + h])
    b = np.clip(np.array(boxes, np.float64), 0, [X, Y, X, Y])
    return np.hstack([np.zeros((len(b), 1)), b]).astype(np.float32)


# ----------------------------------------------------------------------------- weights

def initial_weights(shapes, rng):
    """He-normal weights, small biases, BN gamma ~1 (halved on branch2c so 33 residual sums stay tame).
    ``rng``: a numpy Generator; its float32 normals take a fifth of the time of RandomState's float64 ones
    (~60 M weights per network)."""
    normal = lambda shape, std: rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
    arg = {}
    for name, shape in shapes.items():
        if name == "upsampling_weight":  # MXNet's bilinear initialiser, as the release's (lr_mult 0) layer
            f = np.ceil(shape[3] / 2.0)
            c = (2 * f - 1 - f % 2) / (2.0 * f)
            t = 1 - np.abs(np.arange(shape[3]) / f - c)
            arg[name] = np.broadcast_to(np.outer(t, t), shape)
        elif name.endswith("_gamma"):
            arg[name] = np.abs(1 + normal(shape, 0.1)) * (0.5 if "branch2c" in name else 1.0)
        elif name.endswith(("_beta", "_bias")):
            arg[name] = normal(shape, 0.1)
        else:
            # offset layers (trained from zero in the release) start 20x smaller than He-normal, so that after
            # rescaling about half of their output is the per-channel bias: offsets are a learned shift per
            # tap plus a data-dependent part, not all data-dependent noise
            small = 0.05 if name.startswith("offset_") or "_offset" in name else 1.0
            arg[name] = normal(shape, np.sqrt(2.0 / np.prod(shape[1:])) * small)
    return {k: np.ascontiguousarray(v, np.float32) for k, v in arg.items()}


def rescaled_layers(model):
    """Layers whose output is scaled to a target RMS: "layer" or "layer/blob it is measured on" -> target
    (offset convs in pixels, RoI offsets normalised (x trans_std 0.1 = 10% of the RoI), scores in logits,
    box deltas in training units)."""
    kind, _, _, dcn, head = MODELS[model][:5]
    blocks = ["res5%s" % s for s in "abc"] + (["res3b3", "res4b22"] if kind == "fpn" else [])
    targets = {b + "_branch2b_offset": 1.5 for b in blocks} if dcn else {}
    if kind == "deeplab":
        targets["score"] = 3.0
        return targets
    if kind == "fpn":
        # the shared RPN measured on P4; each level's offset fc on the offsets of the RoIs of its level
        targets.update({"rpn_cls_score/rpn_cls_score_p4": 2.0, "rpn_bbox_pred/rpn_bbox_pred_p4": 0.3,
                        "cls_score": 1.5, "bbox_pred": 1.0})
        if head == "deformable_roi_pool":
            targets.update({"offset_p%d/fpn_roi_pooling_offset" % l: 1.0 for l in range(2, 6)})
        return targets
    targets.update(rpn_cls_score=2.0, rpn_bbox_pred=0.3)
    if kind == "rfcn":
        # measured on the scores and deltas averaged over the bins (linear in the layer's weight and bias)
        targets.update({"rfcn_cls/cls_score_reshape": 1.5, "rfcn_bbox/bbox_pred_reshape": 1.0})
        if head == "dpsroi":
            targets.update(rfcn_cls_offset_t=1.0, rfcn_bbox_offset_t=1.0)
    else:
        targets.update(cls_score=1.5, bbox_pred=1.0)
        if head == "deformable_roi_pool":
            targets["offset"] = 1.0
    return targets


def internal(internals, blob):
    """The symbol of an internal blob: ``NAME_output`` for single-output layers, ``NAME`` as MXNet names the
    outputs of a multi-output operator (``fpn_roi_pooling_level``)."""
    names = internals.list_outputs()
    return internals[blob + "_output" if blob + "_output" in names else blob]


def calibrate(model, arg, feed):
    """Forwards of the calibration network (every BN normalising with its input's statistics): with
    deformable convs, one up to res5's offset convs scales them (they change res5's statistics); then one of
    the whole network records every BN's input statistics as its moving statistics and scales the head
    layers (all after the last BN)."""
    b = build(model, bn_train=True)
    internals = mx.sym.Group(list(b.blobs.values())).get_internals()
    targets = rescaled_layers(model)
    convs = {name: target for name, target in targets.items() if "_branch2b_offset" in name}
    heads = {name: target for name, target in targets.items() if name not in convs}
    outputs = lambda layers: [internal(internals, name.split("/")[-1]) for name in layers]
    # FPN: the level of each RoI, to measure each level's offset fc on its own RoIs
    levels = [internal(internals, "fpn_roi_pooling_level")] if "roi_level" in b.blobs else []
    moments = [m for _, m, _ in b.bn_stats] + [v for _, _, v in b.bn_stats]
    steps = ([(convs, mx.sym.Group(outputs(convs)))] if convs else []) + [
        (heads, mx.sym.Group(outputs(heads) + levels + moments))]
    for layers, group in steps:
        args = {k: mx.nd.array(v) for k, v in dict(arg, **feed).items() if k in group.list_arguments()}
        outs = [o.asnumpy() for o in group.bind(mx.cpu(), args=args, grad_req="null").forward(is_train=False)]
        for (name, target), out in zip(layers.items(), outs):
            layer = name.split("/")[0]
            if layer.startswith("offset_p"):
                out = out[outs[len(layers)] == int(layer[-1]) - 2]
                if not out.size:
                    continue  # no RoI on this level: nothing to measure
            factor = target / max(float(np.sqrt(np.mean(np.square(out, dtype=np.float64)))), 1e-12)
            for suffix in ("_weight", "_bias"):
                arg[layer + suffix] = (arg[layer + suffix] * factor).astype(np.float32)
    stats = outs[len(heads) + len(levels):]
    n = len(b.bn_stats)
    aux = {}
    for (name, _, _), mean, var in zip(b.bn_stats, stats[:n], stats[n:]):
        aux[name + "_moving_mean"] = np.ascontiguousarray(mean[0], np.float32)
        aux[name + "_moving_var"] = np.ascontiguousarray(var[0], np.float32)
    return arg, aux


def with_test_keys(model, arg):
    """What the release's do_checkpoint adds: box-regression weights with BBOX_STDS folded in (means 0).
    R-FCN's rfcn_bbox maps are k-major (std of output k repeated P*P times); Faster R-CNN's bbox_pred is
    class-specific, std of column c = BBOX_STDS[c % 4]."""
    kind, parts = MODELS[model][0], MODELS[model][5]
    layer = "rfcn_bbox" if kind == "rfcn" else "bbox_pred"
    n = arg[layer + "_bias"].shape[0]
    stds = np.repeat(np.tile(BBOX_STDS, 2), parts * parts) if kind == "rfcn" else np.tile(BBOX_STDS, n // 4)
    out = dict(arg)
    out[layer + "_weight_test"] = (arg[layer + "_weight"] * stds.reshape((-1,) + (1,) * (arg[layer + "_weight"].ndim - 1))
                                   ).astype(np.float32)
    out[layer + "_bias_test"] = (arg[layer + "_bias"] * stds).astype(np.float32)
    return out


# ----------------------------------------------------------------------------- .params files

def write_old_encoding(path, named, version):
    """The NDArray list with every array in the legacy (uint32 ndim and dims) or V1 (magic 0xF993FAC8,
    int64 dims) encoding; mx.nd.save writes V2 (official.md §8)."""
    with open(path, "wb") as f:
        f.write(struct.pack("<QQQ", 0x112, 0, len(named)))
        for _, a in named:
            if version == "legacy":
                f.write(struct.pack("<I%dI" % a.ndim, a.ndim, *a.shape))
            else:
                f.write(struct.pack("<II%dq" % a.ndim, 0xF993FAC8, a.ndim, *a.shape))
            f.write(struct.pack("<iii", 1, 0, 0) + np.ascontiguousarray(a, "<f4").tobytes())
        f.write(struct.pack("<Q", len(named)))
        for name, _ in named:
            f.write(struct.pack("<Q", len(name)) + name.encode())


def save_params(out_dir, model, arg, aux, old_encodings=True):
    saved = {"arg:" + k: mx.nd.array(v) for k, v in arg.items()}
    saved.update({"aux:" + k: mx.nd.array(v) for k, v in aux.items()})
    path = os.path.join(out_dir, "%s-0000.params" % model)
    mx.nd.save(path, saved)
    named = [(k, v.asnumpy()) for k, v in saved.items()]
    for version in ("legacy", "v1") if old_encodings else ():
        other = os.path.join(out_dir, "%s-0000.%s.params" % (model, version))
        write_old_encoding(other, named, version)
        back = mx.nd.load(other)  # MXNet itself must read the old encodings back bit for bit
        assert all(np.array_equal(back[k].asnumpy(), a) for k, a in named), other
    return path


# ----------------------------------------------------------------------------- one reference

def reference(model, out_dir, image, seed, short, rois_count=20, old_encodings=True):
    kind, long_ = MODELS[model][0], MODELS[model][7]
    short = short or MODELS[model][6]
    long_ = int(round(long_ * short / MODELS[model][6]))  # keep the release's aspect cap at a reduced size
    rng = np.random.default_rng(seed)
    data, im_info = load_image(image, short, long_, IMAGE_STRIDE.get(kind, 0))
    feed = {"data": data}
    if kind != "deeplab":
        feed["rois"] = make_rois(data.shape[2], data.shape[3], rois_count, np.random.RandomState(seed + 1),
                                 pyramid=kind == "fpn")
    b = build(model, input_hw=data.shape[2:])
    net = mx.sym.Group(list(b.blobs.values()))
    arg_shapes, _, _ = net.infer_shape(**{k: v.shape for k, v in feed.items()})
    shapes = {n: tuple(s) for n, s in zip(net.list_arguments(), arg_shapes) if n not in feed}
    arg, aux = calibrate(model, initial_weights(shapes, rng), feed)
    saved = arg if kind == "deeplab" else with_test_keys(model, arg)
    path = save_params(out_dir, model, saved, aux, old_encodings)

    # forward with the file's arrays, '_test' keys replacing the plain ones (load_param(process=True))
    loaded = mx.nd.load(path)
    args = {k[4:]: v for k, v in loaded.items() if k.startswith("arg:") and "_test" not in k}
    args.update({k[4:].replace("_test", ""): v for k, v in loaded.items() if "_test" in k})
    args.update({k: mx.nd.array(v) for k, v in feed.items()})
    ex = net.bind(mx.cpu(), args={k: args[k] for k in net.list_arguments()},
                  aux_states={k[4:]: v for k, v in loaded.items() if k.startswith("aux:")}, grad_req="null")
    start = time.time()
    outs = [o.asnumpy() for o in ex.forward(is_train=False)]
    seconds = time.time() - start
    blobs = dict(zip(b.blobs, outs))
    meta = dict(model=model, seed=seed, image=os.path.abspath(image), short=short, long=long_,
                stride=IMAGE_STRIDE.get(kind, 0),
                scale=float(im_info[0, 2]), mxnet=mx.__version__, forward_s=round(seconds, 3))
    np.savez(os.path.join(out_dir, "%s-ref.npz" % model), im_info=im_info, meta=np.array(json.dumps(meta)),
             **feed, **blobs)
    return meta


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--image", required=True, help="image file (read as the release reads it)")
    parser.add_argument("--models", default="all", help="comma-separated names, or 'all': %s" % ", ".join(MODELS))
    parser.add_argument("--seed", type=int, default=0, help="weights and random RoIs")
    parser.add_argument("--short", type=int, default=0,
                        help="short side of the network input (default: the release's test scale); the long-side "
                             "cap is scaled alike")
    parser.add_argument("--rois", type=int, default=20, help="RoIs fed to detector heads")
    parser.add_argument("--v2-only", action="store_true",
                        help="write only MODEL-0000.params, not the legacy and V1 copies (~0.5 GB less per model)")
    a = parser.parse_args(argv)
    models = list(MODELS) if a.models == "all" else a.models.split(",")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error("unknown model(s) %s; known: %s" % (", ".join(unknown), ", ".join(MODELS)))
    os.makedirs(a.out_dir, exist_ok=True)
    for model in models:
        start = time.time()
        meta = reference(model, a.out_dir, a.image, a.seed, a.short, a.rois, not a.v2_only)
        print("%-24s input %s scale %.4f, MXNet forward %.2f s, total %.1f s"
              % (model, "%dx%d" % tuple(np.load(os.path.join(a.out_dir, "%s-ref.npz" % model))["data"].shape[2:]),
                 meta["scale"], meta["forward_s"], time.time() - start), flush=True)


if __name__ == "__main__":
    main()
