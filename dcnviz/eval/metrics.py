"""PASCAL VOC detection AP and segmentation mean IoU, as the official evaluation computes them.

Detection (MSRA ``lib/dataset/pascal_voc_eval.py``, from py-faster-rcnn ``voc_eval``), per class:
detections of all images are sorted by score (descending; ties keep input order, the official
``np.argsort`` does not promise an order); each is compared with every ground-truth box of its class
in its image using IoU with the "+1" pixel convention (inclusive corners: width = x2 - x1 + 1) and
takes the one of maximum IoU. If that IoU is **strictly greater** than the threshold: a difficult box
makes the detection count as neither TP nor FP; a box not yet taken makes it a TP; a taken one makes it
a duplicate FP. Otherwise it is an FP. Recall = TP / npos, where npos counts non-difficult boxes.

AP: ``use_07_metric=False`` gives the VOC2010+ "area" AP (precision made monotone from the right,
summed over recall steps); ``True`` gives the VOC2007 11-point AP. MSRA reports mAP at IoU 0.5 and
0.7 and uses the 11-point AP for VOC2007. The evaluation here runs on in-memory boxes, so it skips the
official round trip through result files (scores to 3 and boxes to 1 decimal) and through
``int(float(x))`` of the ground-truth coordinates; for integer boxes the two agree.

A class with no non-difficult ground truth has no AP (NaN) and is left out of the mean; the official
code would divide by zero there.

Segmentation (MSRA ``pascal_voc.py`` ``_py_evaluate_segmentation``): a confusion matrix over all pixels
whose ground truth is not 255; IoU_c = TP / max(1, GT_c + Pred_c - TP); mIoU is the mean over all
classes, background included (a class absent from both counts as 0, as in the official code).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dcnviz.data.classes import VOID

AREA_AP, ELEVEN_POINT_AP = "VOC2010+ area AP", "VOC07 11-point AP"


def box_iou_voc(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box (4,) with boxes (K, 4), all ``x1, y1, x2, y2`` with inclusive corners ("+1" areas)."""
    box, boxes = np.asarray(box, np.float64), np.asarray(boxes, np.float64).reshape(-1, 4)
    iw = np.maximum(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]) + 1.0, 0.0)
    inter = iw * ih
    union = ((box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
             + (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0) - inter)
    return inter / union


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool = False) -> float:
    """AP from cumulative recall/precision arrays (see the module docstring for the two definitions)."""
    rec, prec = np.asarray(rec, np.float64), np.asarray(prec, np.float64)
    if use_07_metric:
        # np.arange, not linspace: the official thresholds carry its rounding (e.g. 0.30000000000000004).
        return float(sum((prec[rec >= t].max() if (rec >= t).any() else 0.0) / 11.0 for t in np.arange(0.0, 1.1, 0.1)))
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def voc_eval_class(dets, gts, iou_threshold: float = 0.5, use_07_metric: bool = False):
    """One class. ``dets``: list of (image_id, score, box (4,)); ``gts``: dict image_id -> (boxes (G, 4),
    difficult (G,) bool) for every evaluated image. Returns (recall, precision, AP); AP is NaN when the
    class has no non-difficult box."""
    npos = int(sum((~np.asarray(d, bool)).sum() for _, d in gts.values()))
    taken = {i: np.zeros(len(d), bool) for i, (_, d) in gts.items()}
    order = np.argsort([-s for _, s, _ in dets], kind="stable")
    tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
    for rank, k in enumerate(order):
        image_id, _, box = dets[k]
        gt_boxes, difficult = gts[image_id]
        if len(gt_boxes) == 0:
            fp[rank] = 1
            continue
        iou = box_iou_voc(box, gt_boxes)
        j = int(np.argmax(iou))
        if iou[j] > iou_threshold:
            if difficult[j]:
                continue
            if taken[image_id][j]:
                fp[rank] = 1
            else:
                tp[rank], taken[image_id][j] = 1, True
        else:
            fp[rank] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / max(npos, 1)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return rec, prec, (voc_ap(rec, prec, use_07_metric) if npos else float("nan"))


@dataclass
class DetectionAP:
    """Per-class AP at each IoU threshold: ``ap[thr]`` is (C,) over ``class_names`` (background left out),
    NaN for classes without non-difficult ground truth; ``npos`` (C,) the non-difficult box counts."""

    metric: str
    class_names: tuple[str, ...]
    ap: dict[float, np.ndarray]
    npos: np.ndarray

    def mean_ap(self, iou_threshold: float) -> float:
        """mAP over classes that have ground truth (NaN if none has)."""
        valid = ~np.isnan(self.ap[iou_threshold])
        return float(self.ap[iou_threshold][valid].mean()) if valid.any() else float("nan")

    def table(self) -> str:
        """Human-readable lines naming the metric, one row per class, then the means."""
        thrs = sorted(self.ap)
        lines = [f"{self.metric}, IoU > threshold, difficult boxes ignored",
                 f"{'class':<16}{'npos':>6}" + "".join(f"{f'AP@{t:g}':>9}" for t in thrs)]
        for c, name in enumerate(self.class_names):
            lines.append(f"{name:<16}{self.npos[c]:>6}" + "".join(f"{self.ap[t][c]:>9.4f}" for t in thrs))
        lines.append(f"{'mean':<16}{int(self.npos.sum()):>6}" + "".join(f"{self.mean_ap(t):>9.4f}" for t in thrs))
        return "\n".join(lines)


def _det_arrays(d):
    if hasattr(d, "boxes"):  # dcnviz.structures.Detections
        return np.asarray(d.boxes), np.asarray(d.scores), np.asarray(d.labels)
    boxes, scores, labels = d
    return np.asarray(boxes), np.asarray(scores), np.asarray(labels)


def voc_detection_ap(detections, annotations, class_names, iou_thresholds=(0.5, 0.7),
                     use_07_metric: bool = False) -> DetectionAP:
    """Evaluate detections against VOC annotations.

    ``detections``: image_id -> :class:`dcnviz.structures.Detections` or a (boxes (K, 4), scores (K,),
    labels (K,)) tuple, boxes 0-based inclusive in original image pixels, labels indexing
    ``class_names`` (index 0 = background, never evaluated). ``annotations``: image_id ->
    :class:`dcnviz.data.voc.Annotation`, the evaluated image set (an image without detections simply has
    none). Object names must be in ``class_names``.
    """
    class_names = tuple(class_names)
    index = {n: i for i, n in enumerate(class_names)}
    unknown = set(detections) - set(annotations)
    if unknown:
        raise ValueError(f"detections for {len(unknown)} image(s) without annotation, e.g. {sorted(unknown)[0]}")
    gts = [dict() for _ in class_names]
    for image_id, ann in annotations.items():
        labels = []
        for obj in ann.objects:
            if obj.name not in index:
                raise ValueError(f"annotation of {image_id} has class {obj.name!r}, not in {class_names[1:]}")
            labels.append(index[obj.name])
        labels, boxes, difficult = np.array(labels, int), ann.boxes(), ann.difficult()
        for c in range(1, len(class_names)):
            gts[c][image_id] = (boxes[labels == c], difficult[labels == c])
    dets = [[] for _ in class_names]
    for image_id, d in detections.items():
        boxes, scores, labels = _det_arrays(d)
        for box, score, label in zip(boxes.reshape(-1, 4), scores, labels):
            if not 0 < int(label) < len(class_names):
                raise ValueError(f"detection label {int(label)} of {image_id} is not a class index 1..{len(class_names) - 1}")
            dets[int(label)].append((image_id, float(score), box))
    ap = {float(t): np.array([voc_eval_class(dets[c], gts[c], t, use_07_metric)[2] for c in range(1, len(class_names))])
          for t in iou_thresholds}
    npos = np.array([sum(int((~d).sum()) for _, d in gts[c].values()) for c in range(1, len(class_names))])
    return DetectionAP(ELEVEN_POINT_AP if use_07_metric else AREA_AP, class_names[1:], ap, npos)


class ConfusionMatrix:
    """Accumulates a (C, C) pixel confusion matrix (rows ground truth, columns prediction), skipping
    ground-truth pixels labelled 255."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """``gt``, ``pred``: integer label maps of the same shape (e.g. (H, W))."""
        gt, pred = np.asarray(gt), np.asarray(pred)
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
        keep = gt != VOID
        gt, pred = gt[keep].astype(np.int64), pred[keep].astype(np.int64)
        c = self.num_classes
        for name, a in (("ground truth", gt), ("prediction", pred)):
            if a.size and (a.min() < 0 or a.max() >= c):
                raise ValueError(f"{name} label {int(a.max() if a.max() >= c else a.min())} outside 0..{c - 1}")
        self.matrix += np.bincount(gt * c + pred, minlength=c * c).reshape(c, c)

    def iou(self) -> np.ndarray:
        """(C,) IoU per class, TP / max(1, GT + Pred - TP) as in the official code."""
        tp = np.diag(self.matrix).astype(np.float64)
        return tp / np.maximum(1.0, self.matrix.sum(1) + self.matrix.sum(0) - tp)

    def mean_iou(self) -> float:
        """Mean of :meth:`iou` over all classes, background included."""
        return float(self.iou().mean())

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")
