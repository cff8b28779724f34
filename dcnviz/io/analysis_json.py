"""JSON and CSV records of the analysis commands (``offsets``, ``receptive-field``, ``rois``,
``dilation-stats``): plain dicts of lists and numbers, ready for :func:`dcnviz.io.images.write_json_atomic`.

Coordinates in every record are original-image pixels, continuous, pixel k covering [k, k+1), written
(x, y); feature cells are written (i, j) = (row, column). :data:`COORDINATES` says so in each file.
Numbers are rounded to what the data supports: positions to :data:`PIXEL_DIGITS` decimals (a hundredth of
a pixel, finer than float32 offsets carry at stride 16), probabilities and statistics to
:data:`VALUE_DIGITS`; paths are relative to the working directory (:func:`dcnviz.io.results_json.json_path`).
"""
from __future__ import annotations

import csv
import io
import os

import numpy as np

from dcnviz.io.results_json import json_path

PIXEL_DIGITS = 2
VALUE_DIGITS = 4
COORDINATES = ("points and units: (x, y) in original-image pixels, pixel k covers [k, k+1); feature cell (i, j) "
               "of a map of stride s has its centre at ((j + 0.5) * s / scale, (i + 0.5) * s / scale); "
               "rectangles: [x1, y1, x2, y2] continuous edges; boxes: [x1, y1, x2, y2] 0-based inclusive corners")


def image_record(path: str | os.PathLike, inspection, model: str, figure: str | os.PathLike) -> dict:
    """What every figure record starts with: the image, its size and resize factor, the model, the figure
    (of a :class:`dcnviz.analysis.Inspection`)."""
    h, w = inspection.image_size
    return {"image": json_path(path), "width": int(w), "height": int(h), "scale": float(inspection.prep.scale),
            "model": model, "figure": json_path(figure), "coordinates": COORDINATES}


def _px(values) -> list | float:
    """Image positions rounded to :data:`PIXEL_DIGITS` (a list for arrays)."""
    return np.round(np.asarray(values, np.float64), PIXEL_DIGITS).tolist()


def _value(x: float | None) -> float | None:
    return None if x is None else round(float(x), VALUE_DIGITS)


def layer_record(layer) -> dict:
    """One deformable (or plain) layer (:class:`dcnviz.analysis.LayerRecord`): its name and geometry."""
    g = layer.geometry
    return {"name": layer.name, "kernel_size": list(g.kernel_size), "dilation": list(g.dilation),
            "padding": list(g.padding), "stride": list(g.stride), "deformable_groups": g.deformable_groups,
            "feature_stride": layer.feature_stride}


def unit_record(unit) -> dict:
    """An activation unit (:class:`dcnviz.analysis.Unit`)."""
    return {"kind": unit.kind, "cell": list(unit.cell), "xy": _px(unit.xy),
            "box": None if unit.box is None else _px(unit.box), "bucket": unit.bucket}


def points_record(samples, panel: tuple[int, int]) -> dict:
    """Composed sampling points of one unit (:class:`dcnviz.analysis.UnitSamples`), and where the panel
    showing them starts in the figure (``panel`` (left, top): image position (x, y) is figure pixel
    (left + floor(x), top + floor(y)))."""
    return {"panel": list(panel), "points": _px(samples.xy), "inside": samples.locations.inside.tolist(),
            "valid": samples.locations.valid.tolist()}


def _sampling(group, round_: bool) -> dict:
    return {"group": group, "interpolation": "nearest cell" if round_ else "bilinear"}


def offsets_record(path, inspection, model: str, figure, stack, samples, panels, group, round_: bool) -> dict:
    """``dcnviz offsets``: the ``stack`` (:class:`dcnviz.analysis.LayerRecord` s, top first), how points were
    followed, and per unit its :class:`dcnviz.analysis.UnitSamples` with its panel in the figure."""
    record = image_record(path, inspection, model, figure)
    record.update(layers=[layer_record(layer) for layer in stack], **_sampling(group, round_),
                  bottom_map_size=list(samples[0].locations.map_size),
                  units=[{**unit_record(s.unit), **points_record(s, p)} for s, p in zip(samples, panels)])
    return record


def receptive_field_record(path, inspection, model: str, figure, plain_model: str, stacks: dict, samples: dict,
                           panels: dict, group, round_: bool) -> dict:
    """``dcnviz receptive-field``: per row ("plain", "deformable") its layer stack, and per unit the
    :class:`dcnviz.analysis.UnitSamples` of each row with their panels (``samples[row][k]``, ``panels[row][k]``)."""
    record = image_record(path, inspection, model, figure)
    units = [s.unit for s in next(iter(samples.values()))]
    record.update(plain_model=plain_model, **_sampling(group, round_),
                  layers={row: [layer_record(layer) for layer in stack] for row, stack in stacks.items()},
                  units=[{**unit_record(u), **{row: points_record(samples[row][k], panels[row][k]) for row in samples}}
                         for k, u in enumerate(units)])
    return record


def roi_record(roi, panel: tuple[int, int]) -> dict:
    """One RoI of ``dcnviz rois`` (:class:`dcnviz.analysis.PooledRoI`): the ``box`` asked for (a detection
    or ``--box``; inclusive corners), the class whose offsets move the parts, the detection's own score
    (None for a ``--box``) and the RoI head's probability for the class on this very box
    (``head_probability``, before box regression), the RoI as pooled and its moved and regular parts
    (continuous edges), and where its panel starts in the figure; for FPN the pyramid ``level`` (2..5) it
    was pooled on and that level's ``spatial_scale``."""
    record = {"source": roi.source, "box": _px(roi.box), "class_id": roi.class_id, "class_name": roi.class_name,
              "detection_score": _value(roi.detection_score), "head_probability": _value(roi.probability),
              "panel": list(panel), "roi": _px(roi.parts.roi), "parts": _px(roi.parts.bins),
              "regular_parts": _px(roi.parts.regular)}
    if roi.level is not None:
        record.update(level=roi.level, spatial_scale=roi.spatial_scale)
    return record


def rois_record(path, inspection, model: str, figure, rois, panels, coarse: int | None = None,
                coarse_parts=None) -> dict:
    """``dcnviz rois``: the operator's parameters and every :class:`dcnviz.analysis.PooledRoI` with its panel;
    with ``coarse`` (``--parts K``), each RoI's K x K view (``coarse_parts``, :class:`dcnviz.analysis.RoIParts`)."""
    g = inspection.part_geometry
    record = image_record(path, inspection, model, figure)
    records = [roi_record(r, p) for r, p in zip(rois, panels)]
    if coarse is not None:
        for rec, c in zip(records, coarse_parts):
            rec["coarse"] = {"size": coarse, "rule": f"the {g.part_size}x{g.part_size} offsets averaged over "
                                                      f"{coarse}x{coarse} adaptive windows",
                             "parts": _px(c.bins), "regular_parts": _px(c.regular)}
    # R-FCN's parts move by the classification branch's class-specific offsets; deformable RoI pooling
    # (Faster R-CNN, FPN) has one offset field, shared by every class and both outputs
    record.update(pooled_size=g.pooled_size, part_size=g.part_size, trans_std=g.trans_std,
                  spatial_scale=g.spatial_scale, branch="classification" if g.group_size > 1 else "shared",
                  rois=records)
    return record


def stats_record(summary: dict, config: dict, paper: dict) -> dict:
    """``dcnviz dilation-stats``'s stats.json: the Table 2 ``summary`` ({layer: {bucket: {mean, std, n}}}),
    every rule and setting (``config``) and the paper's values ({layer: {bucket: (mean, std)}}) beside it."""
    summary = {layer: {b: {k: (_value(v) if k in ("mean", "std") else v) for k, v in cell.items()}
                       for b, cell in buckets.items()} for layer, buckets in summary.items()}
    return {"layers": summary, "config": config,
            "paper": {layer: {b: {"mean": m, "std": sd} for b, (m, sd) in cells.items()} for layer, cells in paper.items()}}


def stats_csv(summary: dict, paper: dict) -> str:
    """Long-format CSV of a Table 2 summary ({layer: {bucket: {mean, std, n}}}) with the paper's values
    beside it (empty where the paper has no such layer)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["layer", "bucket", "mean", "std", "n", "paper_mean", "paper_std"])
    for layer, buckets in summary.items():
        for bucket, cell in buckets.items():
            ref = paper.get(layer, {}).get(bucket, ("", ""))
            writer.writerow([layer, bucket, "" if cell["mean"] is None else repr(cell["mean"]),
                             "" if cell["std"] is None else repr(cell["std"]), cell["n"], *ref])
    return buf.getvalue()


def effective_points_record(points) -> dict:
    """One layer's effective sampling locations (:class:`dcnviz.analysis.effective.EffectivePoints`),
    column by column: row m is point m (output cell (i, j), tap k = i*kw + j, deformable group, where it
    samples (x, y), its weight ``||d node / d(dy, dx)||``, whether it is inside the map by the layer's
    boundary rule, and the modulation mask or null)."""
    return {"name": points.layer, "boundary": points.boundary, "cells": points.cells.tolist(),
            "taps": points.taps.tolist(), "groups": points.groups.tolist(), "xy": points.xy.tolist(),
            "weight": points.weight.tolist(), "inside": points.inside.tolist(),
            "mask": None if points.mask is None else points.mask.tolist()}


def region_record(region, scale: float) -> dict:
    """An error-bounded saliency region (:class:`dcnviz.analysis.effective.SaliencyRegion`): its area in
    original-image and network-input pixels, the cells kept and the responses."""
    return {"area": region.image_area(scale), "area_input_pixels": region.area, "cells": region.cells,
            "total_cells": region.total_cells, "cell_size": region.cell_size, "bound": region.bound,
            "response": region.response, "region_response": region.region_response, "error": region.error,
            "evaluations": region.evaluations}


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` in NumPy's .npy format, for :func:`dcnviz.io.images.write_bytes_atomic`."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()
