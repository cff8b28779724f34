"""``dcnviz offsets``: composed sampling locations of activation units through stacked deformable layers
(paper Fig. 6), one figure and one JSON per image.

Output (``OUT`` = runs/offsets, runs/offsets2, …; NAME mirrors the image as ``detect`` names it)::

    OUT/NAME_<layer>.png    one panel per unit: red sampling points, the green unit
    OUT/NAME_<layer>.json   layers, units and every point in image pixels (dcnviz.io.analysis_json)
"""
from __future__ import annotations

from pathlib import Path

import click

from dcnviz.cli.analysis_common import (ImageRun, analysis_options, choose_units, custom_stack, emit_json, load,
                                        load_custom_model, reporter, resolve, sample_images, save_figure, stack,
                                        unit_objects, unit_options, usage_error)
from dcnviz.models.custom import is_custom_spec


def check_group(group, groups: list[int], name: str) -> None:
    """--group against the deformable groups of the stack's layers (all the same for --group all)."""
    if isinstance(group, int) and group >= min(groups):
        raise usage_error("--group", ValueError(f"{group}: {name} has {min(groups)} deformable group(s)"))
    if group == "all" and len(set(groups)) > 1:
        raise usage_error("--group", ValueError(f"{name}'s layers have different numbers of deformable groups; "
                                                "use --group mean or a number"))


@click.command()
@click.argument("images", nargs=-1, type=click.Path(path_type=Path), metavar="[IMAGE]...")
@click.option("-r", "--recursive", is_flag=True, help="Also search the subfolders of an IMAGE folder.")
@unit_options("Deformable layers to go down through, from --layer; default: 3 (or as many as there are).")
@analysis_options("offsets")
def offsets(images, recursive, layer, levels, at, annotation, conf, group, round_, model, weights, device, out, exist_ok,
            quiet, json_out, style, marker_alpha, fmt, show, dtype):
    """Where deformable filters sample: the composed sampling locations of activation units (paper Fig. 6).

    For each IMAGE (files, folders, quoted globs; default: the bundled samples/synth_*.jpg) it follows --levels deformable layers down
    from --layer: each unit expands into the 3x3 taps of every layer, each tap moved by its learned
    offset (9**3 = 729 points for 3 levels). Units are given with --at, or picked automatically on the
    background, a small object and a large object of the model's own detections or segmentation (or of
    --annotation). Points are drawn red (hollow where they fall outside a feature map, where the
    operator reads zero), the unit as a green diamond, the object it sits on outlined; titles give the
    object's Table 2 size class. Writes OUT/NAME_<layer>.png (and .svg/.pdf with --format) and .json
    (every unit and point in original-image pixels).

    \b
    Examples:
      dcnviz offsets --layer res5c
      dcnviz offsets photo.jpg --model rfcn_dcn_coco --weights rfcn_dcn_coco.safetensors --at 320,200
    """
    from dcnviz.analysis import inspect
    from dcnviz.analysis.units import KINDS
    from dcnviz.io.analysis_json import offsets_record
    from dcnviz.io.images import find_images, write_json_atomic
    from dcnviz.io.outputs import output_names, run_dir
    from dcnviz.viz.sampling import GROUP_COLOR_NAMES, draw_unit_samples, get_style, montage, unit_title
    from dcnviz.viz.vector import Panel

    look = get_style(style, marker_alpha)
    images = find_images(images, recursive) if images else sample_images()
    if annotation is not None and len(images) > 1:
        raise click.BadParameter("an annotation belongs to one image; give one IMAGE", param_hint="'--annotation'")
    custom = is_custom_spec(model)
    if custom:
        if annotation is not None:
            raise usage_error("--annotation", ValueError("units on objects need a registered model; use --at"))
        name, kinds = model, ("background",)
    else:
        spec, meta = resolve(model)
        names = stack(meta, layer, levels, 3)
        check_group(group, [l.deformable_groups for l in meta.deformable_layers], spec.name)
        name, kinds = spec.name, KINDS
    say = reporter(quiet)
    run = ImageRun(images, show, say)
    with run_dir(out, exist_ok, (), images) as out_dir:
        if custom:
            cm, dev = load_custom_model(model, weights, device, dtype)
            say(f"{name} on {dev}: {len(images)} image{'s' * (len(images) > 1)}")
        else:
            net, dev = load(spec, weights, device, quiet, dtype)
            say(f"{name} on {dev}: {len(images)} image{'s' * (len(images) > 1)}, {' > '.join(names)}")
        stems = output_names(images)
        for i, path, image in run:
            if custom:
                seen, _, names = custom_stack(cm, image, layer, levels)
                check_group(group, [seen.layer(n).geometry.deformable_groups for n in names], name)
            else:
                seen = inspect(net, image)
            groups = seen.layer(names[0]).geometry.deformable_groups
            units = choose_units(seen, path, names[0], at, annotation, conf, kinds, say)
            samples = [seen.samples(u, names[0], len(names), group=group, round=round_) for u in units]
            footer = (f"{name}, {' > '.join(names)}: {samples[0].xy.shape[-2]} points per unit; "
                      "hollow: outside a feature map"
                      + ("; groups " + ", ".join(f"{g} {c}" for g, c in zip(range(groups), GROUP_COLOR_NAMES))
                         if group == "all" and groups > 1 else ""))
            titles = [unit_title(u, what) for u, what in zip(units, unit_objects(seen, units, annotation))]
            figure, origins = montage([draw_unit_samples(image, s, look) for s in samples], titles, footer=footer)
            png = out_dir / stems[path].with_name(f"{stems[path].name}_{names[0].replace('.', '_')}.png")
            panels = [Panel(image, t, s.xy, s.locations.valid, s.unit.xy, box=s.unit.box)
                      for t, s in zip(titles, samples)]
            files = save_figure(png, figure, panels, fmt, None, footer, look, run.window)
            record = offsets_record(path, seen, name, png, seen.stack(names[0], len(names)), samples, origins,
                                    group, round_)
            write_json_atomic(png.with_suffix(".json"), record, expand=3)
            emit_json(record, json_out)
            say(f"{i}/{len(images)} {path}: {', '.join(u.kind for u in units)} units -> "
                f"{', '.join(map(str, files))}")
    run.finish(out_dir, say)
