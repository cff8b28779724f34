"""Anchors, box decoding, NMS, the proposal step and detection post-processing on hand-computed cases."""
import numpy as np
import pytest
import torch

from dcnviz.models import boxes as B
from dcnviz.models.anchors import generate_anchors, shifted_anchors
from dcnviz.models.postprocess import DetectionConfig, detect
from dcnviz.models.proposal import ProposalConfig, propose

# official.md §4.2, rows = ratios 0.5, 1, 2; columns = scales 4, 8, 16, 32
COCO_TABLE = [
    [-38, -16, 53, 31], [-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
    [-24, -24, 39, 39], [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
    [-14, -36, 29, 51], [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359],
]


def test_coco_anchors_equal_the_table():
    anchors = generate_anchors(16, (0.5, 1, 2), (4, 8, 16, 32))
    assert anchors.dtype == np.float64
    np.testing.assert_array_equal(anchors, np.array(COCO_TABLE, dtype=np.float64))


def test_voc_anchors_are_the_table_without_scale_4():
    voc = [row for i, row in enumerate(COCO_TABLE) if i % 4 != 0]
    np.testing.assert_array_equal(generate_anchors(16, (0.5, 1, 2), (8, 16, 32)), np.array(voc, dtype=np.float64))


def test_shifted_anchors_order_is_y_x_a():
    base = np.array([[0, 0, 15, 15], [-8, -8, 23, 23]], dtype=np.float64)
    out = shifted_anchors(base, height=2, width=3, stride=16)
    assert out.shape == (2 * 3 * 2, 4)
    # cell (y=1, x=2), anchor 1 -> index (1*3 + 2)*2 + 1 = 11, shifted by (32, 16)
    np.testing.assert_array_equal(out[11], [24, 8, 55, 39])
    np.testing.assert_array_equal(out[1], base[1])
    np.testing.assert_array_equal(out[2], [16, 0, 31, 15])


def test_decode_by_hand():
    box = np.array([[0.0, 0.0, 15.0, 15.0]])  # w = h = 16, centre 7.5
    np.testing.assert_array_equal(B.decode(box, np.zeros((1, 4))), box)
    # dx = 0.5 -> centre 7.5 + 8 = 15.5; dw = log 2 -> width 32: x from 15.5 - 15.5 to 15.5 + 15.5
    # dy = -0.25 -> centre 3.5; dh = 0 -> y from -4 to 11
    out = B.decode(box, np.array([[0.5, -0.25, np.log(2.0), 0.0]]))
    np.testing.assert_allclose(out, [[0.0, -4.0, 31.0, 11.0]], rtol=0, atol=1e-12)
    # two box sets per row (class-agnostic R-FCN layout)
    two = B.decode(box, np.array([[0, 0, 0, 0, 0.5, -0.25, np.log(2.0), 0.0]]))
    np.testing.assert_allclose(two, [[0, 0, 15, 15, 0, -4, 31, 11]], atol=1e-12)


def test_clip_by_hand():
    b = np.array([[-5.0, 3.0, 120.0, 70.0]])
    np.testing.assert_array_equal(B.clip(b, 60, 100), [[0, 3, 99, 59]])


def test_nms_by_hand():
    boxes = np.array([
        [0, 0, 9, 9],      # area 100
        [0, 0, 9, 4],      # inside box 0: inter 50, union 100 -> IoU 0.5
        [0, 5, 9, 9],      # inter with box 0: 50 -> IoU 0.5; with box 1: 0
        [20, 20, 29, 29],  # disjoint
    ], dtype=np.float64)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    np.testing.assert_array_equal(B.nms(boxes, scores, 0.5), [0, 1, 2, 3])  # IoU 0.5 is kept (<= thresh)
    np.testing.assert_array_equal(B.nms(boxes, scores, 0.49), [0, 3])
    np.testing.assert_array_equal(B.nms(boxes, scores, 0.49, max_keep=1), [0])
    # ties are visited in index order
    np.testing.assert_array_equal(B.nms(boxes[[1, 2]], np.array([0.5, 0.5]), 0.3), [0, 1])
    # "+1" areas: [0,0,0,0] and [0,0,1,0] have areas 1 and 2, intersection 1 -> IoU 0.5
    np.testing.assert_array_equal(B.nms(np.array([[0, 0, 0, 0], [0, 0, 1, 0.0]]), np.array([1.0, 0.9]), 0.4), [0])
    # IoU 50/150: float32 boxes compare float32(50/150) = 0.33333334 with float32(1/3), the same number
    # (numpy rounds the Python float to the array's dtype), so the box is kept; 0.3333 drops it
    third = np.array([[0, 0, 9, 9], [0, 5, 9, 14]], np.float32)
    for dtype in (np.float32, np.float64):
        np.testing.assert_array_equal(B.nms(third.astype(dtype), np.array([0.9, 0.8]), 1.0 / 3.0), [0, 1])
        np.testing.assert_array_equal(B.nms(third.astype(dtype), np.array([0.9, 0.8]), 0.3333), [0])


def py_nms(boxes, scores, thresh, max_keep=None):
    """The official ``py_nms`` (lib/nms/nms.py) as numpy runs it, with the stable tie order of B.nms: the
    reference the compiled loop must match exactly."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    with np.errstate(invalid="ignore"):  # inf - inf and 0/0 in the NaN and infinite cases
        areas = (x2 - x1 + 1) * (y2 - y1 + 1)
        order = np.argsort(-scores, kind="stable")
        keep = []
        while order.size > 0 and (max_keep is None or len(keep) < max_keep):
            i = order[0]
            keep.append(i)
            rest = order[1:]
            w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
            h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
            inter = w * h
            order = rest[inter / (areas[i] + areas[rest] - inter) <= thresh]
    return np.asarray(keep, dtype=np.int64)


def random_boxes(rng, n, dtype, size=600.0):
    """Proposal-like boxes: clipped, many overlapping, with duplicates, degenerate and zero-area ("+1"
    width 0) boxes, and a few NaN and infinite coordinates."""
    x1, y1 = rng.uniform(0, size, n), rng.uniform(0, size, n)
    boxes = np.stack([x1, y1, x1 + rng.exponential(60, n), y1 + rng.exponential(60, n)], 1)
    boxes = np.clip(boxes, 0, size - 1)
    boxes[rng.random(n) < 0.05] = boxes[0]  # duplicates
    flat = rng.random(n) < 0.03
    boxes[flat, 2] = boxes[flat, 0] - 1  # zero "+1" width: area 0, IoU 0/0 = NaN with another such box
    boxes[rng.random(n) < 0.02, rng.integers(0, 4)] = np.nan
    boxes[rng.random(n) < 0.01, rng.integers(0, 4)] = np.inf
    return boxes.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(4))
def test_nms_keeps_what_py_nms_keeps(dtype, seed):
    """Bit-for-bit the numpy loop's choices, on proposal-sized inputs with ties, duplicates, zero-area
    boxes, NaN and infinity; thresholds that are not exact in float32 round as numpy rounds them."""
    rng = np.random.default_rng(seed)
    n = 6000 if seed == 0 else int(rng.integers(1, 800))
    boxes = random_boxes(rng, n, dtype)
    scores = np.round(rng.random(n), 2)  # many ties
    for thresh in (0.7, 0.3, 1.0 / 3.0):
        for max_keep in (None, 300, 1):
            np.testing.assert_array_equal(B.nms(boxes, scores, thresh, max_keep), py_nms(boxes, scores, thresh, max_keep))


def test_nms_op_refuses_indices_outside_the_boxes():
    boxes = torch.zeros(3, 4)
    for bad in ([3], [-1]):
        with pytest.raises(RuntimeError, match="not a box index"):
            torch.ops.dcnviz._nms(boxes, torch.tensor(bad), 0.7, -1)
    with pytest.raises(RuntimeError, match=r"shape \(N, 4\)"):
        torch.ops.dcnviz._nms(torch.zeros(3, 5), torch.arange(3), 0.7, -1)


def test_nms_of_no_box_and_integer_boxes():
    assert B.nms(np.zeros((0, 4), np.float32), np.zeros(0), 0.7).tolist() == []
    boxes = np.array([[0, 0, 9, 9], [0, 0, 9, 4], [20, 20, 29, 29]])  # int64: computed as float64
    np.testing.assert_array_equal(B.nms(boxes, np.array([0.9, 0.8, 0.7]), 0.49), [0, 2])


def _rpn_maps(num_anchors, h, w, fg, deltas):
    """rpn_cls_prob (1, 2A, h, w) with foreground ``fg`` (A, h, w) and rpn_bbox_pred from ``deltas`` (A, 4, h, w)."""
    prob = np.concatenate([1 - fg, fg])[None].astype(np.float32)
    return prob, deltas.reshape(1, 4 * num_anchors, h, w).astype(np.float32)


def test_proposal_by_hand():
    """One 16x16 anchor, a 3x3 feature map for a 40x40 input: the grid is int(40/16) = 2, so row 2 and
    column 2 are ignored even with the best scores; zero deltas keep the anchors, NMS 0.7 keeps
    everything (shifted anchors do not overlap), then one delta merges two boxes."""
    anchors = np.array([[0, 0, 15, 15]], dtype=np.float64)
    fg = np.array([[[0.1, 0.2, 0.99], [0.3, 0.4, 0.99], [0.99, 0.99, 0.99]]])
    deltas = np.zeros((1, 4, 3, 3))
    prob, pred = _rpn_maps(1, 3, 3, fg, deltas)
    rois, scores = propose(prob, pred, anchors, (40, 40), cfg=ProposalConfig(6000, 300, 0.7, 0))
    np.testing.assert_array_equal(scores, np.float32([0.4, 0.3, 0.2, 0.1]))
    np.testing.assert_array_equal(rois, np.float32([[0, 16, 16, 31, 31], [0, 0, 16, 15, 31],
                                                    [0, 16, 0, 31, 15], [0, 0, 0, 15, 15]]))
    # move cell (1, 0) onto cell (1, 1): dx = 16 / 16 = 1 -> identical box, suppressed by the better one
    deltas[0, 0, 1, 0] = 1.0
    prob, pred = _rpn_maps(1, 3, 3, fg, deltas)
    rois, scores = propose(prob, pred, anchors, (40, 40), cfg=ProposalConfig(6000, 300, 0.7, 0))
    np.testing.assert_array_equal(scores, np.float32([0.4, 0.2, 0.1]))
    # pre-NMS top 2 and post-NMS top 1
    rois, scores = propose(prob, pred, anchors, (40, 40), cfg=ProposalConfig(2, 1, 0.7, 0))
    np.testing.assert_array_equal(rois, np.float32([[0, 16, 16, 31, 31]]))


def test_proposal_clips_and_filters_by_min_size():
    anchors = np.array([[0, 0, 15, 15]], dtype=np.float64)
    fg = np.array([[[0.9, 0.8]]])
    deltas = np.zeros((1, 4, 1, 2))
    deltas[0, 2, 0, 1] = np.log(4.0)  # cell (0, 1): width 64 around centre 23.5 -> x from -8 to 55 -> clipped
    prob, pred = _rpn_maps(1, 1, 2, fg, deltas)
    rois, _ = propose(prob, pred, anchors, (16, 40), cfg=ProposalConfig(6000, 300, 1.0, 0))
    np.testing.assert_array_equal(rois, np.float32([[0, 0, 0, 15, 15], [0, 0, 0, 39, 15]]))
    # min size 17 (x scale 1): the 16x16 box goes, the 40x16 box is 16 high and goes too
    rois, _ = propose(prob, pred, anchors, (16, 40), cfg=ProposalConfig(6000, 300, 1.0, 17))
    assert rois.shape == (0, 5)


def test_proposal_anchor_channel_layout():
    """A = 2: foreground of anchor a is channel A + a; its deltas are channels 4a..4a+3."""
    anchors = np.array([[0, 0, 15, 15], [0, 0, 31, 31]], dtype=np.float64)
    fg = np.array([[[0.2]], [[0.7]]])
    deltas = np.zeros((2, 4, 1, 1))
    deltas[1, 1] = 0.5  # anchor 1: dy = 0.5 of 32 -> moved down by 16
    prob, pred = _rpn_maps(2, 1, 1, fg, deltas)
    rois, scores = propose(prob, pred, anchors, (64, 64), cfg=ProposalConfig(6000, 300, 0.7, 0))
    np.testing.assert_array_equal(scores, np.float32([0.7, 0.2]))
    np.testing.assert_array_equal(rois[:, 1:], np.float32([[0, 16, 31, 47], [0, 0, 15, 15]]))


def test_detect_by_hand():
    """3 RoIs, classes (bg, a, b), scale 2: deltas decode, clip to the input, divide by the scale,
    per-class NMS 0.3 with "+1" areas in original pixels, score threshold."""
    rois = np.float32([[0, 0, 0, 19, 19], [0, 2, 0, 21, 19], [0, 40, 40, 59, 59]])
    cls_prob = np.float32([[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.5, 0.0005, 0.4995]])
    bbox_pred = np.zeros((3, 8), np.float32)
    bbox_pred[2, 4] = 0.5  # foreground dx: RoI 2 moves right by 10 -> x 50..69, clipped to 63 (W = 64)
    boxes, scores, labels = detect(rois, cls_prob, bbox_pred, (64, 64), 2.0, DetectionConfig(1e-3, 0.3, 100))
    # class a: RoIs 0, 1 (IoU in original pixels: [0,0,9.5,9.5] vs [1,0,10.5,9.5] -> inter 9.5*10.5,
    # union 2*10.5^2 - 9.5*10.5 -> 0.826 > 0.3, RoI 1 goes); RoI 2 is below the threshold for a
    # class b: RoI 2 (0.4995) and RoIs 0, 1 (0.1 each, RoI 1 suppressed by RoI 0)
    np.testing.assert_allclose(scores, [0.8, 0.4995, 0.1])
    np.testing.assert_array_equal(labels, [1, 2, 2])
    np.testing.assert_allclose(boxes, [[0, 0, 9.5, 9.5], [25, 20, 31.5, 29.5], [0, 0, 9.5, 9.5]])
    assert boxes.dtype == np.float32 and labels.dtype == np.int64


def test_detect_max_per_image_keeps_ties():
    rois = np.float32([[0, 0, 0, 9, 9], [0, 20, 0, 29, 9], [0, 40, 0, 49, 9]])
    cls_prob = np.float32([[0.1, 0.9], [0.5, 0.5], [0.5, 0.5]])
    _, scores, _ = detect(rois, cls_prob, np.zeros((3, 8), np.float32), (10, 50), 1.0, DetectionConfig(0.1, 0.3, 2))
    np.testing.assert_allclose(scores, [0.9, 0.5, 0.5])  # official: keep scores >= the 2nd best
    _, scores, _ = detect(rois, cls_prob, np.zeros((3, 8), np.float32), (10, 50), 1.0, DetectionConfig(0.1, 0.3, 1))
    np.testing.assert_allclose(scores, [0.9])


def test_detect_class_specific_layout():
    rois = np.float32([[0, 0, 0, 9, 9]])
    cls_prob = np.float32([[0.1, 0.2, 0.7]])
    deltas = np.zeros((1, 12), np.float32)
    deltas[0, 8] = 1.0  # class 2's dx: moved right by 10
    boxes, _, labels = detect(rois, cls_prob, deltas, (100, 100), 1.0,
                              DetectionConfig(0.5, 0.3, 100, class_agnostic=False))
    np.testing.assert_array_equal(labels, [2])
    np.testing.assert_allclose(boxes, [[10, 0, 19, 9]])


@pytest.mark.parametrize("thresh", [0.0, 0.99])
def test_detect_empty(thresh):
    boxes, scores, labels = detect(np.zeros((0, 5), np.float32), np.zeros((0, 3), np.float32),
                                   np.zeros((0, 8), np.float32), (10, 10), 1.0, DetectionConfig(thresh))
    assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.shape == (0,)


def test_pyramid_proposals_rank_every_level_together():
    """Two levels (strides 4 and 8), one anchor each: the candidates of both are ranked together (the
    best of level 2 comes first), each on its own grid int(H / stride), NMS across levels."""
    from dcnviz.models.proposal import propose_pyramid

    a4, a8 = np.array([[0, 0, 3, 3]], np.float64), np.array([[0, 0, 7, 7]], np.float64)
    p4, d4 = _rpn_maps(1, 2, 2, np.array([[[0.5, 0.1], [0.2, 0.3]]]), np.zeros((1, 4, 2, 2)))
    p8, d8 = _rpn_maps(1, 1, 1, np.array([[[0.9]]]), np.zeros((1, 4, 1, 1)))
    rois, scores = propose_pyramid([(p4, d4, a4, 4), (p8, d8, a8, 8)], (8, 8), cfg=ProposalConfig(10, 10, 0.7, 0))
    np.testing.assert_array_equal(scores, np.float32([0.9, 0.5, 0.3, 0.2, 0.1]))
    np.testing.assert_array_equal(rois[:2], np.float32([[0, 0, 0, 7, 7], [0, 0, 0, 3, 3]]))
    # NMS 0.2 across levels: every 4x4 box of level 2 lies in the 8x8 box of level 3 (IoU 16/64 = 0.25)
    rois, scores = propose_pyramid([(p4, d4, a4, 4), (p8, d8, a8, 8)], (8, 8), cfg=ProposalConfig(10, 10, 0.2, 0))
    np.testing.assert_array_equal(scores, np.float32([0.9]))
    # pre-NMS top 2 over both levels
    _, scores = propose_pyramid([(p4, d4, a4, 4), (p8, d8, a8, 8)], (8, 8), cfg=ProposalConfig(2, 10, 0.7, 0))
    np.testing.assert_array_equal(scores, np.float32([0.9, 0.5]))


def test_soft_nms_by_hand():
    """Gaussian soft-NMS (official ``soft_nms``): keep the best, rescore the rest by exp(-IoU^2 / sigma),
    re-rank; nothing is dropped, ``max_keep`` caps the count."""
    boxes = np.array([[0, 0, 9, 9], [0, 0, 9, 4], [20, 20, 29, 29]], np.float64)  # IoU(0, 1) = 0.5
    scores = np.array([0.9, 0.8, 0.7])
    keep, kept = B.soft_nms(boxes, scores, 0.6)
    # box 1 drops to 0.8 * exp(-0.25 / 0.6) = 0.527 < 0.7: the disjoint box comes second
    np.testing.assert_array_equal(keep, [0, 2, 1])
    np.testing.assert_allclose(kept, [0.9, 0.7, 0.8 * np.exp(-0.25 / 0.6)], rtol=1e-12)
    keep, _ = B.soft_nms(boxes, scores, 0.6, max_keep=2)
    np.testing.assert_array_equal(keep, [0, 2])


def test_detect_with_soft_nms_keeps_rescored_overlaps():
    """cfg.soft_nms replaces the per-class NMS: an overlapping box is kept with a lower score."""
    rois = np.array([[0, 0, 0, 9, 9], [0, 0, 0, 9, 4]], np.float32)
    prob = np.array([[0.1, 0.9], [0.2, 0.8]], np.float32)
    deltas = np.zeros((2, 8), np.float32)
    hard = detect(rois, prob, deltas, (50, 50), 1.0, DetectionConfig(nms_thresh=0.3, class_agnostic=False))
    soft = detect(rois, prob, deltas, (50, 50), 1.0, DetectionConfig(class_agnostic=False, soft_nms=0.6))
    assert len(hard[1]) == 1 and len(soft[1]) == 2
    np.testing.assert_allclose(soft[1], [0.9, 0.8 * np.exp(-0.25 / 0.6)], rtol=1e-6)
