"""Structured results as JSON records (the files in ``preds/``, the lines of ``--json``) and as COCO
results lists. The records follow ``dcnviz/schemas/detections.schema.json`` and
``segmentation.schema.json``.

Coordinates are those of :mod:`dcnviz.structures`: boxes ``[x1, y1, x2, y2]`` in pixels of the
original image as displayed (after EXIF orientation), 0-based, corners inclusive. Boxes are rounded
to 0.01 px and scores to 1e-5 so the files stay readable.
"""
from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

from dcnviz.structures import Detections, Segmentation

# COCO category id of each of the 80 classes in the usual order (the ids run 1..90 with gaps); the
# official COCO models' label l (1..80, 0 = background) maps to COCO_CATEGORY_IDS[l - 1].
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90,
)


def load_schema(name: str) -> dict:
    """The JSON schema ``name`` ("detections" or "segmentation") shipped in ``dcnviz/schemas``."""
    text = resources.files("dcnviz").joinpath("schemas", f"{name}.schema.json").read_text("utf-8")
    return json.loads(text)


def detection_record(dets: Detections, *, image: str | os.PathLike, image_id: int, model: str,
                     vis: str | os.PathLike | None) -> dict:
    """One image's detections: input path, COCO image id, size (original pixels), model name,
    path of the annotated image, and per detection ``box`` [x1, y1, x2, y2], ``score``,
    ``class_id`` (network label) and ``class_name``."""
    h, w = dets.prep.image_size
    items = [
        {"box": [round(float(v), 2) for v in box], "score": round(float(score), 5),
         "class_id": int(label), "class_name": _class_name(dets.class_names, label)}
        for box, score, label in zip(np.asarray(dets.boxes).reshape(-1, 4), dets.scores, dets.labels)
    ]
    return {"task": "detection", "image": json_path(image), "image_id": int(image_id), "width": int(w),
            "height": int(h), "model": model, "vis": json_path(vis), "detections": items}


def segmentation_record(seg: Segmentation, *, image: str | os.PathLike, model: str,
                        vis: str | os.PathLike | None, mask: str | os.PathLike | None) -> dict:
    """One image's segmentation: input path, size, model name, path of the overlay and of the
    palette PNG holding the label map (pixel value = class id), and the histogram of the classes
    present (``pixels`` counted at the original size, ``fraction`` of all pixels)."""
    h, w = seg.labels.shape
    counts = class_histogram(seg.labels, len(seg.class_names))
    classes = [
        {"class_id": int(c), "class_name": seg.class_names[c], "pixels": int(counts[c]),
         "fraction": round(float(counts[c]) / (h * w), 6)}
        for c in np.flatnonzero(counts)
    ]
    return {"task": "segmentation", "image": json_path(image), "width": int(w), "height": int(h),
            "model": model, "vis": json_path(vis), "mask": json_path(mask), "classes": classes}


def error_record(image: str | os.PathLike, message: str) -> dict:
    """The ``--json`` line for an image that could not be processed."""
    return {"image": json_path(image), "error": message}


def class_histogram(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes,) int64 pixel count of each class in a label map; raises ValueError for a
    label outside ``0 .. num_classes - 1`` (a model returning labels it has no name for)."""
    counts = np.bincount(np.asarray(labels).ravel(), minlength=num_classes)
    if len(counts) > num_classes:
        bad = int(np.flatnonzero(counts[num_classes:])[0]) + num_classes
        raise ValueError(f"label map holds class id {bad} but the model has {num_classes} classes")
    return counts


def coco_results(dets: Detections, image_id: int,
                 category_ids: Sequence[int] | None = None) -> list[dict]:
    """Detections as COCO results ``{image_id, category_id, bbox: [x, y, w, h], score}``.

    ``w = x2 - x1 + 1`` (inclusive corners, as the official MSRA COCO evaluation writes them).
    ``category_ids[label]`` gives the COCO category id of a network label; ``None`` keeps the label.
    """
    results = []
    for (x1, y1, x2, y2), score, label in zip(np.asarray(dets.boxes).reshape(-1, 4), dets.scores,
                                              dets.labels):
        results.append({
            "image_id": int(image_id),
            "category_id": int(category_ids[label] if category_ids is not None else label),
            "bbox": [round(float(x1), 2), round(float(y1), 2), round(float(x2 - x1 + 1), 2),
                     round(float(y2 - y1 + 1), 2)],
            "score": round(float(score), 5),
        })
    return results


def coco_category_ids(class_names: Sequence[str], dataset: str) -> tuple[int, ...] | None:
    """Category-id map for ``coco_results``: for a COCO model (background + 80 classes) label l
    becomes ``COCO_CATEGORY_IDS[l - 1]`` (index 0 is never used); other models keep their labels."""
    if dataset.lower().startswith("coco") and len(class_names) == len(COCO_CATEGORY_IDS) + 1:
        return (0,) + COCO_CATEGORY_IDS
    return None


def coco_image_ids(images: Sequence[Path]) -> dict[Path, int]:
    """Image id for each image in a COCO results file: the file stem when every stem is a distinct
    number (COCO's own names, e.g. ``000000397133.jpg`` -> 397133), else the 1-based position in
    ``images``. The same id is written as ``image_id`` in each image's JSON record."""
    stems = [Path(p).stem for p in images]
    if all(s.isascii() and s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return {p: int(s) for p, s in zip(images, stems)}
    return {p: i for i, p in enumerate(images, 1)}


def _class_name(names: Sequence[str], label) -> str:
    if not 0 <= int(label) < len(names):
        raise ValueError(f"detection has class id {int(label)} but the model has {len(names)} classes")
    return names[int(label)]


def yolo_lines(dets: Detections, with_conf: bool = False) -> str:
    """The detections as a YOLO label file: one line per box, ``class x_centre y_centre width height``
    (``score`` appended with ``with_conf``), coordinates normalised by the image size. The class index
    counts the object classes from 0, as YOLO's names list does: the network label minus one when class 0
    is the background (R-FCN), else the label. Boxes are inclusive corners, so a box covers x1 .. x2 + 1."""
    h, w = dets.prep.image_size
    offset = 1 if dets.class_names and dets.class_names[0].lower() in ("__background__", "background") else 0
    lines = []
    for (x1, y1, x2, y2), score, label in zip(np.asarray(dets.boxes, np.float64).reshape(-1, 4), dets.scores,
                                              dets.labels):
        values = [(x1 + x2 + 1) / 2 / w, (y1 + y2 + 1) / 2 / h, (x2 - x1 + 1) / w, (y2 - y1 + 1) / h]
        line = f"{int(label) - offset} " + " ".join(f"{v:.6f}" for v in values)
        lines.append(line + (f" {float(score):.5f}" if with_conf else ""))
    return "".join(f"{line}\n" for line in lines)


def json_path(p: str | os.PathLike | None) -> str | None:
    """A path as every dcnviz JSON file writes it, with "/": relative to the working directory when it is
    inside it (``runs/detect/vis/a.jpg``, however it was given), else absolute (never ``../../..``)."""
    if p is None:
        return None
    absolute, cwd = os.path.abspath(p), os.getcwd()
    try:
        inside = os.path.commonpath([absolute, cwd]) == cwd
    except ValueError:  # another drive
        inside = False
    return Path(os.path.relpath(absolute, cwd) if inside else absolute).as_posix()

