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
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dcnviz.analysis import DilationStats, layer_records
from dcnviz.data.datasets import open_split
from dcnviz.errors import DatasetError, UserError
from dcnviz.io.images import read_image
from dcnviz.models.capture import input_offsets
from dcnviz.runner import Dist, PartialState, run
from dcnviz.runner.partial import ids_digest, model_digest

_HIST = "hist/"


@dataclass
class DilationRun:
    """What :func:`dilation_stats` found: the statistics (layers top first), the ids it used, and
    ``skipped`` as (id, one-line reason) pairs; ``images_run`` and ``seconds``: this run's own work."""

    stats: DilationStats
    ids: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    images_run: int = 0
    seconds: float = 0.0


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
        layers = layer_records(self.model, input_offsets(self.model, item["data"]))[::-1]  # top first, as Table 2
        maps = {layer.name: layer.effective_dilation() for layer in layers}
        one = DilationStats()
        one.add_image(maps, item["prep"], item["boxes"], item["difficult"],
                      stride={layer.name: layer.feature_stride for layer in layers})
        layers = one.state()["layers"]
        return layers, {_HIST + name: acc.pop("hist") for name, acc in layers.items()}


def merge(records, totals) -> DilationStats:
    """The statistics of per-image ``records`` (in image order) and the summed histograms ``totals``."""
    stats = DilationStats()
    bins = {"hist_max": float(stats.edges[-1]), "hist_bins": len(stats.edges) - 1, "images": 1}
    for layers in records:
        stats.merge(DilationStats.from_state({**bins, "layers": layers}))
    state = stats.state()
    for name, acc in state["layers"].items():
        acc["hist"] = totals[_HIST + name]
    return DilationStats.from_state(state)


def dilation_stats(model, data, split: str = "test", limit: int | None = None, *, ctx: Dist | None = None,
                   workers: int = 0, out_dir=None, config: dict | None = None, resume: bool = False,
                   save_every: int = 10, quiet: bool = True) -> DilationRun | None:
    """Table 2 statistics of ``model`` (from :func:`dcnviz.models.load_model`, with deformable layers) on the
    first ``limit`` images (all if None) of ``split`` of the dataset folder ``data`` (a layout with boxes,
    :func:`dcnviz.data.datasets.open_split`).

    ``ctx``, ``workers``, ``resume``, ``save_every``: see :func:`dcnviz.runner.run` (default: one process, no
    workers); with ``out_dir`` the partial state is kept in ``out_dir/partial``, for a run defined by
    ``config`` (the options that change the result) with this model, dataset, split and images (the caller
    removes it with :func:`~dcnviz.runner.partial.discard` once its final files are written);
    ``quiet=False`` shows the progress. Broken entries are reported
    on stderr and listed in ``skipped``. Returns None on ranks other than 0. Raises
    :class:`~dcnviz.errors.UserError` when the folder or split cannot be used, or when no image could be used."""
    if not model.deformable_layers:
        raise UserError("the model has no deformable conv layers")
    dataset = open_split(data, split, "detection")
    ids = dataset.ids[:limit]
    if not ids:
        raise UserError(f"split {split!r} of {data} lists no images")
    state = None
    if out_dir is not None:
        state = PartialState(out_dir, {"command": "dilation-stats", **(config or {}), "weights_sha256": model_digest(model),
                                       "dataset": str(Path(data).resolve()), "layout": dataset.layout, "split": split,
                                       "limit": limit, "images": len(ids), "ids_sha256": ids_digest(ids)})
    outcome = run(DilationJob(model, dataset, ids), len(ids), ctx or Dist(), workers=workers, state=state,
                  resume=resume, save_every=save_every, desc="dilation-stats", quiet=quiet)
    if outcome is None:
        return None
    stats = merge(outcome.records.values(), outcome.totals)
    skipped = [(ids[i], e) for i, e in outcome.errors.items()]
    if stats.images == 0:
        raise UserError(f"none of the {len(ids)} images of split {split!r} could be used; first problem: "
                        f"{skipped[0][1]}")
    return DilationRun(stats, ids, skipped, outcome.images, outcome.seconds)
