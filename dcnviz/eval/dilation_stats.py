"""Effective dilation of every deformable layer over a VOC-layout split (``dcnviz dilation-stats``, paper
Table 2): run the model's backbone on each image, compute :func:`dcnviz.analysis.effective_dilation` per
filter and accumulate it per layer x size bucket of the ground-truth boxes
(:class:`dcnviz.analysis.DilationStats`; every rule is in :data:`dcnviz.analysis.TABLE2_CONFIG`).

Broken entries are skipped and reported, not fatal: an annotation that is missing or malformed, an image
that is missing or unreadable, or an annotation whose size differs from its image (its boxes would be
bucketed against the wrong pixels). The statistics are then over the remaining images, and the caller
lists what was skipped.

The images go through :func:`dcnviz.runner.run` (DataLoader workers, torchrun processes, ``--resume``):
each image's statistics are kept as its own (count, mean, M2) per layer x group x bucket and merged in
image order by Chan's formula (:meth:`DilationStats.merge`), the histograms are summed; so one process,
many, or an interrupted and resumed run give the same statistics, bit for bit.

The model is a registered one (:func:`dcnviz.models.load_model`) or your own
(:class:`dcnviz.models.custom.CustomModel`, ``--model FILE.py:FUNCTION``): its deformable layers are those
its forward calls, named by module path, each bucketed on its own map with its own feature stride (inferred
from the shapes, :func:`dcnviz.analysis.custom.custom_layer_records`), which a run records per layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dcnviz.analysis import DilationStats, layer_records
from dcnviz.analysis.custom import custom_layer_records
from dcnviz.data.datasets import open_split
from dcnviz.errors import DatasetError, UserError
from dcnviz.io.images import read_image
from dcnviz.models.capture import input_offsets
from dcnviz.models.custom import CustomModel
from dcnviz.runner import Dist, PartialState, run
from dcnviz.runner.partial import ids_digest, model_digest

_HIST = "hist/"


@dataclass
class DilationRun:
    """What :func:`dilation_stats` found: the statistics (layers top first), the ids it used, and
    ``skipped`` as (id, one-line reason) pairs; ``strides``: each layer's feature stride (network-input
    pixels per cell of its output map); ``images_run`` and ``seconds``: this run's own work."""

    stats: DilationStats
    ids: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    images_run: int = 0
    seconds: float = 0.0
    strides: dict[str, float] = field(default_factory=dict)


class DilationJob:
    """One image of Table 2 (a :class:`dcnviz.runner.Job`): read and check it in a worker, then the
    backbone's offsets, each filter's effective dilation and its bucket here."""

    def __init__(self, model, split, ids: list[str]):
        self.model, self.split, self.ids = model, split, ids

    def name(self, index: int) -> str:
        return self.ids[index]

    def load(self, index: int) -> dict:
        image_id = self.ids[index]
        ann = self.split.annotation(image_id)
        path = self.split.image_path(image_id)
        image = read_image(path)
        if image.shape[:2] != (ann.height, ann.width):
            raise DatasetError(f"{self.split.root / 'Annotations' / (image_id + '.xml')} is for a "
                               f"{ann.width}x{ann.height} image, but {path} is {image.shape[1]}x{image.shape[0]}")
        data, prep = self.model.preprocess(image)
        return {"data": data, "prep": prep, "boxes": ann.boxes(), "difficult": ann.difficult()}

    def step(self, item: dict):
        if isinstance(self.model, CustomModel):
            layers = custom_layer_records(self.model, item["data"])
        else:
            layers = layer_records(self.model, input_offsets(self.model, item["data"]))
        layers = layers[::-1]  # top first, as Table 2
        maps = {layer.name: layer.effective_dilation() for layer in layers}
        strides = {layer.name: float(layer.feature_stride) for layer in layers}
        one = DilationStats()
        one.add_image(maps, item["prep"], item["boxes"], item["difficult"], stride=strides)
        state = one.state()["layers"]
        for name, acc in state.items():
            acc["stride"] = strides[name]  # kept with the image's record, so a resumed run knows it too
        return state, {_HIST + name: acc.pop("hist") for name, acc in state.items()}


def merge(records, totals) -> tuple[DilationStats, dict[str, float]]:
    """The statistics of per-image ``records`` (in image order) and the summed histograms ``totals``, and
    each layer's feature stride."""
    stats, strides = DilationStats(), {}
    bins = {"hist_max": float(stats.edges[-1]), "hist_bins": len(stats.edges) - 1, "images": 1}
    for layers in records:
        stats.merge(DilationStats.from_state({**bins, "layers": layers}))
        strides.update({name: acc["stride"] for name, acc in layers.items() if "stride" in acc})
    state = stats.state()
    for name, acc in state["layers"].items():
        acc["hist"] = totals[_HIST + name]
    return DilationStats.from_state(state), strides


def dilation_stats(model, data, split: str = "test", limit: int | None = None, *, ctx: Dist | None = None,
                   workers: int = 0, out_dir=None, config: dict | None = None, resume: bool = False,
                   save_every: int = 10, quiet: bool = True) -> DilationRun | None:
    """Table 2 statistics of ``model`` (from :func:`dcnviz.models.load_model`, with deformable layers, or a
    :class:`~dcnviz.models.custom.CustomModel`) on the
    first ``limit`` images (all if None) of ``split`` of the dataset folder ``data`` (a layout with boxes,
    :func:`dcnviz.data.datasets.open_split`).

    ``ctx``, ``workers``, ``resume``, ``save_every``: see :func:`dcnviz.runner.run` (default: one process, no
    workers); with ``out_dir`` the partial state is kept in ``out_dir/partial``, for a run defined by
    ``config`` (the options that change the result) with this model, dataset, split and images (the caller
    removes it with :func:`~dcnviz.runner.partial.discard` once its final files are written);
    ``quiet=False`` shows the progress. Broken entries are reported
    on stderr and listed in ``skipped``. Returns None on ranks other than 0. Raises
    :class:`~dcnviz.errors.UserError` when the folder or split cannot be used, or when no image could be used."""
    custom = isinstance(model, CustomModel)
    if not (model.layers if custom else model.deformable_layers):
        raise UserError("the model has no deformable conv layers")
    dataset = open_split(data, split, "detection")
    ids = dataset.ids[:limit]
    if not ids:
        raise UserError(f"split {split!r} of {data} lists no images")
    state = None
    if out_dir is not None:
        digest = model_digest(model.module if custom else model)
        state = PartialState(out_dir, {"command": "dilation-stats", **(config or {}), "weights_sha256": digest,
                                       "dataset": str(Path(data).resolve()), "layout": dataset.layout, "split": split,
                                       "limit": limit, "images": len(ids), "ids_sha256": ids_digest(ids)})
    outcome = run(DilationJob(model, dataset, ids), len(ids), ctx or Dist(), workers=workers, state=state,
                  resume=resume, save_every=save_every, desc="dilation-stats", quiet=quiet)
    if outcome is None:
        return None
    stats, strides = merge(outcome.records.values(), outcome.totals)
    skipped = [(ids[i], e) for i, e in outcome.errors.items()]
    if stats.images == 0:
        raise UserError(f"none of the {len(ids)} images of split {split!r} could be used; first problem: "
                        f"{skipped[0][1]}")
    return DilationRun(stats, ids, skipped, outcome.images, outcome.seconds, strides)
