"""Test doubles for the CLI tests: tiny predictors with fixed, hand-made outputs (no network).

Imported by the tests to drive ``run_predictions`` directly; run as a script it registers the fake
models, puts ``load_model`` below in place of ``dcnviz.load_model`` and runs the real ``dcnviz``
command line, so the subprocess tests exercise every layer except the real models:

    python tests/fake_models.py detect IMAGES... --model fake-det
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

import dcnviz
from dcnviz.errors import WeightsError
from dcnviz.models.registry import ModelSpec, _REGISTRY, register_model
from dcnviz.structures import Detections, Prep, Segmentation

DET_CLASSES = ("__background__", "cat", "dog", "person")
SEG_CLASSES = ("road", "car", "sky")
SEG_PALETTE = ((128, 64, 128), (0, 0, 142), (70, 130, 180))
COCO_CLASSES = ("__background__",) + tuple(f"class{i}" for i in range(1, 81))


def fake_detections(image: np.ndarray, class_names=DET_CLASSES) -> Detections:
    """Three boxes placed relative to the image size: cat 0.9, dog 0.6, person 0.3 (labels 1, 2, 3)."""
    h, w = image.shape[:2]
    boxes = np.array([[0, 0, w // 2, h // 2], [w // 4, h // 4, w - 1, h - 1], [1, 1, 4, 4]], np.float32)
    return Detections(boxes=boxes, scores=np.array([0.9, 0.6, 0.3], np.float32),
                      labels=np.array([1, 2, 3], np.int64), class_names=class_names,
                      prep=Prep(image_size=(h, w), scale=1.0, input_size=(h, w)))


def fake_segmentation(image: np.ndarray) -> Segmentation:
    """Top third sky (2), middle third car (1), bottom third road (0)."""
    h, w = image.shape[:2]
    labels = np.zeros((h, w), np.uint8)
    labels[: h // 3] = 2
    labels[h // 3: 2 * h // 3] = 1
    return Segmentation(labels=labels, class_names=SEG_CLASSES, palette=SEG_PALETTE,
                        prep=Prep(image_size=(h, w), scale=1.0, input_size=(h, w)))


class FakeModel:
    def __init__(self, name: str):
        self.name = name
        self.scales = (600, 1000)  # the test (short, long) sizes; --imgsz changes them

    def predict(self, image: np.ndarray):
        if os.environ.get("DCNVIZ_FAKE_CRASH"):  # lets a test see how a bug inside a model is reported
            raise RuntimeError("fake model crashed\nwith a second line")
        if self.name == "fake-seg":
            return fake_segmentation(image)
        return fake_detections(image, COCO_CLASSES if self.name == "fake-det-coco" else DET_CLASSES)


def load_model(name: str, weights: Path | None = None, device=None) -> FakeModel:
    """Stands in for ``dcnviz.load_model``. A weights file is accepted when its text is the model
    name, so a test can hand it the weights "of another model"."""
    if weights is not None:
        owner = Path(weights).read_text().strip()
        if owner != name:
            raise WeightsError(f"weights file '{weights}' is for model '{owner}', not '{name}'")
    return FakeModel(name)


def register() -> None:
    specs = [
        ("fake-det", "detection", "voc", DET_CLASSES, ()),
        ("fake-det-coco", "detection", "coco", COCO_CLASSES, ()),
        ("fake-seg", "segmentation", "cityscapes", SEG_CLASSES, SEG_PALETTE),
    ]
    for name, task, dataset, classes, palette in specs:
        if name not in _REGISTRY:
            register_model(ModelSpec(name=name, factory=lambda: None, task=task, dataset=dataset,
                                     classes=classes, palette=palette, scales=(600, 1000),
                                     weights=f"{name}.safetensors", bundled=name != "fake-det-coco"))


if __name__ == "__main__":
    register()
    dcnviz.load_model = load_model
    from dcnviz.cli import main

    main(sys.argv[1:], prog_name="dcnviz")
