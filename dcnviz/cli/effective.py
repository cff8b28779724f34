"""``dcnviz effective``: DCNv2's three views of what a node depends on (effective sampling locations,
effective receptive field, error-bounded saliency region), beside the plain ``offsets`` points, for a
registered model or your own (``--model FILE.py:FUNCTION``).

Output (``OUT`` = runs/effective, runs/effective2, …)::

    OUT/NAME_<layer>.png       one row per node: offsets points | effective sampling locations |
                               effective receptive field | saliency region
    OUT/NAME_<layer>.json      every node: its value, per layer its points with weights, the region
    OUT/NAME_<layer>_erf.npy   float32 (nodes, H, W): the effective receptive fields at the network input size
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np

from dcnviz.cli.analysis_common import (analysis_options, choose_units, custom_stack, emit_json, load,
                                        load_custom_model, reporter, resolve, stack, unit_options, usage_error)
from dcnviz.models.custom import is_custom_spec


def _registered(model, weights, device, quiet, dtype, layer, levels, channel, detections, picture, image, at,
                annotation, conf, say) -> SimpleNamespace:
    """Everything the views need of a registered model: its Inspection, probe, input, stack, units."""
    from dcnviz.analysis import inspect
    from dcnviz.analysis.units import KINDS
    from dcnviz.models.capture import probe

    spec, meta = resolve(model)
    names = stack(meta, layer, levels, 3)
    if detections and spec.task != "detection":
        raise usage_error("--detection", ValueError(f"{spec.name} is a {spec.task} model"))
    width = meta.backbone.get_submodule(f"{names[0]}.branch2b").weight.shape[0]
    if channel is not None and channel >= width:
        raise usage_error("--channel", ValueError(f"{channel}: {names[0]} has {width} channels"))
    net, dev = load(spec, weights, device, quiet, dtype)
    seen = inspect(net, picture)
    for k in detections:
        if k >= len(seen.result):
            raise usage_error("--detection", ValueError(f"{k}: {spec.name} found {len(seen.result)} detections "
                                                       f"in {image}"))
    units = [] if detections and not at else choose_units(seen, image, names[0], at, annotation, conf, KINDS, say)
    data, _ = net.preprocess(picture)
    return SimpleNamespace(name=spec.name, device=dev, seen=seen, probe=probe(net), data=data, names=names,
                           composed=len(names), units=units)


def _custom(model, weights, device, quiet, dtype, layer, levels, channel, detections, picture, image, at,
            say) -> SimpleNamespace:
    """The same for a ``FILE.py:FUNCTION`` model (no detections; units at --at or on the background)."""
    from dcnviz.analysis.custom import composable_levels

    if detections:
        raise usage_error("--detection", ValueError(f"{model} has no detection head"))
    cm, dev = load_custom_model(model, weights, device, quiet, dtype)
    seen, data, names = custom_stack(cm, picture, layer, levels, compose=False)
    width = cm.layers[names[0]].weight.shape[0]
    if channel is not None and channel >= width:
        raise usage_error("--channel", ValueError(f"{channel}: {names[0]} has {width} channels"))
    units = choose_units(seen, image, names[0], at, None, 0.0, ("background",), say)
    return SimpleNamespace(name=model, device=dev, seen=seen, probe=cm.probe(data), data=data, names=names,
                           composed=composable_levels(seen, names[0], len(names)), units=units)


@click.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--detection", "detections", type=click.IntRange(min=0), multiple=True, metavar="K",
              help="The K-th detection (0 = highest score) as the node: its class score before softmax "
                   "(repeatable; R-FCN models).")
@click.option("--channel", type=click.IntRange(min=0), metavar="C",
              help="Node = this output channel of the layer instead of the sum over channels.")
@click.option("--bound", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Relative error bound of the saliency region.")
@click.option("--cell", type=click.IntRange(min=1), default=16, show_default=True,
              help="Cell size of the saliency search, in network-input pixels.")
@unit_options("Deformable layers at or below the node's layer whose sampling points are weighed; default: 3.")
# no --style/--format: the heat map and the weight shading have no paper style or vector form yet
@analysis_options("effective", figures=False)
def effective(image, detections, channel, bound, cell, layer, levels, at, annotation, conf, group, round_, model,
              weights, device, out, exist_ok, quiet, json_out, dtype):
    """DCNv2's effective views of nodes (Zhu et al. 2019, Figs. 1-2).

    A node is the deformable layer --layer's own output at a unit's cell, summed over channels (or
    --channel C); with --detection K, the K-th detection's class score before softmax. Units are at
    --at positions, or picked on the background, a small and a large object as in `dcnviz offsets`.
    For each node, side by side: the plain offsets points (as `dcnviz offsets` draws them); the
    effective sampling locations of --levels layers (every sampling point shaded by ||d node / d(dy, dx)||,
    each layer on its own scale; for a detection also its RoI bins); the effective receptive field
    |d node / d input|; the error-bounded saliency region (smallest region keeping the node within
    --bound when the rest is the mean pixel). Writes OUT/NAME_<layer>.png, .json and _erf.npy.
    --model FILE.py:FUNCTION analyses your own network (see the README).

    \b
    Examples:
      dcnviz effective samples/synth_mixed.jpg
      dcnviz effective samples/synth_stars.jpg --detection 0 --at 200,150
      dcnviz effective photo.jpg --model mynet.py:build --weights mynet.safetensors --at 120,80
    """
    from dcnviz.analysis.effective import (Node, effective_bin_locations, effective_receptive_field,
                                           effective_sampling_locations, node_gradients, saliency_region)
    from dcnviz.io.analysis_json import (effective_points_record, image_record, layer_record, npy_bytes,
                                         points_record, region_record, unit_record)
    from dcnviz.io.images import read_image, write_bytes_atomic, write_image_atomic, write_json_atomic
    from dcnviz.io.outputs import run_dir
    from dcnviz.viz.effective import (backdrop, draw_heatmap, draw_region, draw_weighted_bins, draw_weighted_points,
                                      to_image_size)
    from dcnviz.viz.sampling import draw_roi_parts, draw_unit_samples, montage, unit_title

    say = reporter(quiet)
    custom = is_custom_spec(model)
    if custom and annotation is not None:
        raise usage_error("--annotation", ValueError("units on objects need a registered model; use --at"))
    with run_dir(out, exist_ok, (), [image]) as out_dir:
        picture = read_image(image)
        if custom:
            s = _custom(model, weights, device, quiet, dtype, layer, levels, channel, detections, picture, image, at,
                        say)
        else:
            s = _registered(model, weights, device, quiet, dtype, layer, levels, channel, detections, picture, image,
                            at, annotation, conf, say)
        seen, units = s.seen, s.units
        prep, result = seen.prep, seen.result
        samples = [seen.samples(u, s.names[0], s.composed, group=group, round=round_) for u in units]
        unit_nodes = [Node(s.names[0], u.cell, channel) for u in units]
        det_nodes = [Node(roi=tuple(float(v) for v in np.round(result.boxes[k] * prep.scale)),
                          class_index=int(result.labels[k])) for k in detections]
        levels = len(s.names)
        grads = (node_gradients(s.probe, s.data, unit_nodes, levels)
                 + node_gradients(s.probe, s.data, det_nodes, levels))
        say(f"{s.name} on {s.device}: {len(grads)} node{'s' * (len(grads) > 1)}, {' > '.join(s.names)}")

        panels, labels, records, erfs = [], [], [], []
        for n, g in enumerate(grads):
            points = effective_sampling_locations(g, prep.scale)
            erf = effective_receptive_field(g)
            region = saliency_region(s.probe, s.data, g.node, erf, bound=bound, cell=cell)
            erfs.append(erf.astype(np.float32))
            weighted = backdrop(picture)
            for level, pts in list(enumerate(points))[::-1]:  # lowest layer first, the node's layer on top
                weighted = draw_weighted_points(weighted, pts.xy, pts.weight, opacity=pts.mask,
                                                large=level == 0 and not g.node.is_detection)
            if n < len(units):
                u = units[n]
                mark = u.xy
                plain = draw_unit_samples(picture, samples[n])
                title = unit_title(u)
                record = {**unit_record(u), "channel": channel, "offsets_levels": s.composed,
                          **points_record(samples[n], (0, 0))}
            else:
                k = detections[n - len(units)]
                box = result.boxes[k]
                mark = None
                name = result.class_names[int(result.labels[k])]
                title = f"detection {k}: {name} {result.scores[k]:.2f}"
                record = {"kind": "detection", "index": k, "box": [float(v) for v in box],
                          "class_id": int(result.labels[k]), "class_name": name, "score": float(result.scores[k]),
                          "roi": list(g.node.roi)}
                if g.roi is not None:
                    bins = effective_bin_locations(g, prep.scale, s.probe.parts)
                    plain = draw_roi_parts(picture, bins.roi, bins.bins, name)
                    weighted = draw_weighted_bins(weighted, bins.bins, bins.weight, bins.roi)
                    record["bins"] = {"roi": bins.roi.tolist(), "parts": bins.bins.tolist(),
                                      "weight": bins.weight.tolist()}
                else:
                    plain = draw_roi_parts(picture, [box[0], box[1], box[2] + 1, box[3] + 1], np.zeros((0, 4)), name)
            area = region.image_area(prep.scale)
            panels += [plain, draw_weighted_points(weighted, [], [], mark),
                       draw_heatmap(picture, to_image_size(erf, picture.shape[:2]), mark),
                       draw_region(picture, to_image_size(region.mask, picture.shape[:2], nearest=True) > 0.5, mark)]
            share = area / (picture.shape[0] * picture.shape[1])
            labels += [f"{title}: offsets", "effective sampling locations", "effective receptive field",
                       f"saliency region {area:.0f} px2 ({100 * share:.0f}%)"]
            record.update(value=g.value, layers=[effective_points_record(pts) for pts in points],
                          region=region_record(region, prep.scale), erf_index=n)
            records.append(record)
        points_each = samples[0].xy.shape[-2] if samples else None
        footer = (f"{s.name}, node {s.names[0]}{'' if channel is None else f' channel {channel}'}, "
                  f"{' > '.join(s.names)}; " + (f"offsets: {points_each} points per unit; " if samples else "")
                  + f"weights per layer: blue small, red top 1%; region within {100 * bound:g}%")
        figure, origins = montage(panels, labels, columns=4, footer=footer)
        stem = f"{image.stem}_{s.names[0].replace('.', '_')}"
        png, npy = out_dir / f"{stem}.png", out_dir / f"{stem}_erf.npy"
        write_image_atomic(png, figure)
        write_bytes_atomic(npy, npy_bytes(np.stack(erfs)))
        for n, record in enumerate(records):
            record["panels"] = [list(o) for o in origins[4 * n:4 * n + 4]]
            if "panel" in record:
                record["panel"] = record["panels"][0]
        meta = image_record(image, seen, s.name, png)
        meta.update(layers=[layer_record(l) for l in seen.stack(s.names[0], len(s.names))],
                    input_size=list(prep.input_size), erf=npy.name, group=group,
                    interpolation="nearest cell" if round_ else "bilinear", nodes=records)
        write_json_atomic(png.with_suffix(".json"), meta, expand=3)
        emit_json(meta, json_out)
        say(f"{image}: {len(records)} nodes -> {png}")
    say(f"Results saved to {out_dir}")
