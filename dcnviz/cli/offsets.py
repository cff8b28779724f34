"""``dcnviz offsets``: composed sampling locations of activation units through stacked deformable layers
(paper Fig. 6), one figure and one JSON per image.

Output (``OUT`` = runs/offsets, runs/offsets2, …; NAME mirrors the image as ``detect`` names it)::

    OUT/NAME_<layer>.png    one panel per unit: red sampling points, the green unit
    OUT/NAME_<layer>.json   layers, units and every point in image pixels (dcnviz.io.analysis_json)
"""
from __future__ import annotations

from pathlib import Path

import click

from dcnviz.cli.analysis_common import (analysis_options, choose_units, load, reporter, resolve, sample_images, stack,
                                        unit_options, usage_error)
from dcnviz.errors import ImageError


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
    from dcnviz.analysis import inspect
    from dcnviz.analysis.units import KINDS
    from dcnviz.io.analysis_json import offsets_record
    from dcnviz.io.images import find_images, read_image, write_image_atomic, write_json_atomic
    from dcnviz.io.outputs import output_names, run_dir
    from dcnviz.viz.sampling import GROUP_COLOR_NAMES, draw_unit_samples, montage, unit_title

    images = find_images(images) if images else sample_images()
    if annotation is not None and len(images) > 1:
        raise click.BadParameter("an annotation belongs to one image; give one IMAGE", param_hint="'--annotation'")
    spec, meta = resolve(model)
    names = stack(meta, layer, levels, 3)
    groups = meta.deformable_layers[0].deformable_groups
    if isinstance(group, int) and group >= groups:
        raise usage_error("--group", ValueError(f"{group}: {spec.name} has {groups} deformable group(s)"))
    say = reporter(quiet)
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
            seen = inspect(net, image)
            units = choose_units(seen, path, names[0], at, annotation, conf, KINDS, say)
            samples = [seen.samples(u, names[0], len(names), group=group, round=round_) for u in units]
            footer = (f"{spec.name}, {' > '.join(names)}: {samples[0].xy.shape[-2]} points per unit; "
                      "hollow: outside a feature map"
                      + ("; groups " + ", ".join(f"{g} {c}" for g, c in zip(range(groups), GROUP_COLOR_NAMES))
                         if group == "all" and groups > 1 else ""))
            figure, origins = montage([draw_unit_samples(image, s) for s in samples], [unit_title(u) for u in units],
                                      footer=footer)
            png = out_dir / stems[path].with_name(f"{stems[path].name}_{names[0]}.png")
            write_image_atomic(png, figure)
            record = offsets_record(path, seen, spec.name, png, seen.stack(names[0], len(names)), samples, origins,
                                    group, round_)
            write_json_atomic(png.with_suffix(".json"), record, expand=3)
            say(f"{i}/{len(images)} {path}: {', '.join(u.kind for u in units)} units -> {png}")
    if failed < len(images):
        say(f"Results saved to {out_dir}")
    if failed:
        raise click.exceptions.Exit(1)
