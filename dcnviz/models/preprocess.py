"""Official test-time preprocessing (``lib/utils/image.py``, official.md §4.1), shared by the R-FCN and
DeepLab families, which differ only in their (short, long) scales (600/1000 for detection, 1024/2048
for Cityscapes), and by training (:mod:`dcnviz.data.loader`), so that every path — ``model.predict``,
``detect``/``segment``, ``eval``, the analysis commands and training — sees the same input.

A path is read by :func:`dcnviz.io.images.read_image` (the one image reader: EXIF orientation applied,
decompression-bomb limit, one-line :class:`~dcnviz.errors.ImageError`), giving BGR ``uint8`` as the
official code's ``cv2.imread``; :func:`to_network_input` resizes so that the short side is ``short``
unless the long side would exceed ``long`` (then the long side is ``long``), bilinear
(``cv2.INTER_LINEAR``), no padding (FPN: zero padding at the bottom and right up to a multiple of
``IMAGE_STRIDE`` 32, before the means are subtracted, so the padding reads ``-mean``); the network input is **RGB** with the means subtracted in float64
(as the official transform does before ``mx.nd.array`` makes it float32) and no division by a std:
channel 0 = R - 123.15, 1 = G - 115.90, 2 = B - 103.06, in the 0..255 scale.
"""
from __future__ import annotations

import os

import cv2
import numpy as np
import torch

from dcnviz.errors import UserError
from dcnviz.io.images import read_image
from dcnviz.structures import Prep

PIXEL_MEANS_BGR = (103.06, 115.90, 123.15)


def as_image(image) -> np.ndarray:
    """A BGR uint8 (H, W, 3) array from a path (read by :func:`dcnviz.io.images.read_image`) or from an
    array already in that form."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"array {image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise UserError(f"image must be a path or a BGR uint8 array of shape (H, W, 3), got {desc}")
    if min(image.shape[:2]) < 1:
        raise UserError(f"image must not be empty, got shape {image.shape}")
    return image


def resize_scale(height: int, width: int, short: int, long: int) -> float:
    """The official resize factor: ``short / min(h, w)``, or ``long / max(h, w)`` when
    ``round(scale * max(h, w)) > long`` (numpy rounding, as in the official code)."""
    scale = float(short) / float(min(height, width))
    if np.round(scale * max(height, width)) > long:
        scale = float(long) / float(max(height, width))
    return scale


def to_network_input(image_bgr: np.ndarray, scale: float) -> torch.Tensor:
    """(H, W, 3) BGR uint8 -> (3, round(H*scale), round(W*scale)) float32 RGB minus the means (the
    official ``transform``); ``scale`` 1 skips the resize."""
    if scale != 1.0:
        image_bgr = cv2.resize(image_bgr, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    # float64 subtraction, then float32, exactly as the official transform + mx.nd.array
    rgb = image_bgr[:, :, ::-1].astype(np.float64) - np.array(PIXEL_MEANS_BGR[::-1])
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32))


def preprocess(image, scales: tuple[int, int], stride: int = 0) -> tuple[torch.Tensor, Prep]:
    """Image (path or BGR uint8 array) -> network input (1, 3, H, W) float32 (RGB, means subtracted)
    and the :class:`~dcnviz.structures.Prep` that maps input pixels back to the image. ``stride`` > 0
    pads the resized image with zeros (bottom, right) to multiples of ``stride`` (official
    ``resize(stride=IMAGE_STRIDE)``); ``Prep.input_size`` is then the padded size, as the official
    ``im_info``."""
    im = as_image(image)
    h, w = im.shape[:2]
    scale = resize_scale(h, w, *scales)
    if stride > 0:
        if scale != 1.0:
            im = cv2.resize(im, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        rh, rw = im.shape[:2]
        im = np.pad(im, ((0, -rh % stride), (0, -rw % stride), (0, 0)))
        data = to_network_input(im, 1.0)[None]
        return data, Prep(image_size=(h, w), scale=scale, input_size=tuple(data.shape[2:]))
    data = to_network_input(im, scale)[None]
    return data, Prep(image_size=(h, w), scale=scale, input_size=tuple(data.shape[2:]))
