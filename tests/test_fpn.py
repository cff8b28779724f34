"""FPN (dcnviz.models.fpn) at tiny width: the per-level RoI pooling, predict, pool_rois and the multi-scale
test. Parity with MXNet itself is in test_models_official.py."""
import numpy as np
import pytest
import torch
from torchvision.ops import roi_pool

import tiny_models
from dcnviz.models.fpn import POOL_STRIDES, roi_levels
from dcnviz.ops import deform_roi_pool

IMAGE = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
# "+1" sides 60, 150, 300, 600: levels P2, P3, P4, P5 (out of the 64x96 input is fine for the pooling)
ROIS = torch.tensor([[0, 0, 0, 299, 299], [0, 2, 3, 61, 62], [0, 10, 5, 609, 604], [0, 1, 1, 150, 150]],
                    dtype=torch.float32)


@pytest.mark.parametrize("deformable", [True, False])
def test_each_roi_is_pooled_on_its_level(deformable):
    """fpn_roi_pooling: row k of the pooled features is RoI k pooled on the map of its level at 1/stride,
    whatever the order of the RoIs (the official operator concatenates by level and takes them back)."""
    model = tiny_models.fpn(deformable)
    data, _ = model.preprocess(IMAGE)
    with torch.inference_mode():
        out = model.forward_official(data, ROIS)
    assert roi_levels(ROIS).tolist() == [2, 0, 3, 1] and out["roi_level"].tolist() == [2, 0, 3, 1]
    head = model.head
    for k, level in enumerate(out["roi_level"].tolist()):
        feat, r, scale = out[f"fpn_p{level + 2}"], ROIS[k:k + 1], 1.0 / POOL_STRIDES[level]
        with torch.inference_mode():
            if deformable:
                t = deform_roi_pool(feat, r, spatial_scale=scale, pooled_size=7, part_size=7, sample_per_part=4)
                off = getattr(head, f"offset_p{level + 2}")(t.flatten(1)).reshape(-1, 2, 7, 7)
                want = deform_roi_pool(feat, r, off, spatial_scale=scale, pooled_size=7, part_size=7,
                                       sample_per_part=4, trans_std=0.1)
                torch.testing.assert_close(out["offset_reshape"][k:k + 1], off, rtol=0, atol=0)
            else:
                want = roi_pool(feat, r, 7, scale)
        torch.testing.assert_close(out["fpn_roi_pooling"][k:k + 1], want, rtol=0, atol=0)


def test_predict_pool_rois_and_one_scale_multiscale_test_agree():
    """``pool_rois`` on the kept pyramid gives what ``predict(boxes=...)`` gives; the multi-scale test at
    one scale is the single-scale prediction."""
    model = tiny_models.fpn(True)
    dets = model.predict(IMAGE, score_thresh=0.0, keep_features=True)
    assert set(dets.captured) >= {"rois", "offset_reshape", "cls_prob", "roi_level", "features"}
    assert sorted(dets.captured["features"]) == ["fpn_p2", "fpn_p3", "fpn_p4", "fpn_p5"]
    assert dets.prep.input_size == (64, 96) and len(dets) > 0
    boxes = np.array([[3.0, 4.0, 40.0, 30.0], [0.0, 0.0, 69.0, 49.0]])
    direct = model.predict(IMAGE, boxes=boxes, score_thresh=0.0).captured
    rois = np.hstack([np.zeros((2, 1)), np.round(boxes * dets.prep.scale)]).astype(np.float32)
    pooled = model.pool_rois(dets.captured["features"], rois)
    for key in ("rois", "offset_reshape", "cls_prob", "roi_level"):
        torch.testing.assert_close(pooled[key], direct[key], rtol=0, atol=0)
    multi = model.predict(IMAGE, score_thresh=0.0, test_scales=(model.scales,))
    np.testing.assert_array_equal(multi.boxes, dets.boxes)
    np.testing.assert_array_equal(multi.scores, dets.scores)
    two = model.predict(IMAGE, score_thresh=0.0, test_scales=(model.scales, (32, 48)))
    assert len(two) >= len(dets) or len(two) == model.detection_cfg.max_per_image
