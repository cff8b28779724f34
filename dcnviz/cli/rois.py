"""``dcnviz rois``: the parts of deformable (PS) RoI pooling, moved by their learned offsets (paper Fig. 7):
R-FCN's position-sensitive parts, or the bins of Faster R-CNN's and FPN's deformable RoI pooling (FPN: on
the pyramid level the RoI is assigned to).

Output (``OUT`` = runs/rois, …)::

    OUT/NAME.png    one panel per RoI (and its --parts K view): the RoI in yellow with class and score, its
                    k x k moved parts in red over the unmoved ones
    OUT/NAME.json   per RoI: the box, the RoI as pooled, class, scores and every part in image pixels
"""
from __future__ import annotations

from pathlib import Path

import click

from dcnviz.cli.analysis_common import (DEFAULT_MODEL, ImageRun, analysis_options, emit_json, load, meta_model,
                                        parse_box, reporter, save_figure)
from dcnviz.cli.common import parse_classes, resolve_model
from dcnviz.models.postprocess import DEFAULT_CONF

DEFAULT_TOP = 3


def _resolve(model: str | None):
    """(spec, part geometry); a model without deformable (PS) RoI pooling is a usage error of --model."""
    from dcnviz.models import get_spec, list_models

    def deformable(spec):
        geometry = getattr(meta_model(spec), "part_geometry", None)  # None: no RoI pooling at all
        return geometry if geometry is not None and geometry.deformable else None

    spec = resolve_model(model, None, DEFAULT_MODEL)
    geometry = deformable(spec)
    if geometry is None:
        have = [n for n in list_models() if get_spec(n).task == "detection" and deformable(get_spec(n))]
        raise click.BadParameter(f"{spec.name!r} has no deformable RoI pooling (models that have it: "
                                 f"{', '.join(have)})", param_hint="'--model'")
    return spec, geometry


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="IMAGE...")
@click.option("--top", type=click.IntRange(min=1), metavar="K",
              help=f"Show the K best detections (default {DEFAULT_TOP} when no --box is given).")
@click.option("--box", multiple=True, metavar="X1,Y1,X2,Y2", callback=parse_box,
              help="Show this RoI instead, in image pixels with inclusive corners (repeatable; one IMAGE).")
@click.option("--class", "class_", metavar="C",
              help="Class (name or id) whose offsets move the parts; with --top: only its detections; "
                   "default: the detected class, or the best-scoring class of each --box.")
@click.option("--conf", type=click.FloatRange(0, 1), default=DEFAULT_CONF, show_default=True,
              help="With --top: detections with at least this score.")
@click.option("--parts", "coarse", type=click.IntRange(min=1), metavar="K",
              help="Also show each RoI in a K x K view beside the model's own parts (the paper's Fig. 7 uses 3): "
                   "its offsets averaged over K x K windows of the parts.")
@click.option("-r", "--recursive", is_flag=True, help="Also search the subfolders of an IMAGE folder.")
@analysis_options("rois", "deformable (PS) RoI pooling")
def rois(images, top, box, class_, conf, coarse, recursive, model, weights, device, out, exist_ok, quiet, json_out,
         style, marker_alpha, fmt, show, dtype):
    """Where deformable (PS) RoI pooling looks (paper Fig. 7): each RoI's k x k parts moved by their
    offsets (R-FCN: the classification branch's, for the RoI's class; Faster R-CNN and FPN: the one offset
    field of deformable RoI pooling, the same bins for every class; FPN: on the pyramid level the RoI is
    assigned to), exactly as the operator places them (RoI rounded, scaled to the feature map and shifted
    by -0.5; each part moved by offset x trans_std x RoI size), the unmoved parts drawn faintly beneath.

    IMAGE is an image file, a folder or a quoted glob, or several. The RoIs are the model's best
    detections (--top) or given boxes (--box); either way the head pools those boxes as its RoIs, so the
    parts are those it pools for that very box. A detection is labelled with its class and its own score;
    a --box with its class and the head's probability for it on that box ("p="). Writes OUT/NAME.png (and
    .svg/.pdf with --format) and OUT/NAME.json.

    \b
    Examples:
      dcnviz rois samples/synth_stars.jpg --top 2 --parts 3
      dcnviz rois photo.jpg --model rfcn_dcn_coco --weights rfcn_dcn_coco.safetensors --box 40,60,300,280 --class dog
    """
    from dcnviz.analysis import inspect
    from dcnviz.io.analysis_json import rois_record
    from dcnviz.io.images import find_images, write_json_atomic
    from dcnviz.io.outputs import output_names, run_dir
    from dcnviz.models.postprocess import select_detections
    from dcnviz.viz.sampling import draw_pooled_roi, get_style, montage, roi_label
    from dcnviz.viz.vector import Panel

    if top is not None and box:
        raise click.UsageError("give either --top or --box, not both")
    look = get_style(style, marker_alpha)
    spec, parts = _resolve(model)
    if coarse is not None and coarse >= parts.pooled_size:
        raise click.BadParameter(f"{coarse}: {spec.name} pools {parts.pooled_size}x{parts.pooled_size} parts; "
                                 "give a smaller K", param_hint="'--parts'")
    try:
        wanted = parse_classes((class_,), spec.classes) if class_ else None
    except click.BadParameter as e:
        raise click.BadParameter(e.message, param_hint="'--class'") from None
    if wanted is not None and len(wanted) > 1:
        raise click.BadParameter(f"{class_!r}: give one class", param_hint="'--class'")
    images = find_images(images, recursive)  # after the checks of the options, which need no file
    if box and len(images) > 1:
        raise click.BadParameter("boxes belong to one image; give one IMAGE", param_hint="'--box'")
    say = reporter(quiet)
    run = ImageRun(images, show, say)
    p = parts.pooled_size
    with run_dir(out, exist_ok, (), images) as out_dir:
        net, dev = load(spec, weights, device, quiet, dtype)
        say(f"{spec.name} on {dev}: {len(images)} image{'s' * (len(images) > 1)}")
        stems = output_names(images)
        for i, image, picture in run:
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
                    run.skip(f"{image}: no detections with score >= {conf:g}"
                             f"{' of class ' + class_ if class_ else ''}; lower --conf or give --box")
                    continue
                found = seen.detection_rois(chosen)
            views = [[(r.parts, f"{roi_label(r)}: {p}x{p} parts ({r.source} {k + 1}"
                               f"{'' if r.level is None else f', on P{r.level}'})")] for k, r in enumerate(found)]
            coarse_parts = None
            if coarse is not None:
                coarse_parts = [seen.coarse_parts(r, coarse) for r in found]
                for view, r, c in zip(views, found, coarse_parts):
                    view.append((c, f"{roi_label(r)}: {coarse}x{coarse} view of the {p}x{p} offsets"))
            whose = "the class's" if parts.group_size > 1 else "their"
            footer = (f"{spec.name}: RoI as pooled (yellow), its parts moved by {whose} offsets x trans_std "
                      f"{parts.trans_std:g} (red), unmoved parts faint")
            panels = [draw_pooled_roi(picture, r, part, look) for r, view in zip(found, views) for part, _ in view]
            titles = [title for view in views for _, title in view]
            columns = 2 if coarse is not None else None
            figure, origins = montage(panels, titles, columns=columns, footer=footer)
            png = out_dir / stems[image].with_name(f"{stems[image].name}.png")
            vector = [Panel(picture, title, roi=part.roi, bins=part.bins, regular=part.regular, label=roi_label(r))
                      for r, view in zip(found, views) for part, title in view]
            files = save_figure(png, figure, vector, fmt, columns, footer, look, run.window)
            step = len(views[0])
            record = rois_record(image, seen, spec.name, png, found, origins[::step], coarse, coarse_parts)
            write_json_atomic(png.with_suffix(".json"), record, expand=3)
            emit_json(record, json_out)
            say(f"{i}/{len(images)} {image}: {len(found)} RoI{'s' * (len(found) > 1)} "
                f"({', '.join(roi_label(r) for r in found)}) -> {', '.join(map(str, files))}")
    run.finish(out_dir, say)
