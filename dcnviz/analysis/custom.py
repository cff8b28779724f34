"""An :class:`~dcnviz.analysis.Inspection` of your own model (``--model FILE.py:FUNCTION``,
:class:`dcnviz.models.custom.CustomModel`), from one forward with its deformable layers recorded by hooks.

Each recorded call becomes a :class:`~dcnviz.analysis.LayerRecord`: named by its module path, geometry from
the module and the offsets (:func:`dcnviz.analysis.effective.layer_geometry`), feature stride of its
output map inferred from the shapes (:func:`dcnviz.analysis.effective.feature_stride`), its boundary rule
and input map size; layers in call order (bottom -> top). There is no prediction, so units are given by
position or picked on the background.
"""
from __future__ import annotations

import numpy as np

from dcnviz.analysis.effective import feature_stride, layer_geometry
from dcnviz.analysis.inspection import Inspection, LayerRecord
from dcnviz.errors import UserError

__all__ = ["inspect_custom", "custom_layer_records", "composable_levels"]


def custom_layer_records(model, data) -> list[LayerRecord]:
    """The :class:`LayerRecord` of every deformable layer call of ``model`` on the network input ``data``
    (bottom -> top), each with its own feature stride (the layers of a custom model may differ)."""
    net = tuple(data.shape[-2:])
    return [LayerRecord(c.name, layer_geometry(c), feature_stride(net, tuple(c.output.shape[-2:])), c.offset,
                        c.boundary, tuple(int(n) for n in c.input.shape[-2:])) for c in model.run(data)]


def inspect_custom(model, image: np.ndarray):
    """(:class:`Inspection` of ``model`` on the BGR uint8 ``image``, the network input it ran on)."""
    data, prep = model.preprocess(image)
    layers = custom_layer_records(model, data)
    try:
        return Inspection(layers, prep, image), data
    except ValueError as e:  # a layer called twice in one forward
        raise UserError(f"{model.name}: {e}; each deformable layer must run once per forward") from None


def composable_levels(inspection: Inspection, top: str, most: int) -> int:
    """How many layers from ``top`` down (at most ``most``) compose into sampling points: consecutive
    layers where each one's output map is the next higher one's input map."""
    stack = inspection.stack(top, inspection.names.index(top) + 1)
    levels = 1
    while levels < min(most, len(stack)) and stack[levels].map_size == stack[levels - 1].input_size:
        levels += 1
    return levels
