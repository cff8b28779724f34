"""A torch ``Dataset`` over a VOC-layout folder, for training and evaluating the bundled models.

Each item is ``(image, target)``: ``image`` a (3, H, W) float32 tensor prepared exactly as inference
prepares it: read by :func:`dcnviz.io.images.read_image` (EXIF orientation applied), then
:func:`dcnviz.models.preprocess.to_network_input` (official.md §4.1: bilinear resize by ``scale`` -> RGB
channel order minus the per-channel means in float64, no division by a std, values on the 0..255
scale); ``target`` a dict:

- ``image_id`` (str), ``prep`` (:class:`dcnviz.structures.Prep`), ``flipped`` (bool);
- ``boxes`` (N, 4) float32, 0-based inclusive ``x1, y1, x2, y2`` in INPUT pixels (original box times
  ``scale``, as MSRA scales its gt boxes), after the flip if any;
- ``labels`` (N,) int64 indices into ``class_names``; ``difficult`` (N,) bool (kept: the caller decides,
  MSRA drops them from training, evaluation ignores them);
- ``segmentation`` (H, W) int64 class indices at the input size (nearest-neighbour resize), 255 void,
  only when the dataset is built with ``segmentation=True``.

Augmentation (``train=True``): horizontal flip with probability 0.5 and a scale factor drawn uniformly
from ``scale_jitter``, both from ``numpy.random.default_rng([seed, epoch, index])``, so an item depends
only on (seed, epoch, index), whatever the worker or order. Call :meth:`set_epoch` between epochs.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from dcnviz.data.classes import SYNTH_CLASSES, VOID
from dcnviz.data.voc import VOCDataset
from dcnviz.errors import DatasetError
from dcnviz.io.images import read_image
from dcnviz.models.preprocess import resize_scale, to_network_input
from dcnviz.structures import Prep

def image_scale(height: int, width: int, short_side: int | None, max_size: int) -> float:
    """The official resize factor (:func:`dcnviz.models.preprocess.resize_scale`); ``short_side=None``
    keeps the original size."""
    return 1.0 if short_side is None else resize_scale(height, width, short_side, max_size)


class VOCDetSeg(Dataset):
    """Images, boxes and (optionally) segmentation labels of one split of a VOC-layout folder."""

    def __init__(self, root, split: str, class_names=SYNTH_CLASSES, *, task: str = "main",
                 segmentation: bool = False, short_side: int | None = None, max_size: int = 1000,
                 train: bool = False, flip: bool = True, scale_jitter=(0.75, 1.25), seed: int = 0):
        self.voc = VOCDataset(root)
        self.ids = self.voc.ids(split, task)
        self.class_names = tuple(class_names)
        self._index = {n: i for i, n in enumerate(self.class_names)}
        self.segmentation, self.short_side, self.max_size = segmentation, short_side, max_size
        self.train, self.flip, self.scale_jitter, self.seed = train, flip, tuple(scale_jitter), seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        ann = self.voc.annotation(image_id)
        path = self.voc.image_path(image_id)
        image = read_image(path)
        h, w = image.shape[:2]
        if (h, w) != (ann.height, ann.width):
            raise DatasetError(f"{path} is {w}x{h} but its annotation says {ann.width}x{ann.height}")
        try:
            labels = np.array([self._index[o.name] for o in ann.objects], np.int64)
        except KeyError as e:
            raise DatasetError(f"annotation of {image_id} has class {e.args[0]!r}, not in {self.class_names[1:]}") from None
        boxes = ann.boxes()
        seg = self.voc.segmentation(image_id) if self.segmentation else None
        if seg is not None and seg.shape != (h, w):
            raise DatasetError(f"segmentation of {image_id} is {seg.shape[1]}x{seg.shape[0]}, image is {w}x{h}")

        scale = image_scale(h, w, self.short_side, self.max_size)
        flipped = False
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            flipped = self.flip and bool(rng.random() < 0.5)
            scale *= float(rng.uniform(*self.scale_jitter))
        if flipped:
            image = image[:, ::-1]
            seg = None if seg is None else seg[:, ::-1]
            boxes = np.stack([w - 1 - boxes[:, 2], boxes[:, 1], w - 1 - boxes[:, 0], boxes[:, 3]], 1)

        tensor = to_network_input(np.ascontiguousarray(image), scale)
        target = {
            "image_id": image_id, "flipped": flipped,
            "prep": Prep(image_size=(h, w), scale=scale, input_size=tuple(tensor.shape[1:])),
            "boxes": torch.from_numpy((boxes * scale).astype(np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(labels), "difficult": torch.from_numpy(ann.difficult()),
        }
        if seg is not None:
            size = (tensor.shape[2], tensor.shape[1])
            seg = cv2.resize(np.ascontiguousarray(seg), size, interpolation=cv2.INTER_NEAREST)
            target["segmentation"] = torch.from_numpy(seg.astype(np.int64))
        return tensor, target


def collate(batch):
    """Stack items of different sizes: images zero-padded (zero = the mean colour after subtraction) at the
    bottom/right to the largest H and W, segmentation padded with 255. Returns (images (B, 3, H, W),
    list of targets); boxes need no change since padding is bottom/right."""
    height = max(img.shape[1] for img, _ in batch)
    width = max(img.shape[2] for img, _ in batch)
    images = torch.zeros(len(batch), 3, height, width)
    targets = []
    for k, (img, target) in enumerate(batch):
        images[k, :, :img.shape[1], :img.shape[2]] = img
        if "segmentation" in target:
            seg = torch.full((height, width), VOID, dtype=torch.int64)
            seg[:img.shape[1], :img.shape[2]] = target["segmentation"]
            target = {**target, "segmentation": seg}
        targets.append(target)
    return images, targets
