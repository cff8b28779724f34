"""The released networks of Deformable ConvNets v1 (official.md §6), registered by their release names.

Their weights are never bundled: download the MXNet files from the official release (see
:data:`DOWNLOAD`) and pass them to ``load_model(name, weights=FILE)`` or convert them once with
``dcnviz convert`` (see :mod:`dcnviz.models.loading` for the default location).
"""
from __future__ import annotations

from dcnviz.models.classes import (CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, COCO_CLASSES, COCO_PALETTE, VOC_CLASSES,
                                   VOC_PALETTE)
from dcnviz.models.preprocess import PIXEL_MEANS_BGR
from dcnviz.models.registry import ModelSpec, register_model

DOWNLOAD = ("the official Deformable ConvNets release (github.com/msracver/Deformable-ConvNets, README "
            "'Demo & Deformable Model': OneDrive https://1drv.ms/u/s!Am-5JzdW2XHzhqMSjehIcCgAhvEAHw or BaiduYun "
            "https://pan.baidu.com/s/1dFlPFED)")

# test settings recorded with each model (official.md §4.1, §4.3-4.5); the preprocessing itself is
# dcnviz.models.preprocess.preprocess at the spec's scales
_PREPROCESSING = dict(read="BGR, OpenCV", channel_order="RGB", pixel_means_bgr=PIXEL_MEANS_BGR, pixel_std=None)
_COCO_TEST = dict(_PREPROCESSING, rpn_pre_nms_top_n=6000, rpn_post_nms_top_n=300, rpn_nms_thresh=0.7, rpn_min_size=0,
                  nms_thresh=0.3, score_thresh=1e-3, demo_score_thresh=0.7, max_per_image=100,
                  anchor_scales=(4, 8, 16, 32), anchor_ratios=(0.5, 1, 2))
# The demo models' yaml test settings are not in the spec; dcnviz uses the COCO ones, VOC's 9 anchors and
# config.py's max_per_image default of 300.
_VOC_TEST = dict(_COCO_TEST, anchor_scales=(8, 16, 32), max_per_image=300)
_SEG_TEST = dict(_PREPROCESSING, prediction="argmax of the class scores at the input size")


def _rfcn(dcn, classes, parts, deformable_psroi, test):
    def factory():
        from dcnviz.models.postprocess import DetectionConfig
        from dcnviz.models.proposal import ProposalConfig
        from dcnviz.models.resnet import DeformableSpec, ResNetV1
        from dcnviz.models.rfcn import RFCN

        backbone = ResNetV1(deformable=DeformableSpec(*dcn) if dcn else None)
        return RFCN(backbone, classes, (600, 1000), test["anchor_scales"], test["anchor_ratios"], parts,
                    deformable_psroi,
                    proposal=ProposalConfig(test["rpn_pre_nms_top_n"], test["rpn_post_nms_top_n"],
                                            test["rpn_nms_thresh"], test["rpn_min_size"]),
                    detection=DetectionConfig(test["score_thresh"], test["nms_thresh"], test["max_per_image"]))
    return factory


def _rcnn(dcn, test):
    def factory():
        from dcnviz.models.postprocess import DetectionConfig
        from dcnviz.models.proposal import ProposalConfig
        from dcnviz.models.rcnn import FasterRCNN
        from dcnviz.models.resnet import DeformableSpec, ResNetV1

        backbone = ResNetV1(deformable=DeformableSpec(*dcn) if dcn else None)
        return FasterRCNN(backbone, COCO_CLASSES, (600, 1000), test["anchor_scales"], test["anchor_ratios"],
                          deformable_roi_pool=dcn is not None,
                          proposal=ProposalConfig(test["rpn_pre_nms_top_n"], test["rpn_post_nms_top_n"],
                                                  test["rpn_nms_thresh"], test["rpn_min_size"]),
                          detection=DetectionConfig(test["score_thresh"], test["nms_thresh"], test["max_per_image"],
                                                    class_agnostic=False))
    return factory


def _fpn(dcn, test):
    def factory():
        from dcnviz.models.fpn import FPN
        from dcnviz.models.postprocess import DetectionConfig
        from dcnviz.models.proposal import ProposalConfig
        from dcnviz.models.resnet import DeformableSpec, ResNetV1

        backbone = ResNetV1(deformable=DeformableSpec(4, 1) if dcn else None, res5_dilation=1,
                            deformable_blocks=("res3b3", "res4b22", "res5a", "res5b", "res5c"))
        return FPN(backbone, COCO_CLASSES, (800, 1280), test["anchor_scales"], test["anchor_ratios"],
                   deformable_roi_pool=dcn,
                   proposal=ProposalConfig(test["rpn_pre_nms_top_n"], test["rpn_post_nms_top_n"],
                                           test["rpn_nms_thresh"], test["rpn_min_size"]),
                   detection=DetectionConfig(test["score_thresh"], test["nms_thresh"], test["max_per_image"],
                                             class_agnostic=False, soft_nms=test["soft_nms_thresh"]))
    return factory


def _deeplab(dcn):
    def factory():
        from dcnviz.models.deeplab import DeepLab
        from dcnviz.models.resnet import DeformableSpec, ResNetV1

        backbone = ResNetV1(deformable=DeformableSpec(*dcn) if dcn else None)
        return DeepLab(backbone, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, (1024, 2048))
    return factory


def _register(name, factory, task, dataset, classes, palette, scales, test, description, twin=""):
    register_model(ModelSpec(name=name, factory=factory, task=task, dataset=dataset, classes=classes,
                             palette=palette, scales=scales, weights=f"{name}-0000.params", bundled=False,
                             test=test, description=description, twin=twin))


_register("rfcn_dcn_coco", _rfcn((4, 2), COCO_CLASSES, 7, True, _COCO_TEST), "detection", "coco", COCO_CLASSES,
          COCO_PALETTE, (600, 1000), _COCO_TEST,
          "Deformable R-FCN, ResNet-v1-101: deformable res5 (4 groups) and deformable 7x7 PS RoI pooling",
          twin="rfcn_coco")
_register("rfcn_coco", _rfcn(None, COCO_CLASSES, 7, False, _COCO_TEST), "detection", "coco", COCO_CLASSES,
          COCO_PALETTE, (600, 1000), _COCO_TEST, "R-FCN, ResNet-v1-101, dilated res5, 7x7 PS RoI pooling")
_register("deform_conv", _rfcn((1, 1), VOC_CLASSES, 7, False, _VOC_TEST), "detection", "voc", VOC_CLASSES,
          VOC_PALETTE, (600, 1000), _VOC_TEST,
          "R-FCN demo model with deformable res5 convs (1 group), plain 7x7 PS RoI pooling")
_register("deform_psroi", _rfcn(None, VOC_CLASSES, 3, True, _VOC_TEST), "detection", "voc", VOC_CLASSES,
          VOC_PALETTE, (600, 1000), _VOC_TEST,
          "R-FCN demo model with dilated res5 and deformable 3x3 PS RoI pooling")
# experiments/faster_rcnn/cfgs/resnet_v1_101_coco_trainval_rcnn{,_dcn}_end2end.yaml: the COCO test settings
# above (Python proposal op, 6000/300/0.7, NMS 0.3, 100 per image), class-specific box regression
_register("rcnn_dcn_coco", _rcnn((4, 2), _COCO_TEST), "detection", "coco", COCO_CLASSES, COCO_PALETTE, (600, 1000),
          _COCO_TEST, "Deformable Faster R-CNN, ResNet-v1-101: deformable res5 (4 groups) and deformable 7x7 RoI "
          "pooling, 2fc head", twin="rcnn_coco")
_register("rcnn_coco", _rcnn(None, _COCO_TEST), "detection", "coco", COCO_CLASSES, COCO_PALETTE, (600, 1000),
          _COCO_TEST, "Faster R-CNN, ResNet-v1-101, dilated res5, 7x7 RoI max pooling, 2fc head")
# experiments/fpn/cfgs/resnet_v1_101_coco_trainval_fpn{,_dcn}_end2end_ohem.yaml (TEST): images padded to
# multiples of 32, RPN on P2-P6 with 3 anchors (scale 8), 12000/2000/0.7, soft-NMS 0.6 (NMS 0.3 unused),
# 100 per image; TEST_SCALES are six scales, dcnviz's default is one (see dcnviz.models.fpn)
_FPN_TEST = dict(_COCO_TEST, rpn_pre_nms_top_n=12000, rpn_post_nms_top_n=2000, anchor_scales=(8,), image_stride=32,
                 rpn_feat_stride=(4, 8, 16, 32, 64), soft_nms_thresh=0.6,
                 test_scales=((480, 800), (576, 900), (688, 1100), (800, 1200), (1200, 1600), (1400, 2000)))
_register("fpn_dcn_coco", _fpn(True, _FPN_TEST), "detection", "coco", COCO_CLASSES, COCO_PALETTE, (800, 1280),
          _FPN_TEST, "Deformable FPN (+OHEM), ResNet-v1-101: deformable res3b3, res4b22, res5 (4 groups) and "
          "deformable 7x7 RoI pooling on P2-P5, 2fc head", twin="fpn_coco")
_register("fpn_coco", _fpn(False, _FPN_TEST), "detection", "coco", COCO_CLASSES, COCO_PALETTE, (800, 1280),
          _FPN_TEST, "FPN (+OHEM), ResNet-v1-101, P2-P6, 7x7 RoI max pooling on P2-P5, 2fc head")
_register("deeplab_dcn_cityscapes", _deeplab((1, 1)), "segmentation", "cityscapes", CITYSCAPES_CLASSES,
          CITYSCAPES_PALETTE, (1024, 2048), _SEG_TEST, "Deformable DeepLab, ResNet-v1-101, deformable res5 (1 group)",
          twin="deeplab_cityscapes")
_register("deeplab_cityscapes", _deeplab(None), "segmentation", "cityscapes", CITYSCAPES_CLASSES,
          CITYSCAPES_PALETTE, (1024, 2048), _SEG_TEST, "DeepLab, ResNet-v1-101, dilated res5")
