"""``dcnviz offsets``: composed sampling locations of activation units through stacked deformable layers
(paper Fig. 6), one figure and one JSON per image.

Output (``OUT`` = runs/offsets, runs/offsets2, …; NAME mirrors the image as ``detect`` names it)::

    OUT/NAME_<layer>.png    one panel per unit: red sampling points, the green unit
    OUT/NAME_<layer>.json   layers, units and every point in image pixels (dcnviz.io.analysis_json)
"""
from __future__ import annotations

from pathlib import Path

import click

from dcnviz.cli.analysis_common import (analysis_options, geometry, load, points_per_unit, predict_units, reporter,
                                        resolve, sample_images, stack, titles, unit_options, unit_points,
                                        usage_error)
from dcnviz.errors import ImageError

KINDS = ("background", "small", "large")


@click.command()
@click.argument("images", nargs=-1, type=click.Path(path_type=Path), metavar="[IMAGE]...")
@unit_options("Deformable layers to go down through, from --layer; default: 3 (or as many as there are).")
@analysis_options("offsets")
def offsets(images, layer, levels, at, annotation, conf, group, round_, model, weights, device, out, exist_ok,
            quiet):
    """Where deformable filters sample: the composed sampling locations of activation units (paper Fig. 6).

    For each IMAGE (default: the bundled samples/synth_*.jpg) it follows --levels deformable layers down
    from --layer: each unit expands into the 3x3 taps of every layer, each tap moved by its learned
    offset (9**3 = 729 points for 3 levels). Units are given with --at, or picked automatically on the
    background, a small object and a large object of the model's own detections or segmentation (or of
    --annotation). Points are drawn red (hollow where they fall outside a feature map, where the
    operator reads zero), the unit green. Writes OUT/NAME_<layer>.png and .json (every unit and point in
    original-image pixels).

    \b
    Examples:
      dcnviz offsets --layer res5c
      dcnviz offsets photo.jpg --model rfcn_dcn_coco --weights rfcn_dcn_coco.safetensors --at 320,200
    """
    from dcnviz.io.analysis_json import image_record, layer_record, points_record, unit_record
    from dcnviz.io.images import find_images, read_image, write_image_atomic, write_json_atomic
    from dcnviz.io.outputs import output_names, run_dir
    from dcnviz.models.capture import short_name
    from dcnviz.viz.sampling import GROUP_COLOR_NAMES, draw_sampling_points, montage

    images = find_images(images) if images else sample_images()
    if annotation is not None and len(images) > 1:
        raise click.BadParameter("an annotation belongs to one image; give one IMAGE", param_hint="'--annotation'")
    spec, meta = resolve(model)
    layers = stack(meta, layer, levels, 3)
    geoms = [geometry(l) for l in layers]
    groups = layers[0].deformable_groups
    if isinstance(group, int) and group >= groups:
        raise usage_error("--group", ValueError(f"{group}: {spec.name} has {groups} deformable group(s)"))
    names = [short_name(l) for l in layers]
    say = reporter(quiet)
    stride = layers[-1].feature_stride
    footer = (f"{spec.name}, {' > '.join(names)}: {points_per_unit(geoms)} points per unit; "
              "hollow: outside a feature map"
              + ("; groups " + ", ".join(f"{g} {c}" for g, c in zip(range(groups), GROUP_COLOR_NAMES))
                 if group == "all" and groups > 1 else ""))
    failed = 0
    with run_dir(out, exist_ok, (), images) as out_dir:
        net, dev = load(spec, weights, device, quiet)
        say(f"{spec.name} on {dev}: {len(images)} image{'s' * (len(images) > 1)}, {' > '.join(names)}")
        stems = output_names(images)
        for i, path in enumerate(images, 1):
            try:
                image = read_image(path)
            except ImageError as e:
                failed += 1
                click.echo(f"Error: {e}" + ("; skipped" if len(images) > 1 else ""), err=True)
                continue
            result, units, offs = predict_units(net, image, path, layers, at, annotation, conf, KINDS, say)
            found, xys = unit_points(offs, geoms, units, result.prep, stride, group, round_)
            panels = [draw_sampling_points(image, xy, f.valid, u.xy) for u, f, xy in zip(units, found, xys)]
            figure, origins = montage(panels, titles(units), footer=footer)
            png = out_dir / stems[path].with_name(f"{stems[path].name}_{names[0]}.png")
            write_image_atomic(png, figure)
            record = image_record(path, image, result.prep, spec.name, png)
            record.update(layers=[layer_record(n, g, l.feature_stride) for n, g, l in zip(names, geoms, layers)],
                          group=group, interpolation="nearest cell" if round_ else "bilinear",
                          bottom_map_size=list(found[0].map_size),
                          units=[{**unit_record(u), **points_record(f, xy, o)} for u, f, xy, o in
                                 zip(units, found, xys, origins)])
            write_json_atomic(png.with_suffix(".json"), record, expand=3)
            say(f"{i}/{len(images)} {path}: {', '.join(u.kind for u in units)} units -> {png}")
    if failed < len(images):
        say(f"Results saved to {out_dir}")
    if failed:
        raise click.exceptions.Exit(1)
