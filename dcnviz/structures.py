"""Structured results that flow from a model's ``predict`` to analysis, rendering and JSON.

Coordinates: boxes are ``[x1, y1, x2, y2]`` in pixels of the ORIGINAL image (0-based, corners
inclusive as in the official code, i.e. width = x2 - x1 + 1). Feature maps captured during the forward
pass stay in feature-map cells of the preprocessed input; ``Prep`` says how to map them back.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class Prep:
    """How an image became the network input: original (H, W), the resize factor and the input (H, W).

    Image pixel (x, y) maps to input pixel (x * scale, y * scale); a feature cell (i, j) of a map with
    stride ``s`` covers input pixels [j*s, (j+1)*s) x [i*s, (i+1)*s), so its centre is at image pixel
    ((j + 0.5) * s / scale, (i + 0.5) * s / scale).
    """

    image_size: tuple[int, int]
    scale: float
    input_size: tuple[int, int]


@dataclass
class Detections:
    """Detections of one image. ``boxes`` (K, 4) float32 original pixels, ``scores`` (K,), ``labels`` (K,)
    int64 network class indices (0 is background and never appears), ``class_names`` indexed by label."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    prep: Prep
    captured: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)


@dataclass
class Segmentation:
    """Per-pixel labels of one image: ``labels`` (H, W) uint8 class indices at the ORIGINAL size,
    ``class_names`` indexed by label, ``palette`` an RGB triple per class."""

    labels: np.ndarray
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    prep: Prep
    captured: dict[str, torch.Tensor] = field(default_factory=dict)
