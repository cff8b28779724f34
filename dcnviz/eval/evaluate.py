"""Evaluate a model on one split of a dataset folder (``dcnviz eval``): run the model on every image
and score the results with :mod:`dcnviz.eval.metrics`.

Detection: VOC2010+ area AP per class at IoU > 0.5 and IoU > 0.7, difficult boxes ignored, mean over the
classes that have ground truth, on boxes in original image pixels at the model's test settings (score
threshold 1e-3, at most 100 detections per image for the bundled models). Segmentation: IoU per class
and their mean over all classes (background included) from one confusion matrix over the split, at the
original image size, 255 ignored. The folder is any layout of :func:`dcnviz.data.datasets.open_split`
(VOC and COCO for detection, VOC and Cityscapes for segmentation).

The images go through :func:`dcnviz.runner.run` (DataLoader workers, torchrun processes, ``--resume``):
detections are kept per image and scored once, on rank 0, in image order; confusion matrices are
summed. An image whose file, annotation or label map is missing or broken is reported, skipped (its
ground truth too) and listed under ``skipped``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dcnviz.data.datasets import open_split
from dcnviz.errors import DatasetError, UserError
from dcnviz.eval.metrics import ConfusionMatrix, voc_detection_ap
from dcnviz.runner import Dist, PartialState, run
from dcnviz.runner.partial import ids_digest, model_digest

IOU_THRESHOLDS = (0.5, 0.7)


def _number(x: float) -> float | None:
    """JSON-safe: NaN (a class without ground truth) becomes None."""
    return None if math.isnan(x) else float(x)


class PredictJob:
    """One image of ``eval`` (a :class:`dcnviz.runner.Job`): read and preprocess it (and its label map) in
    a worker; predict here, keeping the detections (record) or the confusion matrix (total)."""

    def __init__(self, model, split):
        self.model, self.split, self.ids = model, split, split.ids

    def name(self, index: int) -> str:
        return self.ids[index]

    def load(self, index: int) -> dict:
        image_id = self.ids[index]
        data, prep = self.model.preprocess(self.split.image_path(image_id))
        if self.model.task == "detection":
            self.split.annotation(image_id)  # a broken annotation skips the image here, not at scoring
            return {"data": data, "prep": prep}
        gt = self.split.segmentation(image_id)
        if gt.shape != tuple(prep.image_size):
            raise DatasetError(f"{self.split.segmentation_path(image_id)} is {gt.shape[1]}x{gt.shape[0]}, its image "
                               f"{prep.image_size[1]}x{prep.image_size[0]}")
        return {"data": data, "prep": prep, "gt": gt}

    def step(self, item: dict):
        result = self.model.predict_input(item["data"], item["prep"])
        if self.model.task == "detection":
            return {"boxes": result.boxes.tolist(), "scores": result.scores.tolist(),
                    "labels": result.labels.tolist()}, {}
        matrix = ConfusionMatrix(len(self.model.classes))
        try:
            matrix.update(item["gt"], result.labels)
        except ValueError as exc:
            raise UserError(f"{self.split.segmentation_path(self.ids[item['index']])}: {exc} (the model has "
                            f"{len(self.model.classes)} classes)") from None
        return None, {"confusion": matrix.matrix}


def evaluate(model, data, split: str = "test", *, ctx: Dist | None = None, workers: int = 0, out_dir=None,
             config: dict | None = None, resume: bool = False, save_every: int = 10, quiet: bool = True) -> dict | None:
    """Scores of ``model`` (from :func:`dcnviz.models.load_model`) on ``split`` of the folder ``data``.

    Returns for detection ``{"task": "detection", "metric", "images", "mAP50", "mAP70", "AP50": {class:
    AP}, "AP70": {...}, "skipped"}``, for segmentation ``{"task": "segmentation", "images", "mIoU", "IoU":
    [per class], "classes": [...], "skipped"}``; AP or IoU values are fractions in [0, 1] (None for a
    class without ground truth); ``skipped`` lists ``{"id", "error"}`` of the images left out. None on
    ranks other than 0. ``ctx``, ``workers``, ``out_dir``, ``config``, ``resume``, ``save_every``,
    ``quiet``: as for :func:`dcnviz.eval.dilation_stats.dilation_stats`."""
    dataset = open_split(data, split, model.task)
    classes = tuple(model.classes)
    ids = dataset.ids
    if not ids:
        raise UserError(f"split {split!r} of {data} lists no images")
    state = None
    if out_dir is not None:
        state = PartialState(out_dir, {"command": "eval", **(config or {}), "weights_sha256": model_digest(model),
                                       "dataset": str(Path(data).resolve()), "layout": dataset.layout,
                                       "split": split, "images": len(ids), "ids_sha256": ids_digest(ids)})
    outcome = run(PredictJob(model, dataset), len(ids), ctx or Dist(), workers=workers, state=state,
                  resume=resume, save_every=save_every, desc="eval", quiet=quiet)
    if outcome is None:
        return None
    skipped = [{"id": ids[i], "error": e} for i, e in outcome.errors.items()]
    if not outcome.records:
        raise UserError(f"none of the {len(ids)} images of split {split!r} could be used; first problem: "
                        f"{skipped[0]['error']}")
    if model.task == "detection":
        annotations = {ids[i]: dataset.annotation(ids[i]) for i in outcome.records}
        detections = {ids[i]: (np.array(r["boxes"], np.float32).reshape(-1, 4), np.array(r["scores"], np.float32),
                               np.array(r["labels"], np.int64)) for i, r in outcome.records.items()}
        try:
            ap = voc_detection_ap(detections, annotations, classes, IOU_THRESHOLDS)
        except ValueError as exc:
            raise UserError(f"{data}: {exc}") from None
        names = ap.class_names
        return {"task": "detection", "metric": ap.metric, "images": len(outcome.records),
                "mAP50": _number(ap.mean_ap(0.5)), "mAP70": _number(ap.mean_ap(0.7)),
                "AP50": {n: _number(v) for n, v in zip(names, ap.ap[0.5])},
                "AP70": {n: _number(v) for n, v in zip(names, ap.ap[0.7])}, "skipped": skipped}
    matrix = ConfusionMatrix(len(classes))
    matrix.matrix = outcome.totals["confusion"]
    return {"task": "segmentation", "images": len(outcome.records), "mIoU": matrix.mean_iou(),
            "IoU": [float(v) for v in matrix.iou()], "classes": list(classes), "skipped": skipped}
