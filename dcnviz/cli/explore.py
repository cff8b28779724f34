"""``dcnviz explore``: one self-contained HTML page per image to look inside a deformable network with the mouse.

Output (``OUT`` = runs/explore, runs/explore2, … as for every command; NAME mirrors the image as ``detect``
names it)::

    OUT/NAME.html    one page per image
    OUT/index.html   links to the pages, when there are several

or, for one image, the file ``--output-file FILE`` (``-o PAGE.html`` too: an OUT ending in .html names the
page). Each page's path is printed on stdout (``--json``: one JSON object per page). The pages need no
server and no network (see :mod:`dcnviz.viz.explore`).
"""
from __future__ import annotations

from pathlib import Path

import click

from dcnviz.cli.analysis_common import (DEFAULT_MODEL, ImageRun, load, load_custom_model, meta_model,
                                        parse_at, reporter, resolve, usage_error)
from dcnviz.cli.common import apply_options, debug_option, json_option, resolve_model, run_options
from dcnviz.models.custom import is_custom_spec
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


def _effective(seen, probe, data, at, path, say) -> list:
    """(unit, its effective sampling locations) for the units of the top layer at the ``--effective-at``
    positions (one per cell), through up to the page's default number of levels."""
    from dcnviz.analysis.effective import Node, effective_sampling_locations, node_gradients
    from dcnviz.analysis.inspection import DEFAULT_LEVELS

    top = seen.names[-1]
    units = {}
    for x, y in at:
        try:
            u = seen.unit_at(x, y, top)
        except ValueError as e:
            raise usage_error("--effective-at", ValueError(f"{path}: {e}")) from None
        say(f"{path}: --effective-at {x:g},{y:g} is in cell {u.cell} of {top}; the unit is its centre "
            f"({u.xy[0]:.1f}, {u.xy[1]:.1f})")
        units.setdefault(u.cell, u)
    grads = node_gradients(probe, data, [Node(top, u.cell) for u in units.values()], DEFAULT_LEVELS)
    return [(u, effective_sampling_locations(g, seen.prep.scale)) for u, g in zip(units.values(), grads)]


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="IMAGE...")
@click.option("-r", "--recursive", is_flag=True, help="Also search the subfolders of an IMAGE folder.")
@click.option("--plain-model", metavar="NAME",
              help="Also show the fixed grid of this plain twin (e.g. rfcn_synth) beside the deformable points; "
                   "its weights are not needed.")
@click.option("--conf", type=click.FloatRange(0, 1), default=DEFAULT_CONF, show_default=True,
              help="Show the detections with at least this score.")
@click.option("--effective-at", multiple=True, metavar="X,Y", callback=parse_at,
              help="Precompute DCNv2's effective sampling weights (as `dcnviz effective --at X,Y`) for the unit "
                   "of the top deformable layer at this image position (repeatable); the page's 'shade by "
                   "effective weight' checkbox draws them.")
@click.option("--output-file", "output", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write the page of the one IMAGE to FILE instead of OUT/NAME.html (-o PAGE.html does the "
                   "same); --exist-ok replaces it.")
@click.option("--open", "open_", is_flag=True,
              help="Open the page (with several images, their index) in the default web browser.")
@apply_options(run_options("explore", f"Registered model with deformable conv layers, or your own as "
                                      f"FILE.py:FUNCTION; default: {DEFAULT_MODEL}.")
               + [json_option("Print one JSON object per page (page, model, image, size, what it shows) instead "
                              "of the page's path (JSON Lines)."), debug_option])
def explore(images, recursive, plain_model, conf, effective_at, output, open_, model, weights, device, out, exist_ok,
            quiet, json_out):
    """Interactive pages of where a deformable network samples: each IMAGE (files, folders, quoted globs)
    with the model's detections (or segmentation), and the composed sampling points of the unit under the
    mouse (paper Fig. 6).

    Hover: the unit's points through the chosen number of deformable layers (default 3: 729 points),
    computed in the page from the model's offset maps exactly as `dcnviz offsets --at X,Y` computes them.
    Click to pin a unit (and, with deformable PS RoI pooling, to show the RoI parts of the detection under
    the click, Fig. 7); arrow keys move it by one cell; selectors for the layer, the number of levels and
    the deformable group. With --plain-model, the plain twin's fixed grid beside it (Fig. 5). With
    --effective-at X,Y, a checkbox shades the points of those units by DCNv2's effective sampling weight
    ||d node / d(dy, dx)|| (the points of `dcnviz effective --at X,Y`, each layer on its own scale; the
    weights need gradients, so only the units asked for have them). --model FILE.py:FUNCTION explores
    your own network (see the README). Each page is one HTML file with everything inlined (no server, no
    network); its path is printed. Several images: one page each and an index.html.

    \b
    Examples:
      dcnviz explore samples/synth_mixed.jpg --plain-model rfcn_synth --open
      dcnviz explore photo.jpg --model rfcn_dcn_coco --weights rfcn_dcn_coco.safetensors
      dcnviz explore samples/ --effective-at 250,170
      dcnviz explore photo.jpg --model mynet.py:build --weights mynet.safetensors
    """
    import webbrowser

    from dcnviz.io.images import find_images, write_bytes_atomic
    from dcnviz.io.outputs import check_output_file, output_names, run_dir

    if output is None and out.suffix.lower() in (".html", ".htm"):
        output = out  # -o PAGE.html: the page itself (a run folder is not named *.html)
    images = find_images(images, recursive)
    if output is not None and len(images) > 1:
        raise click.BadParameter(f"a page file is for one image, got {len(images)}; give -o a folder",
                                 param_hint="'--output-file'")
    custom = is_custom_spec(model)
    if custom:
        if plain_model:
            raise usage_error("--plain-model", ValueError("a plain twin is for a registered --model"))
        plain = None
    else:
        spec, meta = resolve(model)
        plain = _plain(plain_model, list(meta.deformable_layers)) if plain_model else None
    if output is not None:
        check_output_file(output, images, exist_ok)
    say = reporter(quiet)
    run = ImageRun(images)
    pages = []

    def explore_all(folder: Path | None) -> None:
        stems = output_names(images)
        loaded = None
        for _, path, picture in run:
            if loaded is None:  # once an image could be read: no model loaded for nothing
                loaded = load_custom_model(model, weights, device) if custom else load(spec, weights, device,
                                                                                             quiet)
                net, dev = loaded
                name = net.name if custom else spec.name
            page, summary = _page(net, custom, name, path, picture, conf, plain, effective_at, say)
            target = output if folder is None else folder / stems[path].with_suffix(".html")
            target.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(target, page)
            pages.append((target, path, summary, len(page)))
            say(f"{path}: {name} on {dev}: {summary}; {len(page) / 1e6:.1f} MB page")
            _report(target, path, name, summary, len(page), json_out)

    if output is not None:
        explore_all(None)
        folder = output.parent
    else:
        with run_dir(out, exist_ok, (), images) as folder:
            explore_all(folder)
            if len(pages) > 1:
                from dcnviz.viz.explore import render_index

                index = folder / "index.html"
                write_bytes_atomic(index, render_index([(p.relative_to(folder).as_posix(), str(image), summary)
                                                        for p, image, summary, _ in pages]).encode("utf-8"))
                say(f"index of the {len(pages)} pages: {index}")
    if open_ and pages:
        shown = folder / "index.html" if len(pages) > 1 else pages[0][0]
        webbrowser.open(shown.resolve().as_uri())
    if output is None:
        run.finish(folder, say)
    elif run.failed:
        raise click.exceptions.Exit(1)


def _page(net, custom: bool, name: str, path: Path, picture, conf: float, plain, effective_at, say):
    """(the page of one image as bytes, what it shows in words)."""
    from dcnviz.structures import Detections
    from dcnviz.viz.explore import page_data, render_page

    if custom:
        from dcnviz.analysis.custom import inspect_custom

        seen, data = inspect_custom(net, picture)
        probe = net.probe(data) if effective_at else None
        shown, found = [], "no prediction (own model)"
    else:
        from dcnviz.analysis import inspect
        from dcnviz.models.capture import probe as probe_of
        from dcnviz.models.postprocess import select_detections

        seen = inspect(net, picture)
        data = net.preprocess(picture)[0] if effective_at else None
        probe = probe_of(net) if effective_at else None
        detections = isinstance(seen.result, Detections)
        shown = select_detections(seen.result, conf) if detections else []
        found = (f"{len(shown)} detection{'s' * (len(shown) != 1)} with score >= {conf:g}" if detections
                 else "segmentation")
    effective = _effective(seen, probe, data, effective_at, path, say) if effective_at else []
    if effective:
        found += f", effective weights of {len(effective)} unit{'s' * (len(effective) > 1)}"
    # the RoI parts of each detection shown are pooled by the head on its box (as `dcnviz rois` does)
    data = page_data(seen, image_name=path.name, model_name=name, detections=shown, plain=plain, effective=effective)
    return render_page(data).encode("utf-8"), found


def _report(page: Path, image: Path, name: str, summary: str, size: int, json_out: bool) -> None:
    """The page's path on stdout, or with --json its record."""
    if json_out:
        import json

        from dcnviz.io.results_json import json_path

        click.echo(json.dumps({"page": json_path(page), "model": name, "image": json_path(image), "bytes": size,
                               "shows": summary}))
    else:
        click.echo(str(page))
