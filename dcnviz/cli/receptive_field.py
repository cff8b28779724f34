"""``dcnviz receptive-field``: the fixed sampling grid of a plain model next to the adaptive one of its
deformable twin (paper Fig. 5), for units on a large object and on the background.

Output (``OUT`` = runs/receptive-field, …)::

    OUT/NAME_<layer>.png    top row: the plain model; bottom row: the deformable model; one column per unit
    OUT/NAME_<layer>.json   both models' layers, the units and every point in image pixels
"""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from dcnviz.cli.analysis_common import (ImageRun, analysis_options, choose_units, emit_json, load, meta_model,
                                        reporter, resolve, save_figure, stack, unit_objects, unit_options,
                                        usage_error)
from dcnviz.cli.common import resolve_model

KINDS = ("large", "background")


def _plain_geometry(spec, plain: str | None, meta, names: list[str]):
    """Geometry of the plain twin's convs at the places of the layers ``names`` (read from its network; a
    plain conv samples a fixed grid whatever its weights, so they are not loaded)."""
    from dcnviz.analysis import LayerGeometry
    from dcnviz.models.capture import short_name, twin_convs

    if plain is None and not spec.twin:
        raise click.BadParameter(f"{spec.name!r} has no registered plain twin; name one with --plain",
                                 param_hint="'--model'")
    plain_spec = resolve_model(plain or spec.twin, None)
    layers = [next(l for l in meta.deformable_layers if short_name(l) == n) for n in names]
    try:
        convs = twin_convs(meta_model(plain_spec), layers)
    except ValueError as e:
        e = ValueError(f"{plain_spec.name!r} is not a plain twin of {spec.name}: {e}")
        raise usage_error("--plain", e) from None
    return plain_spec, [LayerGeometry.from_module(c) for c in convs]


def _plain_inspection(seen, stack_, geometries):
    """The plain twin as an :class:`~dcnviz.analysis.Inspection`: its convs (``geometries``, top first) at
    the places of ``stack_`` with zero offsets (one group), on the same maps."""
    from dcnviz.analysis import Inspection, LayerRecord

    layers = [LayerRecord(l.name, g, l.feature_stride,
                          np.zeros((2 * g.kernel_size[0] * g.kernel_size[1],) + l.map_size))
              for l, g in zip(stack_, geometries)]
    return Inspection(layers[::-1], seen.prep, seen.image)


@click.command("receptive-field")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="IMAGE...")
@click.option("--plain", metavar="NAME", help="The plain model to compare with; default: the model's registered twin.")
@click.option("-r", "--recursive", is_flag=True, help="Also search the subfolders of an IMAGE folder.")
@unit_options("Deformable layers to go down through, from --layer; default: 2, as in the paper's figure.")
@analysis_options("receptive-field")
def receptive_field(images, plain, recursive, layer, levels, at, annotation, conf, group, round_, model, weights,
                    device, out, exist_ok, quiet, json_out, style, marker_alpha, fmt, show, dtype):
    """Fixed vs adaptive receptive field (paper Fig. 5): the sampling points of the same units through the
    plain model's ordinary convs (top row) and its deformable twin's deformable convs (bottom row).

    IMAGE is an image file, a folder or a quoted glob, or several. Units sit on a large object and on the
    background of the deformable model's own detections or segmentation (or of --annotation), or at --at
    positions; --levels layers down from --layer (default 2: 81 points per unit). The plain model defaults
    to the registered twin (rfcn_dcn_synth -> rfcn_synth, deeplab_dcn_synth -> deeplab_synth,
    rfcn_dcn_coco -> rfcn_coco, ...); its weights are not needed. Writes OUT/NAME_<layer>.png (and
    .svg/.pdf with --format) and .json.

    \b
    Examples:
      dcnviz receptive-field samples/synth_rings.jpg
      dcnviz receptive-field street.png --model deeplab_dcn_cityscapes --weights deeplab.safetensors --at 900,500
    """
    from dcnviz.analysis import inspect
    from dcnviz.io.analysis_json import receptive_field_record
    from dcnviz.io.images import find_images, write_json_atomic
    from dcnviz.io.outputs import output_names, run_dir
    from dcnviz.viz.sampling import draw_unit_samples, get_style, montage, unit_title
    from dcnviz.viz.vector import Panel

    look = get_style(style, marker_alpha)
    spec, meta = resolve(model)
    names = stack(meta, layer, levels, 2)
    plain_spec, plain_geoms = _plain_geometry(spec, plain, meta, names)
    images = find_images(images, recursive)  # after the checks of the options, which need no file
    if annotation is not None and len(images) > 1:
        raise click.BadParameter("an annotation belongs to one image; give one IMAGE", param_hint="'--annotation'")
    say = reporter(quiet)
    run = ImageRun(images, show, say)
    with run_dir(out, exist_ok, (), images) as out_dir:
        net, dev = load(spec, weights, device, quiet, dtype)
        say(f"{spec.name} on {dev}: {len(images)} image{'s' * (len(images) > 1)}, {' > '.join(names)}")
        stems = output_names(images)
        for i, image, picture in run:
            seen = inspect(net, picture)
            units = choose_units(seen, image, names[0], at, annotation, conf, KINDS, say)
            deformable = seen.stack(names[0], len(names))
            plain_seen = _plain_inspection(seen, deformable, plain_geoms)
            # the plain convs have one group: follow it however the deformable groups are followed
            views = {"plain": (plain_spec.name, plain_seen, group if group in ("all", "mean") else 0),
                     "deformable": (spec.name, seen, group)}
            samples = {row: [view.samples(u, names[0], len(names), group=g, round=round_) for u in units]
                       for row, (_, view, g) in views.items()}
            whats = unit_objects(seen, units, annotation)
            titles = [f"{views[row][0]}: {unit_title(u, what)}" for row in views for u, what in zip(units, whats)]
            footer = (f"{' > '.join(names)}: {samples['deformable'][0].xy.shape[-2]} points per unit; top: plain "
                      "convs, bottom: deformable")
            figure, origins = montage([draw_unit_samples(picture, s, look) for row in views for s in samples[row]],
                                      titles, columns=len(units), footer=footer)
            png = out_dir / stems[image].with_name(f"{stems[image].name}_{names[0]}.png")
            panels = [Panel(picture, t, s.xy, s.locations.valid, s.unit.xy, box=s.unit.box)
                      for t, s in zip(titles, [s for row in views for s in samples[row]])]
            files = save_figure(png, figure, panels, fmt, len(units), footer, look, run.window)
            stacks = {"plain": plain_seen.stack(names[0], len(names)), "deformable": deformable}
            record = receptive_field_record(image, seen, spec.name, png, plain_spec.name, stacks, samples,
                                            {row: origins[r * len(units):(r + 1) * len(units)]
                                             for r, row in enumerate(views)}, group, round_)
            write_json_atomic(png.with_suffix(".json"), record, expand=3)
            emit_json(record, json_out)
            say(f"{i}/{len(images)} {image}: {', '.join(u.kind for u in units)} units, {plain_spec.name} vs "
                f"{spec.name} -> {', '.join(map(str, files))}")
    run.finish(out_dir, say)
