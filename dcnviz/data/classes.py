"""Class lists and the PASCAL VOC palette: the one place models, readers and the generator take them from.

Index 0 is background in every list (the R-FCN / DeepLab convention); 255 is the void label of
segmentation PNGs and is never a class.
"""
from __future__ import annotations

VOC_CLASSES = (
    "__background__", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)

# Shapes drawn by ``dcnviz synth`` (see dcnviz/data/synth.py for what each one looks like).
SYNTH_CLASSES = ("__background__", "worm", "star", "ring", "blob", "cross")

VOID = 255

# Class names that mean "no object" (compared lower-case): never a selectable class, never an object
# segment, and left untinted in overlays.
BACKGROUND_NAMES = ("background", "__background__")


def background_ids(class_names) -> list[int]:
    """Indices of the classes named background (:data:`BACKGROUND_NAMES`) in ``class_names``."""
    return [i for i, name in enumerate(class_names) if name.lower() in BACKGROUND_NAMES]


def voc_palette(n: int = 256) -> tuple[tuple[int, int, int], ...]:
    """The VOCdevkit colormap (``VOClabelcolormap.m``): the bits of the label index are dealt round-robin
    to R, G, B from the most significant bit down. 0 -> (0, 0, 0), 1 -> (128, 0, 0), 255 -> (224, 224, 192).
    """
    colors = []
    for label in range(n):
        r = g = b = 0
        for shift in range(7, -1, -1):
            r |= (label & 1) << shift
            g |= ((label >> 1) & 1) << shift
            b |= ((label >> 2) & 1) << shift
            label >>= 3
        colors.append((r, g, b))
    return tuple(colors)
