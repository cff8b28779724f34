"""VOC AP and mIoU against cases computed by hand (the arithmetic is in the comments)."""
import math

import numpy as np
import pytest

from dcnviz.data.voc import Annotation, VOCObject
from dcnviz.eval.metrics import (AREA_AP, ELEVEN_POINT_AP, ConfusionMatrix, box_iou_voc, voc_ap,
                                 voc_detection_ap)
from dcnviz.structures import Detections, Prep

CLASSES = ("__background__", "a", "b", "c")


def test_iou_uses_inclusive_pixels():
    box = [0, 0, 9, 9]  # 10 x 10 pixels
    iou = box_iou_voc(box, [[5, 0, 14, 9], [10, 10, 19, 19], [9, 9, 18, 18], [0, 0, 9, 9]])
    # half overlap: 50 / (100 + 100 - 50); disjoint; one shared corner pixel: 1 / 199; identical
    np.testing.assert_allclose(iou, [1 / 3, 0, 1 / 199, 1])


def test_ap_definitions():
    rec, prec = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    # area: envelope 1 up to recall 0.5, then 2/3 up to 1 -> 0.5 * 1 + 0.5 * 2/3
    assert voc_ap(rec, prec) == pytest.approx(0.5 + 1 / 3)
    # 11-point: t = 0 .. 0.5 (6 points) max precision 1; t = 0.6 .. 1.0 (5 points) only recall 1 -> 2/3
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert voc_ap(np.array([]), np.array([])) == 0.0
    assert voc_ap(np.array([]), np.array([]), use_07_metric=True) == 0.0


def _ann(image_id, objects):
    return Annotation(image_id, 100, 100, 3, tuple(VOCObject(n, tuple(map(float, b)), difficult=d) for n, b, d in objects))


ANNOTATIONS = {
    "img1": _ann("img1", [("a", [0, 0, 9, 9], False), ("a", [20, 20, 29, 29], True)]),
    "img2": _ann("img2", [("a", [0, 0, 19, 19], False), ("b", [50, 50, 59, 59], False)]),
    "img3": _ann("img3", []),
}


def _dets(rows):
    boxes = np.array([r[1] for r in rows], np.float32).reshape(-1, 4)
    return boxes, np.array([r[0] for r in rows], np.float32), np.array([r[2] for r in rows], np.int64)


DETECTIONS = {
    "img1": _dets([(0.9, [0, 0, 9, 9], 1),      # TP (IoU 1 with the first a)
                   (0.8, [0, 0, 9, 9], 1),      # duplicate of a taken box: FP
                   (0.7, [20, 20, 29, 29], 1)]),  # matches the difficult a: neither TP nor FP
    "img2": _dets([(0.6, [0, 0, 19, 9], 1),     # IoU 200/400 = 0.5, not > 0.5: FP
                   (0.5, [0, 0, 19, 11], 1)]),  # IoU 240/400 = 0.6: TP at 0.5, FP at 0.7
}


def test_detection_ap_hand_computed():
    result = voc_detection_ap(DETECTIONS, ANNOTATIONS, CLASSES, iou_thresholds=(0.5, 0.7))
    assert result.metric == AREA_AP
    assert list(result.npos) == [2, 1, 0]  # the difficult a is not counted
    # IoU 0.5: TP FP (ignored) FP TP -> recall .5 .5 .5 .5 1, precision 1 .5 .5 1/3 .5
    #          area AP = 0.5 * 1 + 0.5 * 0.5 = 0.75
    # IoU 0.7: TP FP (ignored) FP FP -> recall stays 0.5 -> AP = 0.5 * 1 = 0.5
    # b: one box, no detection -> 0; c: no ground truth -> NaN, left out of the mean
    np.testing.assert_allclose(result.ap[0.5], [0.75, 0.0, np.nan])
    np.testing.assert_allclose(result.ap[0.7], [0.5, 0.0, np.nan])
    assert result.mean_ap(0.5) == pytest.approx(0.375)
    assert result.mean_ap(0.7) == pytest.approx(0.25)
    assert AREA_AP in result.table() and "AP@0.7" in result.table()


def test_detection_ap_eleven_point():
    result = voc_detection_ap(DETECTIONS, ANNOTATIONS, CLASSES, iou_thresholds=(0.5,), use_07_metric=True)
    assert result.metric == ELEVEN_POINT_AP
    # t = 0 .. 0.5: max precision at recall >= t is 1; t = 0.6 .. 1: only the last point, precision 0.5
    assert result.ap[0.5][0] == pytest.approx((6 + 5 * 0.5) / 11)


def test_detection_in_image_without_ground_truth_is_false_positive():
    dets = {"img3": _dets([(0.9, [0, 0, 9, 9], 2)]), "img2": _dets([(0.5, [50, 50, 59, 59], 2)])}
    result = voc_detection_ap(dets, ANNOTATIONS, CLASSES, iou_thresholds=(0.5,))
    # FP then TP: recall 0, 1; precision 0, 0.5 -> envelope 0.5 over recall 0..1
    assert result.ap[0.5][1] == pytest.approx(0.5)


def test_empty_cases():
    result = voc_detection_ap({}, ANNOTATIONS, CLASSES)
    np.testing.assert_allclose(result.ap[0.5], [0.0, 0.0, np.nan])
    nothing = voc_detection_ap({}, {"img3": ANNOTATIONS["img3"]}, CLASSES)
    assert all(np.isnan(nothing.ap[0.5])) and math.isnan(nothing.mean_ap(0.5))


def test_accepts_detections_structure_and_rejects_bad_input():
    boxes, scores, labels = DETECTIONS["img2"]
    det = Detections(boxes, scores, labels, CLASSES, Prep((100, 100), 1.0, (100, 100)))
    result = voc_detection_ap({"img2": det}, ANNOTATIONS, CLASSES, iou_thresholds=(0.5,))
    # only img2's detections: FP then TP over npos 2 -> envelope 0.5 up to recall 0.5 -> 0.25
    assert result.ap[0.5][0] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="without annotation"):
        voc_detection_ap({"img9": DETECTIONS["img1"]}, ANNOTATIONS, CLASSES)
    with pytest.raises(ValueError, match="label 0"):
        voc_detection_ap({"img1": _dets([(0.5, [0, 0, 1, 1], 0)])}, ANNOTATIONS, CLASSES)
    with pytest.raises(ValueError, match="'zebra'"):
        voc_detection_ap({}, {"x": _ann("x", [("zebra", [0, 0, 1, 1], False)])}, CLASSES)


def test_confusion_matrix_miou():
    gt = np.array([[0, 1], [1, 255]])
    pred = np.array([[0, 1], [0, 1]])
    cm = ConfusionMatrix(2)
    cm.update(gt, pred)
    # pixels kept: (0->0), (1->1), (1->0); the 255 pixel is ignored
    np.testing.assert_array_equal(cm.matrix, [[1, 0], [1, 1]])
    # IoU_0 = 1 / (1 + 2 - 1), IoU_1 = 1 / (2 + 1 - 1)
    np.testing.assert_allclose(cm.iou(), [0.5, 0.5])
    assert cm.mean_iou() == pytest.approx(0.5)
    assert cm.pixel_accuracy() == pytest.approx(2 / 3)
    cm.update(gt, pred)  # accumulates
    assert cm.matrix.sum() == 6

    three = ConfusionMatrix(3)
    three.update(gt, pred)
    # class 2 occurs nowhere: IoU 0 / max(1, 0) = 0, and it counts in the mean as in the official code
    assert three.mean_iou() == pytest.approx(1 / 3)


def test_confusion_matrix_errors_and_empty():
    cm = ConfusionMatrix(2)
    assert math.isnan(cm.pixel_accuracy())
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="prediction label 2"):
        cm.update(np.zeros((1, 2), int), np.array([[0, 2]]))
    with pytest.raises(ValueError, match="ground truth label 7"):
        cm.update(np.array([[7, 0]]), np.zeros((1, 2), int))
