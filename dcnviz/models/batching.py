"""Several images in one forward (``detect``/``segment --batch N``).

Images are preprocessed one by one as :meth:`predict` does; network inputs of the same size are stacked
into one (N, 3, H, W) batch and run in one forward (``model.predict_inputs``); the post-processing
(proposals, box decoding, NMS, resizing the scores back) stays per image. Inputs are never padded to a
common size, since padding would change what the network computes near the borders: images whose inputs
differ in size fall back to smaller batches (one forward per size). Batched results equal one-image
results up to the floating-point reassociation of batched convolutions (within 1e-5 on the CPU).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["predict_batch"]


def predict_batch(model, images: Sequence[np.ndarray], **kwargs) -> list:
    """``[model.predict(image, **kwargs) for image in images]``, with the images whose network inputs have
    the same size run in one forward (see the module doc). A model without ``predict_inputs`` (one that
    cannot batch) runs one image at a time."""
    if not hasattr(model, "predict_inputs"):
        return [model.predict(image, **kwargs) for image in images]
    inputs = [model.preprocess(image) for image in images]
    groups: dict[tuple, list[int]] = {}
    for k, (data, _) in enumerate(inputs):
        groups.setdefault(tuple(data.shape), []).append(k)
    results: list = [None] * len(images)
    for ks in groups.values():
        found = model.predict_inputs([inputs[k][0] for k in ks], [inputs[k][1] for k in ks], **kwargs)
        for k, result in zip(ks, found):
            results[k] = result
    return results
