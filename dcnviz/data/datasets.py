"""The dataset layouts that ``dilation-stats`` and ``eval`` read, behind one interface (:class:`Split`).

Each layout is read exactly as distributed; the folder given is recognised by what it holds:

- **PASCAL VOC** (``VOCdevkit/VOC2007``, ``VOCdevkit/VOC2012``, and ``dcnviz synth`` output): the folder
  holding ``JPEGImages/``; see :mod:`dcnviz.data.voc` (boxes 0-based inclusive, ``difficult`` and
  ``truncated`` flags kept). Detection reads ``ImageSets/Main/<split>.txt``, segmentation
  ``ImageSets/Segmentation/<split>.txt`` and the ``SegmentationClass/<id>.png`` palette PNGs (255 void).
- **COCO** (the folder holding ``annotations/instances_<split>.json`` and the images in ``<split>/`` or
  ``images/<split>/``, e.g. split ``val2017``): ``bbox`` ``[x, y, w, h]`` becomes the 0-based inclusive
  ``[x1, y1, x1 + w - 1, y1 + h - 1]`` with x1, y1 = x, y clipped at 0 and x2, y2 clipped to the image,
  exactly as the official MSRA COCO loader does; boxes of
  zero area are dropped (as there); ``iscrowd`` objects are marked ``difficult``, so AP ignores them and
  ``dilation-stats`` leaves filters inside them only out, like VOC's difficult boxes. The size buckets of
  ``dilation-stats`` use these boxes' areas ((x2-x1+1)*(y2-y1+1) = w*h), not the annotations' ``area``
  field (the area of the segment), so that a COCO box is bucketed by the same rule as a VOC box.
  Image ids are the file names without suffix; class names are the categories' names.
- **Cityscapes** (the folder holding ``leftImg8bit/`` and ``gtFine/``), segmentation only:
  ``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` with ``gtFine/<split>/<city>/<name>_gtFine_labelIds.png``,
  whose label ids are mapped to the 19 train ids (:data:`CITYSCAPES_TRAIN_IDS`, cityscapesScripts'
  ``labels.py``; every other id, ``ignoreInEval``, becomes 255). Image ids are ``<city>/<name>``.

Every problem with a file raises :class:`~dcnviz.errors.DatasetError` naming it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from dcnviz.data.voc import Annotation, VOCDataset, VOCObject, read_label_png
from dcnviz.errors import DatasetError

TASKS = ("detection", "segmentation")

# cityscapesScripts labels.py: label id -> train id for the 19 evaluated classes (the rest is 255)
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                        25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
_CITYSCAPES_LUT = np.full(256, 255, np.uint8)
for _label, _train in CITYSCAPES_TRAIN_IDS.items():
    _CITYSCAPES_LUT[_label] = _train


class Split:
    """One split of a dataset for one task: ``ids`` in a fixed order, and per id its image path, its
    boxes (:meth:`annotation`, detection layouts) or its label map (:meth:`segmentation`)."""

    layout = ""

    def __init__(self, root: Path, split: str, task: str, ids: list[str]):
        self.root, self.split, self.task, self.ids = root, split, task, ids

    def image_path(self, image_id: str) -> Path:
        raise NotImplementedError

    def annotation(self, image_id: str) -> Annotation:
        """Objects with 0-based inclusive boxes (see the module docstring for each layout)."""
        raise DatasetError(f"{self.root} is a {self.layout} folder, which has no boxes")

    def segmentation(self, image_id: str) -> np.ndarray:
        """(H, W) uint8 class indices of the image, 255 void."""
        raise DatasetError(f"{self.root} is a {self.layout} folder, which has no segmentation labels")

    def segmentation_path(self, image_id: str) -> Path:
        raise NotImplementedError


class VOCSplit(Split):
    layout = "VOC"

    def __init__(self, root: Path, split: str, task: str):
        self.voc = VOCDataset(root)
        super().__init__(root, split, task, self.voc.ids(split, "main" if task == "detection" else "segmentation"))

    def image_path(self, image_id):
        return self.voc.image_path(image_id)

    def annotation(self, image_id):
        return self.voc.annotation(image_id)

    def segmentation(self, image_id):
        return self.voc.segmentation(image_id)

    def segmentation_path(self, image_id):
        return self.voc.segmentation_path(image_id)


class COCOSplit(Split):
    layout = "COCO"

    def __init__(self, root: Path, split: str, task: str):
        if task != "detection":
            raise DatasetError(f"{root} is a COCO folder: dcnviz reads its boxes (instances_*.json), not masks")
        path = root / "annotations" / f"instances_{split}.json"
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            images, categories = data["images"], {c["id"]: c["name"] for c in data["categories"]}
            objects: dict[int, list] = {im["id"]: [] for im in images}
            for a in data["annotations"]:
                objects[a["image_id"]].append(a)
        except FileNotFoundError:
            have = sorted(p.name for p in (root / "annotations").glob("instances_*.json"))
            raise DatasetError(f"{path} does not exist (here: {', '.join(have) or 'none'})") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DatasetError(f"{path}: not a COCO instances file ({type(e).__name__}: {e})") from None
        folder = root / split if (root / split).is_dir() else root / "images" / split
        if not folder.is_dir():
            raise DatasetError(f"{root} has no image folder {split}/ or images/{split}/")
        self.folder, self.categories = folder, categories
        self._images = {Path(im["file_name"]).stem: im for im in sorted(images, key=lambda im: im["id"])}
        self._objects = objects
        super().__init__(root, split, task, list(self._images))

    def image_path(self, image_id):
        path = self.folder / self._images[image_id]["file_name"]
        if not path.is_file():
            raise DatasetError(f"image {path} does not exist")
        return path

    def annotation(self, image_id):
        im = self._images[image_id]
        width, height = int(im["width"]), int(im["height"])
        objects = []
        for a in self._objects[im["id"]]:
            x, y, w, h = (float(v) for v in a["bbox"])
            # MSRA coco.py: clip to the image, inclusive corners, drop empty boxes
            x1, y1 = max(0.0, x), max(0.0, y)
            x2, y2 = min(width - 1.0, x1 + max(0.0, w - 1.0)), min(height - 1.0, y1 + max(0.0, h - 1.0))
            if a.get("area", 1) > 0 and x2 >= x1 and y2 >= y1:
                objects.append(VOCObject(self.categories[a["category_id"]], (x1, y1, x2, y2),
                                         difficult=bool(a.get("iscrowd", 0))))
        return Annotation(image_id, width, height, 3, tuple(objects))


class CityscapesSplit(Split):
    layout = "Cityscapes"

    def __init__(self, root: Path, split: str, task: str):
        if task != "segmentation":
            raise DatasetError(f"{root} is a Cityscapes folder: dcnviz reads its label maps (gtFine), not boxes")
        folder = root / "leftImg8bit" / split
        if not folder.is_dir():
            have = sorted(p.name for p in (root / "leftImg8bit").iterdir() if p.is_dir())
            raise DatasetError(f"{folder} does not exist (splits here: {', '.join(have) or 'none'})")
        ids = sorted(f"{p.parent.name}/{p.name.removesuffix('_leftImg8bit.png')}"
                     for p in folder.glob("*/*_leftImg8bit.png"))
        super().__init__(root, split, task, ids)

    def image_path(self, image_id):
        path = self.root / "leftImg8bit" / self.split / f"{image_id}_leftImg8bit.png"
        if not path.is_file():
            raise DatasetError(f"image {path} does not exist")
        return path

    def segmentation_path(self, image_id):
        return self.root / "gtFine" / self.split / f"{image_id}_gtFine_labelIds.png"

    def segmentation(self, image_id):
        return _CITYSCAPES_LUT[read_label_png(self.segmentation_path(image_id))]


def open_split(root: str | os.PathLike, split: str, task: str) -> Split:
    """The ``split`` of the dataset folder ``root`` for ``task`` ("detection" or "segmentation"), its
    layout recognised from the folder's contents (see the module docstring)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    if (root / "annotations").is_dir() and not (root / "JPEGImages").is_dir():
        return COCOSplit(root, split, task)
    if (root / "leftImg8bit").is_dir():
        return CityscapesSplit(root, split, task)
    return VOCSplit(root, split, task)  # VOCDataset names what is missing (and a VOC<year> subfolder)
