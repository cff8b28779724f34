"""``dcnviz explore``: one self-contained HTML page to look inside a deformable network with the mouse.

Output: ``OUT/NAME.html`` (``OUT`` = runs/explore, runs/explore2, … as for every command), or the file
``--output-file FILE`` (``-o PAGE.html`` too: an OUT ending in .html names the page); the path is printed on
stdout (``--json``: a JSON object with it). The page needs no server and no network (see :mod:`dcnviz.viz.explore`).
"""
from __future__ import annotations

import os
from pathlib import Path

import click

from dcnviz.cli.analysis_common import DEFAULT_MODEL, load, meta_model, reporter, resolve, usage_error
from dcnviz.cli.common import apply_options, debug_option, json_option, resolve_model, run_options
from dcnviz.errors import OutputError
from dcnviz.models.postprocess import DEFAULT_CONF

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
    """``--output-file FILE`` may not be the input image, nor an existing file unless --exist-ok."""
    if os.path.realpath(path) == os.path.realpath(image):
        raise OutputError(f"'{path}' is the input image; choose another --output-file")
    if path.is_dir():
        raise OutputError(f"'{path}' is a folder; --output-file names the HTML file to write")
    if path.exists() and not exist_ok:
        raise OutputError(f"'{path}' exists; choose another --output-file or replace it with --exist-ok")


@click.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--plain-model", metavar="NAME",
              help="Also show the fixed grid of this plain twin (e.g. rfcn_synth) beside the deformable points; "
                   "its weights are not needed.")
@click.option("--conf", type=click.FloatRange(0, 1), default=DEFAULT_CONF, show_default=True,
              help="Show the detections with at least this score.")
@click.option("--output-file", "output", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write the page to FILE instead of OUT/NAME.html (-o PAGE.html does the same); --exist-ok "
                   "replaces it.")
@click.option("--open", "open_", is_flag=True, help="Open the page in the default web browser.")
@apply_options(run_options("explore", f"Registered model with deformable conv layers; default: {DEFAULT_MODEL}.")
               + [json_option("Print a JSON object (page, model, image, size, what it shows) instead of the "
                              "page's path."), debug_option])
def explore(image, plain_model, conf, output, open_, model, weights, device, out, exist_ok, quiet, json_out):
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

    from dcnviz.analysis import inspect
    from dcnviz.io.images import read_image, write_bytes_atomic
    from dcnviz.io.outputs import run_dir
    from dcnviz.models.postprocess import select_detections
    from dcnviz.structures import Detections
    from dcnviz.viz.explore import page_data, render_page

    if output is None and out.suffix.lower() in (".html", ".htm"):
        output = out  # -o PAGE.html: the page itself (a run folder is not named *.html)
    spec, meta = resolve(model)
    plain = _plain(plain_model, list(meta.deformable_layers)) if plain_model else None
    if output is not None:
        _check_output(output, image, exist_ok)
    picture = read_image(image)
    say = reporter(quiet)

    def build() -> tuple[bytes, str]:
        net, dev = load(spec, weights, device, quiet)
        seen = inspect(net, picture)
        shown = select_detections(seen.result, conf) if isinstance(seen.result, Detections) else []
        found = (f"{len(shown)} detection{'s' * (len(shown) != 1)} with score >= {conf:g}"
                 if isinstance(seen.result, Detections) else "segmentation")
        # the RoI parts of each detection shown are pooled by the head on its box (as `dcnviz rois` does)
        data = page_data(seen, image_name=image.name, model_name=spec.name, detections=shown, plain=plain)
        return render_page(data).encode("utf-8"), f"{spec.name} on {dev}: {found}"

    if output is not None:
        page, summary = build()
        write_bytes_atomic(output, page)
        path = output
    else:
        with run_dir(out, exist_ok, (), [image]) as folder:
            page, summary = build()
            path = folder / f"{image.stem}.html"
            write_bytes_atomic(path, page)
    say(f"{image}: {summary}; {len(page) / 1e6:.1f} MB page")
    if json_out:
        import json

        from dcnviz.io.results_json import json_path

        click.echo(json.dumps({"page": json_path(path), "model": spec.name, "image": json_path(image),
                               "bytes": len(page), "shows": summary}))
    else:
        click.echo(str(path))
    if open_:
        webbrowser.open(path.resolve().as_uri())
