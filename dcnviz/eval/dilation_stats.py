"""Effective dilation of every deformable layer over a VOC-layout split (``dcnviz dilation-stats``, paper
Table 2): run the model's backbone on each image, compute :func:`dcnviz.analysis.effective_dilation` per
filter and accumulate it per layer x size bucket of the ground-truth boxes
(:class:`dcnviz.analysis.DilationStats`; every rule is in :data:`dcnviz.analysis.TABLE2_CONFIG`).

Broken entries are skipped and reported, not fatal: an annotation that is missing or malformed, an image
that is missing or unreadable, or an annotation whose size differs from its image (its boxes would be
bucketed against the wrong pixels). The statistics are then over the remaining images, and the caller
lists what was skipped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from dcnviz.analysis import DilationStats, layer_records
from dcnviz.data.voc import VOCDataset
from dcnviz.errors import DatasetError, UserError
from dcnviz.io.images import read_image
from dcnviz.models.capture import capture_offsets


@dataclass
class DilationRun:
    """What :func:`dilation_stats` found: the statistics (layers top first), the ids it used, and
    ``skipped`` as (id, one-line reason) pairs."""

    stats: DilationStats
    ids: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def dilation_stats(model, data, split: str = "test", limit: int | None = None,
                   progress: Callable[[int], None] | None = None,
                   on_skip: Callable[[str, str], None] | None = None) -> DilationRun:
    """Table 2 statistics of ``model`` (from :func:`dcnviz.models.load_model`, with deformable layers) on the
    first ``limit`` images (all if None) of ``split`` of the VOC-layout folder ``data``.

    ``progress(total)`` is called once per image, with the number of images; ``on_skip(id, reason)`` for
    each broken entry (see the module docstring). Raises :class:`~dcnviz.errors.UserError` when the folder or split cannot be used, or when
    no image could be used."""
    if not model.deformable_layers:
        raise UserError("the model has no deformable conv layers")
    dataset = VOCDataset(data)
    ids = dataset.ids(split)[:limit]
    if not ids:
        raise UserError(f"split {split!r} of {data} lists no images")
    run = DilationRun(DilationStats(), ids)
    for image_id in ids:
        try:
            ann = dataset.annotation(image_id)
            path = dataset.image_path(image_id)
            image = read_image(path)
            if image.shape[:2] != (ann.height, ann.width):
                raise DatasetError(f"{dataset.root / 'Annotations' / (image_id + '.xml')} is for a "
                                   f"{ann.width}x{ann.height} image, but {path} is {image.shape[1]}x{image.shape[0]}")
        except UserError as e:
            run.skipped.append((image_id, str(e)))
            if on_skip is not None:
                on_skip(image_id, str(e))
        else:
            offsets, prep = capture_offsets(model, image)
            layers = layer_records(model, offsets)[::-1]  # top first, as the paper's table
            maps = {layer.name: layer.effective_dilation() for layer in layers}
            run.stats.add_image(maps, prep, ann.boxes(), ann.difficult(), stride=layers[0].feature_stride)
        if progress is not None:
            progress(len(ids))
    if run.stats.images == 0:
        raise UserError(f"none of the {len(ids)} images of split {split!r} could be used; first problem: "
                        f"{run.skipped[0][1]}")
    return run
