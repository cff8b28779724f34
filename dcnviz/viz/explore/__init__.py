"""The ``dcnviz explore`` page: one self-contained HTML file (no server, no network) in which the composed
sampling points of the unit under the mouse are computed live from the model's offset maps.

Python gathers what the page needs from an :class:`~dcnviz.analysis.Inspection` (:func:`page_data`): the
image, the prediction (detections with the RoI parts of each, or the segmentation overlay), every
deformable layer's geometry and offset map, and optionally the plain twin's geometry; :func:`render_page` inlines it with the page's own style and
script (``explore.css``, ``explore.js``, ``page.html`` beside this file). The script reproduces
:func:`dcnviz.analysis.sampling_locations` operation for operation on the same float32 offsets, so a
hovered unit's points equal ``dcnviz offsets --at X,Y``; nothing else about the sampling is precomputed.

Coordinates in the data are those of the analysis JSON files (:mod:`dcnviz.io.analysis_json`): original-
image pixels, pixel k covering [k, k+1); boxes [x1, y1, x2, y2] with inclusive corners; RoI parts as
continuous edges. Offset maps are base64 of little-endian float32 in the model's channel order
(2*G*kh*kw, Ho, Wo).
"""
from __future__ import annotations

import base64
import html
import json
from importlib import resources
from string import Template
from typing import Sequence

import cv2
import numpy as np

from dcnviz.analysis.inspection import DEFAULT_LEVELS
from dcnviz.data.classes import background_ids
from dcnviz.structures import Detections
from dcnviz.viz.draw import class_colors, overlay_segmentation
from dcnviz.viz.effective import WEAKEST, jet, relative

__all__ = ["page_data", "render_page", "render_index", "MAX_DISPLAY_SIDE"]

# The image is embedded at most this large (long side); the page still works in original pixels, so only
# the backdrop of a bigger image loses resolution (a 4000x3000 photo would otherwise add megabytes).
MAX_DISPLAY_SIDE = 2000
JPEG_QUALITY = 90
MARGIN = 0.04  # of the long side, around the image in each view


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


def _jpeg_data_url(image_bgr: np.ndarray) -> str:
    h, w = image_bgr.shape[:2]
    factor = MAX_DISPLAY_SIDE / max(h, w)
    if factor < 1:
        image_bgr = cv2.resize(image_bgr, (max(1, round(w * factor)), max(1, round(h * factor))),
                               interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("OpenCV could not encode the image as JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _float32_b64(array) -> str:
    values = np.ascontiguousarray(np.asarray(array, dtype="<f4"))
    return base64.b64encode(values.tobytes()).decode("ascii")


def _geometry(name: str, geometry) -> dict:
    return {"name": name, "kernel": list(geometry.kernel_size), "dilation": list(geometry.dilation),
            "padding": list(geometry.padding), "stride": list(geometry.stride)}


def _layer(record) -> dict:
    """One :class:`~dcnviz.analysis.LayerRecord`: its geometry, grid, boundary rule, input map size (None
    where the offset map determines it) and offset map."""
    offset = record.offset
    off = offset.detach().cpu().numpy() if hasattr(offset, "detach") else np.asarray(offset)
    return {**_geometry(record.name, record.geometry), "groups": record.geometry.deformable_groups,
            "feature_stride": float(record.feature_stride), "map": list(record.map_size),
            "boundary": record.boundary,
            "input_size": None if record.input_size is None else [int(n) for n in record.input_size],
            "offsets": _float32_b64(off[0] if off.ndim == 4 else off)}


def _effective(unit, points) -> dict:
    """A unit's effective sampling locations (:func:`dcnviz.analysis.effective.effective_sampling_locations`,
    node layer first) as the page shades them: per layer its points (x, y), weights (as in the
    ``effective`` JSON), groups, inside flags, and the colour and opacity of each by its weight relative
    to the layer's own scale (as :func:`dcnviz.viz.effective.draw_weighted_points` shades them)."""
    layers = []
    for pts in points:
        rel = relative(pts.weight)
        mask = np.ones(len(rel)) if pts.mask is None else np.clip(np.asarray(pts.mask, np.float64), 0, 1)
        layers.append({"name": pts.layer, "xy": np.asarray(pts.xy, np.float64).reshape(-1).tolist(),
                       "weight": [float(v) for v in pts.weight], "groups": [int(g) for g in pts.groups],
                       "inside": [int(v) for v in pts.inside], "color": [_hex(c[::-1]) for c in jet(rel)],
                       "opacity": np.round(mask * (WEAKEST + (1 - WEAKEST) * rel), 3).tolist()})
    return {"cell": [int(c) for c in unit.cell], "xy": [float(v) for v in unit.xy], "layers": layers}


def page_data(inspection, *, image_name: str, model_name: str, detections: Sequence[int] = (), plain=None,
              effective: Sequence = (), default_layer: str | None = None, default_levels: int = DEFAULT_LEVELS) -> dict:
    """Everything the page shows, as a JSON-ready dict.

    Args:
        inspection: the model on the image (:func:`dcnviz.analysis.inspect`): the original image, its
            prediction and every deformable layer (bottom -> top).
        detections: indices of the detections to show, in score order (e.g.
            :func:`dcnviz.models.postprocess.select_detections`); each comes with its RoI parts when the
            model has deformable PS RoI pooling (``inspection.has_rois``).
        plain: ``(model name, [LayerGeometry per layer, bottom -> top])`` of a plain twin, or None.
        effective: ``(unit, [EffectivePoints per layer, node layer first])`` pairs of units of the default
            layer whose effective sampling locations the page can shade its points by.
        default_layer, default_levels: what the page starts with (default: the top layer, 3 levels).
    """
    seen, result = inspection, inspection.result
    h, w = seen.image_size
    parts = seen.has_rois and isinstance(result, Detections)
    data = {
        "model": model_name,
        "image": {"name": image_name, "width": int(w), "height": int(h), "scale": float(seen.prep.scale),
                  "src": _jpeg_data_url(seen.image)},
        "layers": [_layer(record) for record in seen.layers],
        "default_layer": default_layer or seen.names[-1],
        "default_levels": int(default_levels),
        "detections": [],
        "segmentation": None,
        "part_geometry": {"trans_std": float(seen.part_geometry.trans_std)} if parts else None,
        "plain": None,
        "task": "detection" if isinstance(result, Detections) else (None if result is None else "segmentation"),
        "effective": [_effective(unit, points) for unit, points in effective],
    }
    if isinstance(result, Detections):
        colors = class_colors(len(result.class_names))
        indices = [int(k) for k in detections]
        rois = seen.detection_rois(indices) if parts else [None] * len(indices)
        for k, roi in zip(indices, rois):
            label = int(result.labels[k])
            data["detections"].append({
                "box": [float(v) for v in result.boxes[k]], "score": float(result.scores[k]), "class_id": label,
                "class_name": result.class_names[label], "color": _hex(colors[label]),
                "parts": None if roi is None else {"roi": roi.parts.roi.tolist(), "bins": roi.parts.bins.tolist(),
                                                   "prob": roi.probability}})
    elif result is not None:
        labels = np.asarray(result.labels)
        counts = np.bincount(labels.ravel(), minlength=len(result.class_names))
        palette = [result.palette[c] if c < len(result.palette) else class_colors(len(result.class_names))[c]
                   for c in range(len(result.class_names))]
        # the classes the overlay tints (not the background), by decreasing area
        skip = set(background_ids(result.class_names))
        present = sorted((c for c in np.flatnonzero(counts[:len(result.class_names)]) if c not in skip),
                         key=lambda c: (-counts[c], c))
        data["segmentation"] = {
            "overlay": _jpeg_data_url(overlay_segmentation(seen.image, result, legend=False)),
            "classes": [{"id": int(c), "name": result.class_names[c], "color": _hex(palette[c]),
                         "fraction": float(counts[c] / labels.size)} for c in present]}
    if plain is not None:
        plain_name, geometries = plain
        data["plain"] = {"model": plain_name, "layers": [_geometry(n, g) for n, g in zip(seen.names, geometries)]}
    return data


def _resource(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _prediction_section(data: dict) -> tuple[str, str, str]:
    """(sidebar section, what the toggle shows, extra legend rows) for detections or a segmentation."""
    if data["segmentation"] is not None:
        rows = "".join(f'<li><span class="swatch" style="background:{c["color"]}"></span>'
                       f'{html.escape(c["name"])} {100 * c["fraction"]:.1f}%</li>'
                       for c in data["segmentation"]["classes"])
        return f"<section><h2>Segmentation</h2><ul>{rows}</ul></section>", "the segmentation", ""
    if data["task"] is None:
        return ('<section><h2>Prediction</h2><p class="help">none: the model has no detection or segmentation '
                'head</p></section>'), "", ""
    count = len(data["detections"])
    section = (f'<section><h2>Detections ({count})</h2>'
               + ('<ul id="dcnviz-detection-list"></ul>' if count else '<p class="help">none</p>') + "</section>")
    legend = ""
    if data["part_geometry"] is not None:
        legend = ('<li><span class="swatch" style="background:#ff0"></span>RoI as pooled</li>'
                  '<li><span class="swatch" style="background:#f00"></span>its parts, moved by the offsets</li>')
    return section, "the detections", legend


def render_page(data: dict) -> str:
    """The self-contained HTML page of :func:`page_data`'s ``data``."""
    section, prediction_name, legend = _prediction_section(data)
    image = data["image"]
    # a margin around the image, so that points just outside it (hollow, mostly) stay visible
    w, h = image["width"], image["height"]
    m = round(MARGIN * max(w, h))
    frame = (f'viewBox="{-m} {-m} {w + 2 * m} {h + 2 * m}" preserveAspectRatio="xMidYMid meet" '
             f'style="aspect-ratio: {w + 2 * m} / {h + 2 * m}; --aspect: {(w + 2 * m) / (h + 2 * m):.6f}"')
    plain_view = ""
    if data["plain"] is not None:
        plain_view = (
            f'<figure><figcaption>{html.escape(data["plain"]["model"])}: the fixed grid of its plain convs'
            f'</figcaption><svg id="dcnviz-plain-view" class="dcnviz-svg" xmlns="http://www.w3.org/2000/svg" {frame}>'
            f'<image class="dcnviz-image" x="0" y="0" width="{image["width"]}" height="{image["height"]}" '
            'preserveAspectRatio="none"/><g class="dcnviz-points"><g class="dcnviz-points-hollow"></g><g class="dcnviz-points-filled"></g></g><g class="dcnviz-unit-layer"></g></svg>'
            '</figure>')
    effective = ""
    if data["effective"]:
        effective = ('<section><h2>Effective weights</h2><label><input type="checkbox" id="dcnviz-effective"> shade '
                     'by effective weight</label><p class="help">Precomputed (--effective-at) for these units of '
                     f'{html.escape(data["default_layer"])}: each layer\'s sampling points where they sample, '
                     'coloured and faded by ||d node / d(dy, dx)|| on the layer\'s own scale (blue small, red '
                     'large), the node layer\'s larger. Click a unit to pin it.</p>'
                     '<ul id="dcnviz-effective-list"></ul></section>')
    click_help = "; a click in a detection box shows its RoI parts" if data["part_geometry"] is not None else ""
    # "</" cannot appear inside a <script> element; JSON allows the escaped form "<\/".
    payload = json.dumps(data, allow_nan=False, separators=(",", ":")).replace("</", "<\\/")
    return Template(_resource("page.html")).substitute(
        title=html.escape(f'{image["name"]} ({image["width"]}x{image["height"]}), {data["model"]}'),
        model=html.escape(data["model"]), width=w, height=h, frame=frame,
        style=_resource("explore.css"), script=_resource("explore.js"), data=payload, plain_view=plain_view,
        prediction_section=section, effective_section=effective, prediction_name=prediction_name, legend_extra=legend, click_help=click_help)


def render_index(pages: Sequence[tuple[str, str, str]]) -> str:
    """A self-contained HTML index of several pages: ``(link relative to the index, image, what the page
    shows)`` each, in the order given."""
    rows = "".join(f'<li><a class="dcnviz-page" href="{html.escape(link)}">{html.escape(image)}</a> '
                   f'<span class="help">{html.escape(shows)}</span></li>' for link, image, shows in pages)
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="generator" content="dcnviz explore">\n'
            f'<title>dcnviz explore: {len(pages)} pages</title>\n<style>\n{_resource("explore.css")}\n'
            'li { margin: 4px 0; } a { color: #8cf; }\n</style>\n</head>\n<body>\n'
            f'<header><h1>dcnviz explore</h1><span class="meta">{len(pages)} pages</span></header>\n'
            f'<main><ul>{rows}</ul></main>\n</body>\n</html>\n')
