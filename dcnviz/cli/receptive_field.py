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

from dcnviz.cli.analysis_common import (analysis_options, geometry, load, meta_model, points_per_unit, predict_units,
                                        reporter, resolve, stack, titles, unit_options, unit_points, usage_error)
from dcnviz.cli.common import resolve_model

KINDS = ("large", "background")


def _plain_geometry(spec, plain: str | None, layers):
    """Geometry of the plain twin's convs at the places of ``layers`` (read from its network; a plain conv
    samples a fixed grid whatever its weights, so they are not loaded)."""
    from dcnviz.analysis import LayerGeometry
    from dcnviz.models.capture import twin_convs

    if plain is None and not spec.twin:
        raise click.BadParameter(f"{spec.name!r} has no registered plain twin; name one with --plain",
                                 param_hint="'--model'")
    plain_spec = resolve_model(plain or spec.twin, None)
    try:
        convs = twin_convs(meta_model(plain_spec), layers)
    except ValueError as e:
        e = ValueError(f"{plain_spec.name!r} is not a plain twin of {spec.name}: {e}")
        raise usage_error("--plain", e) from None
    return plain_spec, [LayerGeometry.from_module(c) for c in convs]


@click.command("receptive-field")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--plain", metavar="NAME", help="The plain model to compare with; default: the model's registered twin.")
@unit_options("Deformable layers to go down through, from --layer; default: 2, as in the paper's figure.")
@analysis_options("receptive-field")
def receptive_field(image, plain, layer, levels, at, annotation, conf, group, round_, model, weights, device, out,
                    exist_ok, quiet):
    """Fixed vs adaptive receptive field (paper Fig. 5): the sampling points of the same units through the
    plain model's ordinary convs (top row) and its deformable twin's deformable convs (bottom row).

    Units sit on a large object and on the background of the deformable model's own detections or
    segmentation (or of --annotation), or at --at positions; --levels layers down from --layer (default
    2: 81 points per unit). The plain model defaults to the registered twin (rfcn_dcn_synth ->
    rfcn_synth, deeplab_dcn_synth -> deeplab_synth, rfcn_dcn_coco -> rfcn_coco, ...); its weights are not
    needed. Writes OUT/NAME_<layer>.png and .json.

    \b
    Examples:
      dcnviz receptive-field samples/synth_rings.jpg
      dcnviz receptive-field street.png --model deeplab_dcn_cityscapes --weights deeplab.safetensors --at 900,500
    """
    from dcnviz.io.analysis_json import image_record, layer_record, points_record, unit_record
    from dcnviz.io.images import read_image, write_image_atomic, write_json_atomic
    from dcnviz.io.outputs import run_dir
    from dcnviz.models.capture import short_name
    from dcnviz.viz.sampling import draw_sampling_points, montage

    spec, meta = resolve(model)
    layers = stack(meta, layer, levels, 2)
    geoms = [geometry(l) for l in layers]
    plain_spec, plain_geoms = _plain_geometry(spec, plain, layers)
    names = [short_name(l) for l in layers]
    say = reporter(quiet)
    stride = layers[-1].feature_stride
    with run_dir(out, exist_ok, (), [image]) as out_dir:
        net, dev = load(spec, weights, device, quiet)
        picture = read_image(image)
        result, units, offs = predict_units(net, picture, image, layers, at, annotation, conf, KINDS, say)
        zeros = [np.zeros((2 * g.kernel_size[0] * g.kernel_size[1],) + tuple(o.shape[-2:])) for g, o in
                 zip(plain_geoms, offs)]
        # the plain convs have one group: follow it however the deformable groups are followed
        plain_group = group if group in ("all", "mean") else 0
        rows = {"plain": (plain_spec.name, zeros, plain_geoms, plain_group),
                "deformable": (spec.name, offs, geoms, group)}
        found, xys = {}, {}
        for row, (_, o, g, grp) in rows.items():
            found[row], xys[row] = unit_points(o, g, units, result.prep, stride, grp, round_)
        panels = [draw_sampling_points(picture, xy, f.valid, u.xy) for row in rows
                  for u, f, xy in zip(units, found[row], xys[row])]
        labels = [f"{rows[row][0]}: {t}" for row in rows for t in titles(units)]
        footer = f"{' > '.join(names)}: {points_per_unit(geoms)} points per unit; top: plain convs, bottom: deformable"
        figure, origins = montage(panels, labels, columns=len(units), footer=footer)
        png = out_dir / f"{image.stem}_{names[0]}.png"
        write_image_atomic(png, figure)
        record = image_record(image, picture, result.prep, spec.name, png)
        record.update(plain_model=plain_spec.name, group=group, interpolation="nearest cell" if round_ else "bilinear",
                      layers={row: [layer_record(n, g, l.feature_stride)
                                    for n, g, l in zip(names, rows[row][2], layers)] for row in rows},
                      units=[{**unit_record(u), **{row: points_record(found[row][k], xys[row][k],
                                                                      origins[r * len(units) + k])
                                                   for r, row in enumerate(rows)}}
                             for k, u in enumerate(units)])
        write_json_atomic(png.with_suffix(".json"), record, expand=3)
        say(f"{image}: {', '.join(u.kind for u in units)} units, {plain_spec.name} vs {spec.name} -> {png}")
