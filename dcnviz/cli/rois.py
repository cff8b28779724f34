"""``dcnviz rois``: the parts of deformable PS RoI pooling, moved by their learned offsets (paper Fig. 7).

Output (``OUT`` = runs/rois, …)::

    OUT/NAME.png    one panel per RoI: the RoI in yellow with class and score, its k x k moved parts in red
    OUT/NAME.json   per RoI: the box, the RoI as pooled, class, score and every part in image pixels
"""
from __future__ import annotations

from pathlib import Path

import click

from dcnviz.cli.analysis_common import DEFAULT_MODEL, analysis_options, load, meta_model, parse_box, reporter
from dcnviz.cli.common import parse_classes, resolve_model
from dcnviz.errors import UserError
from dcnviz.models.postprocess import DEFAULT_CONF

DEFAULT_TOP = 3


def _resolve(model: str | None):
    """(spec, part geometry); a model without deformable PS RoI pooling is a usage error of --model."""
    from dcnviz.models import get_spec, list_models

    def parts(spec):
        return getattr(meta_model(spec), "part_geometry", None)  # None: no PS RoI pooling at all

    spec = resolve_model(model, None, DEFAULT_MODEL)
    geometry = parts(spec)
    if geometry is None or not geometry.deformable:
        have = [n for n in list_models() if get_spec(n).task == "detection"
                and getattr(parts(get_spec(n)), "deformable", False)]
        raise click.BadParameter(f"{spec.name!r} has no deformable PS RoI pooling (models that have it: "
                                 f"{', '.join(have)})", param_hint="'--model'")
    return spec, geometry


@click.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--top", type=click.IntRange(min=1), metavar="K",
              help=f"Show the K best detections (default {DEFAULT_TOP} when no --box is given).")
@click.option("--box", multiple=True, metavar="X1,Y1,X2,Y2", callback=parse_box,
              help="Show this RoI instead, in image pixels with inclusive corners (repeatable).")
@click.option("--class", "class_", metavar="C",
              help="Class (name or id) whose offsets move the parts; with --top: only its detections; "
                   "default: the detected class, or the best-scoring class of each --box.")
@click.option("--conf", type=click.FloatRange(0, 1), default=DEFAULT_CONF, show_default=True,
              help="With --top: detections with at least this score.")
@analysis_options("rois", "deformable PS RoI pooling")
def rois(image, top, box, class_, conf, model, weights, device, out, exist_ok, quiet):
    """Where deformable PS RoI pooling looks (paper Fig. 7): each RoI's k x k parts moved by the offsets of
    the classification branch for its class, exactly as the operator places them (RoI rounded, scaled
    to the feature map and shifted by -0.5; each part moved by offset x trans_std x RoI size).

    The RoIs are the model's best detections (--top) or given boxes (--box); either way the head pools
    those boxes as its RoIs, so the parts are those it pools for that very box.
    The label shows the class and the head's probability for it on that RoI. Writes OUT/NAME.png and
    OUT/NAME.json.

    \b
    Examples:
      dcnviz rois samples/synth_stars.jpg --top 2
      dcnviz rois photo.jpg --model rfcn_dcn_coco --weights rfcn_dcn_coco.safetensors --box 40,60,300,280 --class dog
    """
    from dcnviz.analysis import inspect
    from dcnviz.io.analysis_json import rois_record
    from dcnviz.io.images import read_image, write_image_atomic, write_json_atomic
    from dcnviz.io.outputs import run_dir
    from dcnviz.models.postprocess import select_detections
    from dcnviz.viz.sampling import draw_pooled_roi, montage, roi_label

    if top is not None and box:
        raise click.UsageError("give either --top or --box, not both")
    spec, parts = _resolve(model)
    try:
        wanted = parse_classes((class_,), spec.classes) if class_ else None
    except click.BadParameter as e:
        raise click.BadParameter(e.message, param_hint="'--class'") from None
    if wanted is not None and len(wanted) > 1:
        raise click.BadParameter(f"{class_!r}: give one class", param_hint="'--class'")
    say = reporter(quiet)
    with run_dir(out, exist_ok, (), [image]) as out_dir:
        net, dev = load(spec, weights, device, quiet)
        picture = read_image(image)
        h, w = picture.shape[:2]
        for x1, y1, x2, y2 in box:
            if x1 < 0 or y1 < 0 or x2 > w - 1 or y2 > h - 1:
                raise click.BadParameter(f"{x1:g},{y1:g},{x2:g},{y2:g} is not inside the {w}x{h} image",
                                         param_hint="'--box'")
        seen = inspect(net, picture)
        if box:
            found = seen.box_rois(box, next(iter(wanted)) if wanted else None)
        else:
            chosen = select_detections(seen.result, conf, wanted, top or DEFAULT_TOP)
            if not len(chosen):
                raise UserError(f"{image}: no detections with score >= {conf:g}"
                                f"{' of class ' + class_ if class_ else ''}; lower --conf or give --box")
            found = seen.detection_rois(chosen)
        footer = (f"{spec.name}: RoI as pooled (yellow), its {parts.pooled_size}x{parts.pooled_size} parts moved "
                  f"by the class's offsets x trans_std {parts.trans_std:g} (red)")
        figure, origins = montage([draw_pooled_roi(picture, r) for r in found],
                                  [f"{r.source} {k + 1}" for k, r in enumerate(found)], footer=footer)
        png = out_dir / f"{image.stem}.png"
        write_image_atomic(png, figure)
        write_json_atomic(png.with_suffix(".json"), rois_record(image, seen, spec.name, png, found, origins), expand=3)
        say(f"{image}: {len(found)} RoI{'s' * (len(found) > 1)} ({', '.join(roi_label(r) for r in found)}) -> {png}")
