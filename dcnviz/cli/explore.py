"""``dcnviz explore``: one self-contained HTML page to look inside a deformable network with the mouse.

Output: ``runs/explore/NAME.html`` (``runs/explore2/…`` when that folder exists), or ``-o FILE``; the path is
printed on stdout. The page needs no server and no network (see :mod:`dcnviz.viz.explore`).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import click

from dcnviz.cli.analysis_common import DEFAULT_MODEL, load, meta_model, reporter, resolve, usage_error
from dcnviz.cli.common import apply_options, debug_option, resolve_model, run_options
from dcnviz.errors import OutputError

DEFAULT_CONF = 0.5  # the score threshold of `dcnviz detect`
OUT_DIR = Path("runs", "explore")


def _plain(name: str, layers):
    """(name, geometry of its convs at the places of ``layers``) of the plain twin ``--plain-model``; its
    weights are not loaded (a plain conv samples a fixed grid whatever its weights)."""
    from dcnviz.analysis import LayerGeometry
    from dcnviz.models.capture import twin_convs

    spec = resolve_model(name, None)
    try:
        convs = twin_convs(meta_model(spec), layers)
    except ValueError as e:
        raise usage_error("--plain-model", ValueError(f"{spec.name!r} is not a plain twin: {e}")) from None
    return spec.name, [LayerGeometry.from_module(c) for c in convs]


def _check_output(path: Path, image: Path, exist_ok: bool) -> None:
    """``-o FILE`` may not be the input image, nor an existing file unless --exist-ok."""
    if os.path.realpath(path) == os.path.realpath(image):
        raise OutputError(f"'{path}' is the input image; choose another -o")
    if path.is_dir():
        raise OutputError(f"'{path}' is a folder; -o names the HTML file to write")
    if path.exists() and not exist_ok:
        raise OutputError(f"'{path}' exists; choose another -o or replace it with --exist-ok")


def _detections_and_parts(net, picture, result, conf: float):
    """The detections scoring at least ``conf`` and, with deformable PS RoI pooling, each one's
    ``(RoIParts, probability of its class)``: the image is run again with the detections as the RoIs, so
    the parts are those the head pools for that very box (as ``dcnviz rois`` does)."""
    import numpy as np

    from dcnviz.analysis.parts import roi_parts

    keep = np.asarray(result.scores) >= conf  # predict returns detections in decreasing score order
    result = dataclasses.replace(result, boxes=np.asarray(result.boxes)[keep].reshape(-1, 4),
                                 scores=np.asarray(result.scores)[keep], labels=np.asarray(result.labels)[keep])
    geometry = getattr(net, "part_geometry", None)
    if geometry is None or not geometry.deformable:
        return result, None
    if not len(result):
        return result, []
    pooled = net.predict(picture, boxes=result.boxes.astype(np.float64))
    captured = pooled.captured
    prob = captured["cls_prob"].numpy()
    parts = [(roi_parts(captured["rois"][k], captured["rfcn_cls_offset"][k], int(c), scale=pooled.prep.scale,
                        spatial_scale=geometry.spatial_scale, pooled_size=geometry.pooled_size,
                        part_size=geometry.part_size, trans_std=geometry.trans_std), prob[k, int(c)])
             for k, c in enumerate(result.labels)]
    return result, parts


@click.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--plain-model", metavar="NAME",
              help="Also show the fixed grid of this plain twin (e.g. rfcn_synth) beside the deformable points; "
                   "its weights are not needed.")
@click.option("--conf", type=click.FloatRange(0, 1), default=DEFAULT_CONF, show_default=True,
              help="Show the detections with at least this score.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help=f"The HTML file to write; default: {OUT_DIR}/NAME.html in a fresh folder ({OUT_DIR}2, … "
                   "when it exists).")
@click.option("--open", "open_", is_flag=True, help="Open the page in the default web browser.")
@apply_options(run_options("explore", f"Registered model with deformable conv layers; default: {DEFAULT_MODEL}.")[:3]
               + [click.option("--exist-ok", is_flag=True,
                               help="Replace FILE, or write into runs/explore even if it exists."),
                  click.option("-q", "--quiet", is_flag=True, help="Print only the path of the page and errors."),
                  debug_option])
def explore(image, plain_model, conf, output, open_, model, weights, device, exist_ok, quiet):
    """An interactive page of where a deformable network samples: IMAGE with the model's detections (or
    segmentation), and the composed sampling points of the unit under the mouse (paper Fig. 6).

    Hover: the unit's points through the chosen number of deformable layers (default 3: 729 points),
    computed in the page from the model's offset maps exactly as `dcnviz offsets --at X,Y` computes them.
    Click to pin a unit (and, with deformable PS RoI pooling, to show the RoI parts of the detection under
    the click, Fig. 7); arrow keys move it by one cell; selectors for the layer, the number of levels and
    the deformable group. With --plain-model, the plain twin's fixed grid beside it (Fig. 5). The page is
    one HTML file with everything inlined (no server, no network); its path is printed.

    \b
    Examples:
      dcnviz explore samples/synth_mixed.jpg --plain-model rfcn_synth --open
      dcnviz explore photo.jpg --model rfcn_dcn_coco --weights rfcn_dcn_coco.safetensors
    """
    import webbrowser

    from dcnviz.io.images import read_image, write_bytes_atomic
    from dcnviz.io.outputs import run_dir
    from dcnviz.structures import Detections
    from dcnviz.viz.explore import page_data, render_page

    spec, meta = resolve(model)
    layers = list(meta.deformable_layers)
    plain = _plain(plain_model, layers) if plain_model else None
    if output is not None:
        _check_output(output, image, exist_ok)
    picture = read_image(image)
    say = reporter(quiet)

    def build() -> tuple[bytes, str]:
        net, dev = load(spec, weights, device, quiet)
        result = net.predict(picture)
        parts = None
        if isinstance(result, Detections):
            result, parts = _detections_and_parts(net, picture, result, conf)
            found = f"{len(result)} detection{'s' * (len(result) != 1)} with score >= {conf:g}"
        else:
            found = "segmentation"
        data = page_data(picture, result, layers, image_name=image.name, model_name=spec.name, parts=parts,
                         trans_std=getattr(getattr(net, "part_geometry", None), "trans_std", None), plain=plain)
        return render_page(data).encode("utf-8"), f"{spec.name} on {dev}: {found}"

    if output is not None:
        page, summary = build()
        write_bytes_atomic(output, page)
        path = output
    else:
        with run_dir(OUT_DIR, exist_ok, (), [image]) as folder:
            page, summary = build()
            path = folder / f"{image.stem}.html"
            write_bytes_atomic(path, page)
    say(f"{image}: {summary}; {len(page) / 1e6:.1f} MB page")
    click.echo(str(path))
    if open_:
        webbrowser.open(path.resolve().as_uri())
