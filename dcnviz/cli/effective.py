"""``dcnviz effective``: DCNv2's three views of what a node depends on (effective sampling locations,
effective receptive field, error-bounded saliency region), beside the plain ``offsets`` points, for a
registered model or your own (``--model FILE.py:FUNCTION``), on one image or many.

Output (``OUT`` = runs/effective, runs/effective2, …; NAME mirrors the image as ``offsets`` names it)::

    OUT/NAME_<layer>.png       one row per node: offsets points | effective sampling locations |
                               effective receptive field | saliency region (and .svg/.pdf with --format)
    OUT/NAME_<layer>.json      every node: its value, per layer its points with weights, the region
    OUT/NAME_<layer>_erf.npy   float32 (nodes, H, W): the effective receptive fields at the network input size
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np

from dcnviz.cli.analysis_common import (ImageRun, analysis_options, choose_units, custom_stack, emit_json, load,
                                        load_custom_model, reporter, resolve, sample_images, save_figure, stack,
                                        unit_objects, unit_options, usage_error)
from dcnviz.errors import UserError
from dcnviz.models.custom import is_custom_spec


def _model(model, weights, device, quiet, dtype, layer, levels, channel, detections) -> SimpleNamespace:
    """The model of the run, loaded once, its options checked before any weights are read where they can be."""
    if is_custom_spec(model):
        if detections:
            raise usage_error("--detection", ValueError(f"{model} has no detection head"))
        cm, dev = load_custom_model(model, weights, device, dtype)
        return SimpleNamespace(name=model, device=dev, custom=cm, names=None)
    spec, meta = resolve(model)
    names = stack(meta, layer, levels, 3)
    if detections and spec.task != "detection":
        raise usage_error("--detection", ValueError(f"{spec.name} is a {spec.task} model"))
    width = meta.backbone.get_submodule(f"{names[0]}.branch2b").weight.shape[0]
    if channel is not None and channel >= width:
        raise usage_error("--channel", ValueError(f"{channel}: {names[0]} has {width} channels"))
    net, dev = load(spec, weights, device, quiet, dtype)
    return SimpleNamespace(name=spec.name, device=dev, custom=None, net=net, names=names)


def _image(m, picture, image, layer, levels, channel, detections, at, annotation, conf, several: bool,
           say) -> SimpleNamespace:
    """What the views of one image need: its Inspection, the probe, the network input, the stack, the units.
    A --detection K the image does not have is a usage error of a one-image run, else that image's error."""
    from dcnviz.analysis import inspect
    from dcnviz.analysis.custom import composable_levels
    from dcnviz.analysis.units import KINDS
    from dcnviz.models.capture import probe

    if m.custom is not None:
        cm = m.custom
        seen, data, names = custom_stack(cm, picture, layer, levels, compose=False)
        width = cm.layers[names[0]].weight.shape[0]
        if channel is not None and channel >= width:
            raise usage_error("--channel", ValueError(f"{channel}: {names[0]} has {width} channels"))
        units = choose_units(seen, image, names[0], at, None, 0.0, ("background",), say)
        return SimpleNamespace(seen=seen, probe=cm.probe(data), data=data, names=names,
                               composed=composable_levels(seen, names[0], len(names)), units=units)
    seen = inspect(m.net, picture)
    for k in detections:
        if k >= len(seen.result):
            message = f"{k}: {m.name} found {len(seen.result)} detections in {image}"
            raise UserError(f"--detection {message}") if several else usage_error("--detection", ValueError(message))
    units = [] if detections and not at else choose_units(seen, image, m.names[0], at, annotation, conf, KINDS, say)
    data, _ = m.net.preprocess(picture)
    return SimpleNamespace(seen=seen, probe=probe(m.net), data=data, names=m.names, composed=len(m.names),
                           units=units)


@click.command()
@click.argument("images", nargs=-1, type=click.Path(path_type=Path), metavar="[IMAGE]...")
@click.option("-r", "--recursive", is_flag=True, help="Also search the subfolders of an IMAGE folder.")
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
@analysis_options("effective")
def effective(images, recursive, detections, channel, bound, cell, layer, levels, at, annotation, conf, group, round_,
              model, weights, device, out, exist_ok, quiet, json_out, style, marker_alpha, fmt, show, dtype):
    """DCNv2's effective views of nodes (Zhu et al. 2019, Figs. 1-2).

    A node is the deformable layer --layer's own output at a unit's cell, summed over channels (or
    --channel C); with --detection K, the K-th detection's class score before softmax. Units are at
    --at positions, or picked on the background, a small and a large object as in `dcnviz offsets`.
    For each node, side by side: the plain offsets points (as `dcnviz offsets` draws them); the
    effective sampling locations of --levels layers (every sampling point shaded by ||d node / d(dy, dx)||,
    each layer on its own scale; for a detection also its RoI bins); the effective receptive field
    |d node / d input|; the error-bounded saliency region (smallest region keeping the node within
    --bound when the rest is the mean pixel). For each IMAGE (files, folders, quoted globs; default: the
    bundled samples/synth_*.jpg) writes OUT/NAME_<layer>.png (and .svg/.pdf with --format: the points and
    bins as vector shapes over the embedded pictures), .json and _erf.npy; an image that cannot be read
    (or lacks detection K) among several is reported and skipped, and the run exits 1 at the end.
    --model FILE.py:FUNCTION analyses your own network (see the README).

    \b
    Examples:
      dcnviz effective samples/synth_mixed.jpg
      dcnviz effective samples/synth_stars.jpg --detection 0 --at 200,150
      dcnviz effective photos/ -r --style paper --format svg
      dcnviz effective photo.jpg --model mynet.py:build --weights mynet.safetensors --at 120,80
    """
    from dcnviz.io.images import find_images
    from dcnviz.io.outputs import output_names, run_dir
    from dcnviz.viz.sampling import get_style

    look = get_style(style, marker_alpha)
    images = find_images(images, recursive) if images else sample_images()
    if annotation is not None and len(images) > 1:
        raise click.BadParameter("an annotation belongs to one image; give one IMAGE", param_hint="'--annotation'")
    if is_custom_spec(model) and annotation is not None:
        raise usage_error("--annotation", ValueError("units on objects need a registered model; use --at"))
    say = reporter(quiet)
    run = ImageRun(images, show, say)
    with run_dir(out, exist_ok, (), images) as out_dir:
        m = _model(model, weights, device, quiet, dtype, layer, levels, channel, detections)
        say(f"{m.name} on {m.device}: {len(images)} image{'s' * (len(images) > 1)}")
        stems = output_names(images)
        for i, path, picture in run:
            try:
                s = _image(m, picture, path, layer, levels, channel, detections, at, annotation, conf,
                           len(images) > 1, say)
            except UserError as e:
                run.skip(e)
                continue
            stem = out_dir / stems[path].with_name(f"{stems[path].name}_{s.names[0].replace('.', '_')}")
            record, files = _views(m, s, picture, path, stem, detections, channel, bound, cell, annotation, group,
                                   round_, fmt, look, run.window)
            emit_json(record, json_out)
            say(f"{i}/{len(images)} {path}: {len(record['nodes'])} nodes, {' > '.join(s.names)} -> "
                f"{', '.join(map(str, files))}")
    run.finish(out_dir, say)


def _views(m, s, picture, path, stem: Path, detections, channel, bound, cell, annotation, group, round_, fmt,
           look, window) -> tuple[dict, list[Path]]:
    """Compute the views of every node of one image, write its figure(s), JSON and .npy; (record, files)."""
    from dcnviz.analysis.effective import (Node, effective_bin_locations, effective_receptive_field,
                                           effective_sampling_locations, node_gradients, saliency_region)
    from dcnviz.io.analysis_json import (effective_points_record, image_record, layer_record, npy_bytes,
                                         points_record, region_record, unit_record)
    from dcnviz.io.images import write_bytes_atomic, write_json_atomic
    from dcnviz.viz.effective import effective_views, to_image_size
    from dcnviz.viz.sampling import draw_roi_parts, draw_unit_samples, montage, unit_title
    from dcnviz.viz.vector import Panel

    seen, units = s.seen, s.units
    prep, result = seen.prep, seen.result
    samples = [seen.samples(u, s.names[0], s.composed, group=group, round=round_) for u in units]
    unit_nodes = [Node(s.names[0], u.cell, channel) for u in units]
    det_nodes = [Node(roi=tuple(float(v) for v in np.round(result.boxes[k] * prep.scale)),
                      class_index=int(result.labels[k])) for k in detections]
    grads = (node_gradients(s.probe, s.data, unit_nodes, len(s.names))
             + node_gradients(s.probe, s.data, det_nodes, len(s.names)))
    objects = unit_objects(seen, units, annotation)
    pictures, panels, labels, records, erfs = [], [], [], [], []
    for n, g in enumerate(grads):
        points = effective_sampling_locations(g, prep.scale)
        erf = effective_receptive_field(g)
        region = saliency_region(s.probe, s.data, g.node, erf, bound=bound, cell=cell)
        erfs.append(erf.astype(np.float32))
        bins = None
        if n < len(units):
            u, sample = units[n], samples[n]
            title = unit_title(u, objects[n])
            plain = (draw_unit_samples(picture, sample, look),
                     Panel(picture, "", sample.xy, sample.locations.valid, u.xy, box=u.box))
            record = {**unit_record(u), "channel": channel, "offsets_levels": s.composed,
                      **points_record(sample, (0, 0))}
        else:
            k = detections[n - len(units)]
            box = result.boxes[k]
            name = result.class_names[int(result.labels[k])]
            title = f"detection {k}: {name} {result.scores[k]:.2f}"
            record = {"kind": "detection", "index": k, "box": [float(v) for v in box],
                      "class_id": int(result.labels[k]), "class_name": name, "score": float(result.scores[k]),
                      "roi": list(g.node.roi)}
            if g.roi is not None:
                found = effective_bin_locations(g, prep.scale, s.probe.parts)
                bins = (found.roi, found.bins, found.weight)
                roi, parts = found.roi, found.bins
                record["bins"] = {"roi": found.roi.tolist(), "parts": found.bins.tolist(),
                                  "weight": found.weight.tolist()}
            else:
                roi, parts = [box[0], box[1], box[2] + 1, box[3] + 1], np.zeros((0, 4))
            plain = (draw_roi_parts(picture, roi, parts, name, look=look),
                     Panel(picture, "", roi=roi, bins=parts, label=name))
        area = region.image_area(prep.scale)
        share = area / (picture.shape[0] * picture.shape[1])
        titles = [f"{title}: offsets", "effective sampling locations", "effective receptive field",
                  f"saliency region {area:.0f} px2 ({100 * share:.0f}%)"]
        layers = [(pts.xy, pts.weight, pts.mask) for pts in points]
        views, vectors = effective_views(picture, layers, to_image_size(erf, picture.shape[:2]),
                                         to_image_size(region.mask, picture.shape[:2], nearest=True) > 0.5,
                                         titles[1:], units[n].xy if n < len(units) else None,
                                         bins, look)
        plain[1].title = titles[0]
        pictures += [plain[0], *views]
        panels += [plain[1], *vectors]
        labels += titles
        record.update(value=g.value, layers=[effective_points_record(pts) for pts in points],
                      region=region_record(region, prep.scale), erf_index=n)
        records.append(record)
    points_each = samples[0].xy.shape[-2] if samples else None
    footer = (f"{m.name}, node {s.names[0]}{'' if channel is None else f' channel {channel}'}, "
              f"{' > '.join(s.names)}; " + (f"offsets: {points_each} points per unit; " if samples else "")
              + f"weights per layer: blue small, red top 1%; region within {100 * bound:g}%")
    figure, origins = montage(pictures, labels, columns=4, footer=footer)
    png, npy = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + "_erf.npy")
    files = save_figure(png, figure, panels, fmt, 4, footer, look, window)
    write_bytes_atomic(npy, npy_bytes(np.stack(erfs)))
    for n, record in enumerate(records):
        record["panels"] = [list(o) for o in origins[4 * n:4 * n + 4]]
        if "panel" in record:
            record["panel"] = record["panels"][0]
    meta = image_record(path, seen, m.name, png)
    meta.update(layers=[layer_record(l) for l in seen.stack(s.names[0], len(s.names))],
                input_size=list(prep.input_size), erf=npy.name, group=group,
                interpolation="nearest cell" if round_ else "bilinear", nodes=records)
    write_json_atomic(png.with_suffix(".json"), meta, expand=3)
    return meta, files
