"""Every head at tiny width through forward_official and predict on the CPU (the same code as the
official models, which are too large for the always-on suite)."""
import cv2
import numpy as np
import pytest
import torch

from dcnviz.errors import UserError
from dcnviz.structures import Detections, Segmentation

import tiny_models


def image(h=50, w=80, seed=0):
    rng = np.random.RandomState(seed)
    im = cv2.GaussianBlur(rng.randint(0, 256, (h, w, 3)).astype(np.uint8), (0, 0), 2)
    cv2.rectangle(im, (10, 10), (40, 35), (20, 200, 240), -1)
    return im


@pytest.mark.parametrize("variant", sorted(tiny_models.RFCN_VARIANTS))
def test_rfcn_forward_and_predict(variant):
    model = tiny_models.rfcn(variant)
    dcn, parts, dpsroi = tiny_models.RFCN_VARIANTS[variant]
    c = len(tiny_models.DET_CLASSES)
    data = torch.randn(1, 3, 64, 96) * 50
    with torch.inference_mode():
        out = model.forward_official(data)
    r = out["rois"].shape[0]
    assert 0 < r <= 300 and out["rois"].shape == (r, 5)
    assert bool((out["rois"][:, 0] == 0).all())
    x1, y1, x2, y2 = out["rois"][:, 1:].T
    assert bool((x1 >= 0).all() and (y1 >= 0).all() and (x2 <= 95).all() and (y2 <= 63).all())
    assert out["cls_prob"].shape == (r, c) and out["bbox_pred"].shape == (r, 8)
    torch.testing.assert_close(out["cls_prob"].sum(1), torch.ones(r))
    assert out["rpn_cls_prob"].shape == (1, 2 * len(model.anchors), 4, 6)
    assert ("rfcn_cls_offset" in out) == dpsroi
    assert [k for k in out if k.endswith("_branch2b_offset")] == (["res5a_branch2b_offset", "res5b_branch2b_offset"]
                                                                   if dcn else [])

    det = model.predict(image())
    assert isinstance(det, Detections) and det.prep.image_size == (50, 80) and det.prep.scale == pytest.approx(1.2)
    assert len(det) > 0 and det.boxes.shape == (len(det), 4) and det.boxes.dtype == np.float32
    # official: clipped to the input (96x64) before dividing by the scale, so x <= 95 / 1.2 > 79
    assert det.boxes[:, [0, 2]].max() <= 95 / 1.2 + 1e-4 and det.boxes[:, [1, 3]].max() <= 63 / 1.2 + 1e-4
    assert det.boxes.min() >= 0 and set(det.labels.tolist()) <= {1, 2, 3}
    assert np.all(np.diff(det.scores) <= 0) and det.class_names == tiny_models.DET_CLASSES
    head = {"rois", "rfcn_cls_offset", "cls_prob"} if dpsroi else set()
    expected = {layer.offset for layer in model.deformable_layers} | head
    assert set(det.captured) == expected
    if dpsroi:
        assert det.captured["rfcn_cls_offset"].shape == (det.captured["rois"].shape[0], 2 * c, parts, parts)
    again = model.predict(image())  # deterministic
    np.testing.assert_array_equal(again.boxes, det.boxes)


def test_rfcn_given_boxes_and_no_rois():
    model = tiny_models.rfcn("deform_psroi")
    det = model.predict(image(), boxes=[[10, 10, 40, 35], [0, 0, 79, 49]])
    # original-pixel boxes are scaled by 1.2 and rounded, as the official demo feeds its GT boxes
    np.testing.assert_array_equal(det.captured["rois"].numpy(), np.float32([[0, 12, 12, 48, 42], [0, 0, 0, 95, 59]]))
    assert det.captured["rfcn_cls_offset"].shape == (2, 8, 3, 3)
    with pytest.raises(UserError, match=r"boxes must be .* shape \(K, 4\), got shape \(3,\)"):
        model.predict(image(), boxes=[1, 2, 3])
    with torch.inference_mode():
        out = model.forward_official(torch.randn(1, 3, 64, 96), torch.zeros(0, 5))
    assert out["cls_prob"].shape == (0, 4) and out["bbox_pred"].shape == (0, 8)


@pytest.mark.parametrize("deformable", [True, False])
def test_rcnn_forward_and_predict(deformable):
    """Faster R-CNN: 7x7 RoI features (deformable RoI pooling moved by the offset fc, or RoI max pooling),
    class-specific boxes: class j is decoded with deltas 4j..4j+3."""
    model = tiny_models.rcnn(deformable)
    c = len(tiny_models.DET_CLASSES)
    with torch.inference_mode():
        out = model.forward_official(torch.randn(1, 3, 64, 96) * 50)
    r = out["rois"].shape[0]
    assert r > 0 and out["cls_prob"].shape == (r, c) and out["bbox_pred"].shape == (r, 4 * c)
    torch.testing.assert_close(out["cls_prob"].sum(1), torch.ones(r))
    if deformable:
        assert out["offset_reshape"].shape == (r, 2, 7, 7) and out["deformable_roi_pool"].shape == (r, 8, 7, 7)
        assert out["offset_reshape"].abs().sum() > 0
    else:
        assert out["roi_pool"].shape == (r, 8, 7, 7) and "offset_reshape" not in out

    det = model.predict(image())
    assert len(det) > 0 and set(det.labels.tolist()) <= {1, 2, 3} and np.all(np.diff(det.scores) <= 0)
    head = {"rois", "offset_reshape", "cls_prob"} if deformable else set()
    assert set(det.captured) == {layer.offset for layer in model.deformable_layers} | head
    # the boxes of class j come from its own deltas: rerun the post-processing on the captured blobs
    with torch.inference_mode():
        data, prep = model.preprocess(image())
        out = model.forward_official(data)
    from dcnviz.models.postprocess import detect
    boxes, scores, labels = detect(out["rois"].numpy(), out["cls_prob"].numpy(), out["bbox_pred"].numpy(),
                                   prep.input_size, prep.scale, model.detection_cfg)
    np.testing.assert_array_equal(boxes, det.boxes)
    agnostic = detect(out["rois"].numpy(), out["cls_prob"].numpy(), out["bbox_pred"].numpy(), prep.input_size,
                      prep.scale, type(model.detection_cfg)(class_agnostic=True))[0]
    assert agnostic.shape != boxes.shape or not np.array_equal(agnostic, boxes)


def test_rcnn_deformable_roi_pooling_uses_the_offset_fc():
    """Zeroing the offset fc gives plain (unmoved) deformable RoI pooling bins, so the scores change."""
    model = tiny_models.rcnn(True)
    data, rois = torch.randn(1, 3, 64, 96) * 50, torch.tensor([[0, 4.0, 6.0, 60.0, 50.0], [0, 30, 2, 90, 40]])
    with torch.inference_mode():
        moved = model.forward_official(data, rois)
        model.head.offset.weight.zero_()
        model.head.offset.bias.zero_()
        still = model.forward_official(data, rois)
    torch.testing.assert_close(still["deformable_roi_pool"], still["offset_t"])
    assert not torch.allclose(moved["deformable_roi_pool"], moved["offset_t"])


@pytest.mark.parametrize("deformable", [True, False])
def test_deeplab_forward_and_predict(deformable):
    model = tiny_models.deeplab(deformable)
    with torch.inference_mode():
        out = model.forward_official(torch.randn(1, 3, 64, 96) * 50)
    assert out["score"].shape == (1, 3, 4, 6) and out["croped_score"].shape == (1, 3, 64, 96)
    torch.testing.assert_close(out["softmax_prob"].sum(1), torch.ones(1, 64, 96))
    seg = model.predict(image())
    assert isinstance(seg, Segmentation) and seg.labels.shape == (50, 80) and seg.labels.dtype == np.uint8
    assert seg.labels.max() < 3 and seg.class_names == tiny_models.SEG_CLASSES and len(seg.palette) == 3
    assert set(seg.captured) == ({"res5a_branch2b_offset", "res5b_branch2b_offset"} if deformable else set())
    for offset in seg.captured.values():
        assert offset.shape == (1, 18, 4, 6)
    # at scale 1 the labels are the argmax of croped_score
    im = image(64, 96)
    seg = model.predict(im)
    data, prep = model.preprocess(im)
    assert prep.scale == 1.0 and data.shape == (1, 3, 64, 96)
    with torch.inference_mode():
        scores = model.forward_official(data)["croped_score"]
    np.testing.assert_array_equal(seg.labels, scores[0].argmax(0).numpy())


def test_deformable_offsets_change_the_output():
    """With the offset convs zeroed, a DCN model equals the same weights run as a plain dilated conv."""
    dcn = tiny_models.deeplab(True)
    plain = tiny_models.deeplab(False)
    state = {k: v for k, v in dcn.state_dict().items() if "offset" not in k}
    plain.load_state_dict(state)
    data = torch.randn(1, 3, 64, 96) * 50
    with torch.inference_mode():
        moved = dcn.forward_official(data)["score"]
        for name in ("res5a", "res5b"):
            getattr(dcn.backbone, name).branch2b_offset.weight.zero_()
            getattr(dcn.backbone, name).branch2b_offset.bias.zero_()
        still = dcn.forward_official(data)["score"]
        ref = plain.forward_official(data)["score"]
    torch.testing.assert_close(still, ref, rtol=1e-5, atol=1e-5)
    assert (moved - ref).abs().max() > 1e-2


@pytest.mark.parametrize("rois", [5, 400])
@pytest.mark.parametrize("channels_last", [False, True])
def test_rfcn_offset_branches_equal_the_pooled_convs(rois, channels_last):
    """The head's rfcn_cls_offset / rfcn_bbox_offset, computed as per-bin GEMMs of the pooled features where
    that is cheaper (5 RoIs on a 20x30 map) and as the official 1x1 convs then pooling otherwise (400
    RoIs), equal the official order of operations to float32 rounding; the bias appears only in bins
    that have samples (RoI 1 lies off the map: all its bins are 0)."""
    from dcnviz.models.rfcn import RFCNHead
    from dcnviz.ops import deform_psroi_pool

    torch.manual_seed(0)
    head = RFCNHead(32, 4, parts=3, deformable=True, mid=24).eval()
    for conv in (head.rfcn_cls_offset_t, head.rfcn_bbox_offset_t):
        torch.nn.init.normal_(conv.bias)
    h = torch.randn(2, 24, 20, 30).relu()
    if channels_last:
        h = h.contiguous(memory_format=torch.channels_last)
    x1, y1 = torch.rand(rois) * 400 - 40, torch.rand(rois) * 260 - 30
    boxes = torch.stack([torch.randint(0, 2, (rois,)).float(), x1, y1, x1 + torch.rand(rois) * 200,
                         y1 + torch.rand(rois) * 150], 1)
    boxes[1, 1:] = torch.tensor([-300.0, -300.0, -200.0, -200.0])
    g = head.geometry
    common = dict(spatial_scale=g.spatial_scale, group_size=3, pooled_size=3, part_size=3, sample_per_part=4)
    with torch.inference_mode():
        got = head._offsets(h, boxes, common)
        want = [deform_psroi_pool(conv(h), boxes, None, output_dim=k, **common)
                for conv, k in ((head.rfcn_cls_offset_t, 8), (head.rfcn_bbox_offset_t, 2))]
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        assert a[1].abs().max() == 0 and b[0].abs().max() > 0


def test_rfcn_head_shortcuts_call_hooked_convs():
    """The head computes rfcn_cls/rfcn_bbox as GEMMs and the offset convs after pooling, without calling
    those modules; a module with a forward hook is called as itself, so hooks see (and may change) its
    output as with any nn.Conv2d."""
    from dcnviz.models.rfcn import RFCNHead

    torch.manual_seed(0)
    head = RFCNHead(32, 4, parts=3, deformable=True, mid=24).eval()
    feat = torch.randn(1, 32, 20, 30)
    rois = torch.tensor([[0.0, 10, 20, 200, 150], [0.0, 50, 40, 90, 100]])
    with torch.inference_mode():
        plain = {}
        head(feat, rois, plain)
        seen = []
        names = ("rfcn_cls", "rfcn_bbox", "rfcn_cls_offset_t", "rfcn_bbox_offset_t")
        handles = [getattr(head, name).register_forward_hook(
            lambda module, args, output, name=name: seen.append((name, output.shape[1])) or output * 0)
            for name in names]
        hooked = {}
        head(feat, rois, hooked)
        for handle in handles:
            handle.remove()
    assert sorted(seen) == sorted((name, getattr(head, name).out_channels) for name in names)
    # zeroed score maps and offsets: every class scores 0, and the offsets are 0
    assert plain["cls_score"].abs().max() > 0 and hooked["cls_score"].abs().max() == 0
    assert plain["rfcn_cls_offset"].abs().max() > 0 and hooked["rfcn_cls_offset"].abs().max() == 0
