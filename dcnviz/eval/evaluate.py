"""Evaluate a model on one split of a VOC-layout folder (``dcnviz eval``): run ``predict`` on every image
and score the results with :mod:`dcnviz.eval.metrics`.

Detection: VOC2010+ area AP per class at IoU > 0.5 and IoU > 0.7, difficult boxes ignored, mean over the
classes that have ground truth, on boxes in original image pixels at the model's test settings (score
threshold 1e-3, at most 100 detections per image for the bundled models). Segmentation: IoU per class
and their mean over all classes (background included) from one confusion matrix over the split, at the
original image size, 255 ignored.
"""
from __future__ import annotations

import math

from dcnviz.data.voc import VOCDataset
from dcnviz.errors import UserError
from dcnviz.eval.metrics import ConfusionMatrix, voc_detection_ap

IOU_THRESHOLDS = (0.5, 0.7)


def _number(x: float) -> float | None:
    """JSON-safe: NaN (a class without ground truth) becomes None."""
    return None if math.isnan(x) else float(x)


def evaluate(model, data, split: str = "test", progress=None) -> dict:
    """Scores of ``model`` (from :func:`dcnviz.models.load_model`) on ``split`` of the folder ``data``.

    Returns for detection ``{"task": "detection", "metric", "images", "mAP50", "mAP70", "AP50": {class:
    AP}, "AP70": {...}}``, for segmentation ``{"task": "segmentation", "images", "mIoU", "IoU": [per
    class], "classes": [...]}``; AP or IoU values are fractions in [0, 1] (None for a class without ground
    truth). ``progress`` (optional) is called once per image."""
    dataset = VOCDataset(data)
    classes = tuple(model.classes)
    ids = dataset.ids(split, "main" if model.task == "detection" else "segmentation")
    if not ids:
        raise UserError(f"split {split!r} of {data} lists no images")
    if model.task == "detection":
        annotations, detections = {}, {}
        for image_id in ids:
            annotations[image_id] = dataset.annotation(image_id)
            detections[image_id] = model.predict(dataset.image_path(image_id))
            if progress is not None:
                progress()
        try:
            ap = voc_detection_ap(detections, annotations, classes, IOU_THRESHOLDS)
        except ValueError as exc:
            raise UserError(f"{data}: {exc}") from None
        names = ap.class_names
        return {"task": "detection", "metric": ap.metric, "images": len(ids),
                "mAP50": _number(ap.mean_ap(0.5)), "mAP70": _number(ap.mean_ap(0.7)),
                "AP50": {n: _number(v) for n, v in zip(names, ap.ap[0.5])},
                "AP70": {n: _number(v) for n, v in zip(names, ap.ap[0.7])}}
    matrix = ConfusionMatrix(len(classes))
    for image_id in ids:
        gt = dataset.segmentation(image_id)
        pred = model.predict(dataset.image_path(image_id)).labels
        try:
            matrix.update(gt, pred)
        except ValueError as exc:
            raise UserError(f"{dataset.segmentation_path(image_id)}: {exc} (the model has {len(classes)} "
                            "classes)") from None
        if progress is not None:
            progress()
    return {"task": "segmentation", "images": len(ids), "mIoU": matrix.mean_iou(),
            "IoU": [float(v) for v in matrix.iou()], "classes": list(classes)}
