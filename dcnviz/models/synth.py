"""dcnviz's own small Deformable R-FCN and DeepLab models, trained by ``dcnviz train`` on ``dcnviz synth``
scenes, each with a plain twin that differs only in the deformable parts.

They are the official architectures (official.md §1) at a small width and depth, built from the same
blocks (:mod:`dcnviz.models.resnet`, :mod:`dcnviz.models.rfcn`, :mod:`dcnviz.models.deeplab`):

- ResNet-v1 trunk, one bottleneck per stage in res2-res4 and the three of res5 (``res5a/b/c``), widths
  (32, 64, 128, 128) (outputs 128, 256, 512, 512), stem 32, output stride 16, res5 at dilation 2
  (res5 does not double its width as ResNet's does: it holds most of the compute and the weights, and
  at 128 the four models train on a CPU core in under an hour and fit the 60 MB weights budget);
- ``*_dcn_*``: the three res5 branch2b convs are deformable with one deformable group, each fed by a
  3x3 offset conv (dilation 1, 18 channels, with bias), as in the official DeepLab DCN and
  ``deform_conv`` models; the plain twins use the ordinary dilated conv;
- R-FCN: RPN (3x3 conv of 128 channels) on res4 with 15 anchors (ratios 0.5, 1, 2 x scales 1, 2, 4, 8,
  16, i.e. 16-256 px), ``conv_new_1`` of 256 channels and a 7x7 position-sensitive head, class-agnostic
  boxes; ``rfcn_dcn_synth`` pools with deformable PS RoI pooling and class-specific offsets (trans_std
  0.1, 4x4 samples per part), ``rfcn_synth`` with plain PS RoI pooling;
- DeepLab: ``fc6`` of 256 channels, ``score``, the fixed bilinear deconvolution and the (8, 8) crop.

They run at their own internal scale: (short 300, long 400) pixels, i.e. 0.8x the 500x375 synthetic
scenes (stride-16 maps of 19x25 cells). Test settings are the official COCO ones (RPN pre/post NMS
6000/300 at 0.7, NMS 0.3, score threshold 1e-3, 100 detections per image).

Weights are bundled as ``weights/<name>.safetensors`` (see ``weights/README.md`` for the
commands that reproduce them); :func:`dcnviz.models.load_model` finds them from any working directory.
"""
from __future__ import annotations

from dcnviz.data.classes import SYNTH_CLASSES, voc_palette
from dcnviz.models.preprocess import PIXEL_MEANS_BGR
from dcnviz.models.registry import ModelSpec, register_model

SYNTH_PALETTE = voc_palette(len(SYNTH_CLASSES))
SCALES = (300, 400)
UNITS = (1, 1, 1, 3)
WIDTHS = (32, 64, 128, 128)
STEM = 32
HEAD_MID = 256
RPN_MID = 128
PARTS = 7
ANCHOR_SCALES = (1, 2, 4, 8, 16)
ANCHOR_RATIOS = (0.5, 1, 2)
# one deformable group, offset conv 3x3 with dilation 1 (18 channels), as DeepLab DCN / deform_conv
DEFORMABLE = (1, 1)

# the official preprocessing (dcnviz.models.preprocess at SCALES) and the COCO test settings
PREPROCESSING = dict(read="BGR, OpenCV", channel_order="RGB", pixel_means_bgr=PIXEL_MEANS_BGR, pixel_std=None)
DET_TEST = dict(PREPROCESSING, rpn_pre_nms_top_n=6000, rpn_post_nms_top_n=300, rpn_nms_thresh=0.7, rpn_min_size=0,
                nms_thresh=0.3, score_thresh=1e-3, demo_score_thresh=0.7, max_per_image=100,
                anchor_scales=ANCHOR_SCALES, anchor_ratios=ANCHOR_RATIOS)
SEG_TEST = dict(PREPROCESSING, prediction="argmax of the class scores at the input size")


def _backbone(dcn: bool):
    from dcnviz.models.resnet import DeformableSpec, ResNetV1

    return ResNetV1(UNITS, WIDTHS, STEM, deformable=DeformableSpec(*DEFORMABLE) if dcn else None)


def _rfcn(dcn: bool):
    def factory():
        from dcnviz.models.postprocess import DetectionConfig
        from dcnviz.models.proposal import ProposalConfig
        from dcnviz.models.rfcn import RFCN

        t = DET_TEST
        return RFCN(_backbone(dcn), SYNTH_CLASSES, SCALES, ANCHOR_SCALES, ANCHOR_RATIOS, PARTS,
                    deformable_psroi=dcn, head_mid=HEAD_MID, rpn_mid=RPN_MID,
                    proposal=ProposalConfig(t["rpn_pre_nms_top_n"], t["rpn_post_nms_top_n"], t["rpn_nms_thresh"],
                                            t["rpn_min_size"]),
                    detection=DetectionConfig(t["score_thresh"], t["nms_thresh"], t["max_per_image"]))
    return factory


def _deeplab(dcn: bool):
    def factory():
        from dcnviz.models.deeplab import DeepLab

        return DeepLab(_backbone(dcn), SYNTH_CLASSES, SYNTH_PALETTE, SCALES, head_mid=HEAD_MID)
    return factory


def _register(name: str, factory, task: str, test: dict, description: str, twin: str = "") -> None:
    register_model(ModelSpec(name=name, factory=factory, task=task, dataset="synth", classes=SYNTH_CLASSES,
                             palette=SYNTH_PALETTE, scales=SCALES, weights=f"{name}.safetensors", bundled=True,
                             test=test, description=description, twin=twin))


_register("rfcn_dcn_synth", _rfcn(True), "detection", DET_TEST,
          "small Deformable R-FCN trained on dcnviz synth: deformable res5 (1 group), deformable 7x7 PS RoI pooling",
          twin="rfcn_synth")
_register("rfcn_synth", _rfcn(False), "detection", DET_TEST,
          "plain twin of rfcn_dcn_synth: dilated res5, 7x7 PS RoI pooling")
_register("deeplab_dcn_synth", _deeplab(True), "segmentation", SEG_TEST,
          "small Deformable DeepLab trained on dcnviz synth: deformable res5 (1 group)", twin="deeplab_synth")
_register("deeplab_synth", _deeplab(False), "segmentation", SEG_TEST,
          "plain twin of deeplab_dcn_synth: dilated res5")
