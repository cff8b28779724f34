"""JSON and CSV records of the analysis commands (``offsets``, ``receptive-field``, ``rois``,
``dilation-stats``): plain dicts of lists and numbers, ready for :func:`dcnviz.io.images.write_json_atomic`.

Coordinates in every record are original-image pixels, continuous, pixel k covering [k, k+1), written
(x, y); feature cells are written (i, j) = (row, column). :data:`COORDINATES` says so in each file.
"""
from __future__ import annotations

import csv
import io
import os

import numpy as np

COORDINATES = ("points and units: (x, y) in original-image pixels, pixel k covers [k, k+1); feature cell (i, j) "
               "of a map of stride s has its centre at ((j + 0.5) * s / scale, (i + 0.5) * s / scale); "
               "rectangles: [x1, y1, x2, y2] continuous edges; boxes: [x1, y1, x2, y2] 0-based inclusive corners")


def image_record(path: str | os.PathLike, image: np.ndarray, prep, model: str, figure: str | os.PathLike) -> dict:
    """What every figure record starts with: the image, its size and resize factor, the model, the figure."""
    h, w = image.shape[:2]
    return {"image": os.fspath(path), "width": int(w), "height": int(h), "scale": float(prep.scale),
            "model": model, "figure": os.fspath(figure), "coordinates": COORDINATES}


def layer_record(name: str, geometry, feature_stride: int) -> dict:
    """One deformable (or plain) layer: its name and geometry (:class:`dcnviz.analysis.LayerGeometry`)."""
    return {"name": name, "kernel_size": list(geometry.kernel_size), "dilation": list(geometry.dilation),
            "padding": list(geometry.padding), "stride": list(geometry.stride),
            "deformable_groups": geometry.deformable_groups, "feature_stride": feature_stride}


def unit_record(unit) -> dict:
    """An activation unit (:class:`dcnviz.analysis.units.Unit`)."""
    return {"kind": unit.kind, "cell": list(unit.cell), "xy": list(unit.xy),
            "box": None if unit.box is None else list(unit.box), "bucket": unit.bucket}


def points_record(locations, xy: np.ndarray, panel: tuple[int, int]) -> dict:
    """Composed sampling points of one unit (:class:`dcnviz.analysis.SamplingLocations` and their image
    positions ``xy``), and where the panel showing them starts in the figure (``panel`` (left, top): image
    position (x, y) is figure pixel (left + floor(x), top + floor(y)))."""
    return {"panel": list(panel), "points": xy.tolist(), "inside": locations.inside.tolist(),
            "valid": locations.valid.tolist()}


def roi_record(source: str, box, class_id: int, class_names, score: float, detection_score: float | None,
               parts, panel: tuple[int, int]) -> dict:
    """One RoI of ``dcnviz rois``: the ``box`` asked for (a detection or ``--box``; inclusive corners), the
    class whose offsets move the parts, the head's probability for it on this RoI, the RoI as pooled and
    its moved and regular parts (:class:`dcnviz.analysis.RoIParts`, continuous edges), and where its
    panel starts in the figure."""
    def edges(rects) -> list:
        return np.asarray(rects, np.float64).tolist()

    return {"source": source, "box": edges(box), "class_id": int(class_id), "class_name": class_names[class_id],
            "score": float(score), "detection_score": None if detection_score is None else float(detection_score),
            "panel": list(panel), "roi": edges(parts.roi), "parts": edges(parts.bins),
            "regular_parts": edges(parts.regular)}


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
