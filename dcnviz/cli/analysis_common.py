"""What the analysis commands (offsets, receptive-field, rois, dilation-stats, effective) share: their options,
the model checks made before any weights are loaded, turning --at/--annotation/--conf into the units of an
:class:`dcnviz.analysis.Inspection` (the analysis itself is in :mod:`dcnviz.analysis.inspection`), and a
``--model FILE.py:FUNCTION`` model (:mod:`dcnviz.models.custom`) loaded and inspected."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import click
import numpy as np

from dcnviz.cli.common import (apply_options, debug_option, dtype_options, figure_options, in_dtype, json_option,
                               resolve_model, run_options, select_device, show_option)
from dcnviz.errors import UserError

DEFAULT_MODEL = "rfcn_dcn_synth"
SAMPLES = "synth_*.jpg"


def analysis_options(command: str, needs: str = "deformable conv layers",
                     figures: bool = True) -> Callable[[Callable], Callable]:
    """--model (a registered model with ``needs``, default :data:`DEFAULT_MODEL`), --weights, --device,
    --out runs/<command>, --exist-ok, --quiet, --json, with ``figures`` --style, --marker-alpha, --format
    and --show, then --dtype/--half and --debug."""
    return apply_options(run_options(command, f"Registered model with {needs}; default: {DEFAULT_MODEL}.")
                         + [json_option("Print each image's JSON record on stdout (JSON Lines), as written to OUT.")]
                         + (figure_options() + [show_option()] if figures else []) + dtype_options() + [debug_option])


def unit_options(levels_help: str) -> Callable[[Callable], Callable]:
    """--layer, --levels, --at, --annotation, --conf, --group, --round: which units, through which layers."""
    from dcnviz.models.postprocess import DEFAULT_CONF

    options = [
        click.option("--layer", metavar="NAME", help="Top deformable layer, e.g. res5c; default: the last one."),
        click.option("--levels", type=click.IntRange(min=1), help=levels_help),
        click.option("--at", multiple=True, metavar="X,Y", callback=parse_at,
                     help="Unit at this image position in pixels (repeatable); default: chosen automatically."),
        click.option("--annotation", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="VOC XML of the image: choose the units on its objects instead of the model's output."),
        click.option("--conf", type=click.FloatRange(0, 1), default=DEFAULT_CONF, show_default=True,
                     help="Detections with at least this score count as objects when choosing units."),
        click.option("--group", default="all", show_default=True, metavar="G|all|mean", callback=parse_group,
                     help="Deformable group to follow: a number, all (each in its own colour) or mean."),
        click.option("--round", "round_", is_flag=True,
                     help="Read offsets at the nearest cell, as the official visualizer does, not bilinearly."),
    ]
    return apply_options(options)


def _points(value: str, count: int, what: str) -> tuple[float, ...]:
    parts = value.replace(" ", "").split(",")
    try:
        numbers = tuple(float(p) for p in parts)
    except ValueError:
        numbers = ()
    if len(numbers) != count or not all(np.isfinite(numbers)):
        raise click.BadParameter(f"{value!r}: expected {what}")
    return numbers


def parse_at(ctx, param, values: Sequence[str]) -> list[tuple[float, float]]:
    """``--at X,Y`` (repeatable): image positions in original pixels."""
    return [_points(v, 2, "X,Y in image pixels, e.g. 120,80") for v in values]


def parse_box(ctx, param, values: Sequence[str]) -> list[tuple[float, float, float, float]]:
    """``--box X1,Y1,X2,Y2`` (repeatable): 0-based inclusive original pixels, x2 >= x1 and y2 >= y1."""
    boxes = [_points(v, 4, "X1,Y1,X2,Y2 in image pixels, e.g. 10,20,200,180") for v in values]
    for v, (x1, y1, x2, y2) in zip(values, boxes):
        if x2 < x1 or y2 < y1:
            raise click.BadParameter(f"{v!r}: X2 must be >= X1 and Y2 >= Y1")
    return boxes


def parse_group(ctx, param, value: str) -> int | str:
    """``--group G|all|mean``."""
    value = value.strip().lower()
    if value in ("all", "mean"):
        return value
    if value.isdigit():
        return int(value)
    raise click.BadParameter(f"{value!r}: expected a group number (0, 1, …), all or mean")


def usage_error(param: str, e: Exception) -> click.BadParameter:
    return click.BadParameter(str(e), param_hint=f"'{param}'")


def meta_model(spec):
    """The network of ``spec`` without weights (on the meta device, nothing allocated): enough to check
    what layers it has before loading anything."""
    import torch

    with torch.device("meta"):
        return spec.factory()


def resolve(model: str | None):
    """(spec, weightless network) of ``--model``; a model without deformable conv layers is a usage error."""
    spec = resolve_model(model, None, DEFAULT_MODEL)
    net = meta_model(spec)
    if not net.deformable_layers:
        raise click.BadParameter(f"{spec.name!r} has no deformable conv layers", param_hint="'--model'")
    return spec, net


def stack(net, layer: str | None, levels: int | None, default_levels: int) -> list[str]:
    """Names of the layers of --layer/--levels, top first (:func:`dcnviz.analysis.select_layers` on the
    weightless ``net``), its errors as usage errors of --layer/--levels."""
    from dcnviz.analysis import select_layers
    from dcnviz.models.capture import short_name

    names = [short_name(l) for l in net.deformable_layers]
    try:
        return [names[i] for i in select_layers(names, None if layer is None else layer.removesuffix("_branch2b"),
                                                levels, default_levels, [l.feature_stride for l in net.deformable_layers])]
    except ValueError as e:
        raise usage_error("--levels" if levels is not None and "levels" in str(e) else "--layer", e) from None


def load(spec, weights, device: str, quiet: bool, dtype: str = "float32"):
    """The model with its weights on the chosen device, in ``dtype`` (a ``--dtype`` value)."""
    import dcnviz

    dev = select_device(device)
    return in_dtype(dcnviz.load_model(spec.name, weights, dev), dtype, reporter(quiet)), dev


def sample_images() -> list[Path]:
    """The bundled sample images (``samples/synth_*.jpg``)."""
    from dcnviz.models.loading import bundled_dir

    folder = Path(bundled_dir("samples"))
    images = sorted(folder.glob(SAMPLES))
    if not images:
        raise UserError(f"no sample images ({SAMPLES}) in {folder}; name an IMAGE")
    return images


def choose_units(inspection, path, top: str, at, annotation, conf: float, kinds, say) -> list:
    """The units of one image in layer ``top``: at the ``--at`` positions, else the ``kinds`` picked on the
    objects (:meth:`dcnviz.analysis.Inspection.choose_units`), saying which kinds had no candidate.
    Raises :class:`~dcnviz.errors.UserError` when there is no unit at all."""
    if at:
        try:
            units = [inspection.unit_at(x, y, top) for x, y in at]
        except ValueError as e:
            raise usage_error("--at", e) from None
        for (x, y), u in zip(at, units):
            say(f"{path}: --at {x:g},{y:g} is in cell {u.cell} of {top}; the unit is its centre "
                f"({u.xy[0]:.1f}, {u.xy[1]:.1f})")
        return units
    choice = inspection.choose_units(kinds, top, conf, annotation)
    if choice.missing:
        say(f"{path}: no {' or '.join(choice.missing)} unit from {choice.source} ({len(choice.boxes)} boxes); "
            "use --at or --annotation")
    if not choice.units:
        raise UserError(f"{path}: no unit to show; use --at")
    return choice.units


def reporter(quiet: bool) -> Callable[[str], None]:
    """Where progress lines go: stderr, or nowhere with --quiet (errors are printed regardless)."""
    return (lambda line: None) if quiet else (lambda line: click.echo(line, err=True))


def unit_objects(inspection, units, annotation=None) -> list[str | None]:
    """What each unit sits on, for its title: the detection whose box it was chosen on ("ring 0.91"), the
    annotated object's class, or the segmentation class under the unit; None for the background."""
    from dcnviz.structures import Detections

    names = []
    ann = None
    if annotation is not None:
        from dcnviz.data.voc import parse_annotation

        ann = parse_annotation(annotation)
    for u in units:
        name = None
        if u.kind == "background":
            pass
        elif ann is not None and u.box is not None:
            match = [o.name for o, b in zip(ann.objects, ann.boxes()) if tuple(map(float, b)) == u.box]
            name = match[0] if match else None
        elif isinstance(inspection.result, Detections) and u.box is not None:
            boxes = np.asarray(inspection.result.boxes, np.float64)
            hit = np.flatnonzero((boxes == np.asarray(u.box)).all(axis=1))
            if len(hit):
                k = int(hit[0])
                name = f"{inspection.result.class_names[int(inspection.result.labels[k])]} " \
                       f"{float(inspection.result.scores[k]):.2f}"
        elif hasattr(inspection.result, "labels") and not isinstance(inspection.result, Detections):
            h, w = inspection.result.labels.shape
            label = int(inspection.result.labels[min(int(u.xy[1]), h - 1), min(int(u.xy[0]), w - 1)])
            name = inspection.result.class_names[label] if label < len(inspection.result.class_names) else None
        names.append(name)
    return names


def save_figure(png: Path, figure, panels, fmt: str, columns: int | None, footer: str | None, look,
                window=None) -> list[Path]:
    """Write the raster ``figure`` to ``png`` and, for ``fmt`` svg/pdf, the same figure as vector graphics
    (:func:`dcnviz.viz.vector.vector_figure` of ``panels``) beside it; returns the files written. A
    ``window`` (--show, :class:`ImageRun`) shows the figure too."""
    from dcnviz.io.images import write_bytes_atomic, write_image_atomic

    write_image_atomic(png, figure)
    if window is not None:
        from dcnviz.viz.show import IMAGE_DELAY

        window.show(figure, str(png), IMAGE_DELAY)
    if fmt == "png":
        return [png]
    from dcnviz.viz.vector import vector_figure

    vector = png.with_suffix(f".{fmt}")
    write_bytes_atomic(vector, vector_figure(panels, fmt, columns, footer, look))
    return [png, vector]


def emit_json(record: dict, json_out: bool) -> None:
    """``--json``: the record as one line on stdout."""
    if json_out:
        import json

        click.echo(json.dumps(record, allow_nan=False))

def load_custom_model(spec: str, weights, device, dtype: str = "float32"):
    """(:class:`~dcnviz.models.custom.CustomModel` on the chosen device, the device); ``device`` is the
    --device value or a ``torch.device`` already chosen. Custom models run in float32 only (their
    preprocessing is the user's)."""
    from dcnviz.models.custom import CustomModelError, load_custom

    if dtype != "float32":
        raise usage_error("--dtype", ValueError(f"a FILE.py:FUNCTION model runs in float32, not {dtype}"))

    if weights is not None and weights.suffix.lower() != ".safetensors":
        raise usage_error("--weights", ValueError(f"{weights}: a FILE.py:FUNCTION model takes .safetensors "
                                                  "weights only"))
    dev = select_device(device) if isinstance(device, str) else device
    try:
        return load_custom(spec, weights, dev), dev
    except CustomModelError as e:
        raise usage_error("--model", e) from None


def custom_stack(cm, image, layer: str | None, levels: int | None, default_levels: int = 3, compose: bool = True):
    """Run ``cm`` once on ``image``: (its Inspection, the network input, the stack's layer names top first).

    ``layer`` defaults to the last deformable layer called; ``levels`` to ``default_levels`` or fewer. With
    ``compose`` (sampling points), only consecutive layers whose maps match can be stacked: the default
    stops where they stop matching and a larger ``levels`` is a usage error."""
    from dcnviz.analysis.custom import composable_levels, inspect_custom

    seen, data = inspect_custom(cm, image)
    names = seen.names
    top = names[-1] if layer is None else layer
    if top not in names:
        raise usage_error("--layer", ValueError(f"{cm.name} has no deformable layer {top!r}; its deformable "
                                                f"layers are {', '.join(names)}"))
    below = names.index(top) + 1
    most = composable_levels(seen, top, below) if compose else below
    if levels is not None and levels > most:
        why = "consecutive deformable layers on matching maps" if compose and most < below else \
            "deformable layers"
        raise usage_error("--levels", ValueError(f"{levels} levels from {top} need {levels} {why} at or below it; "
                                                 f"there are {most}"))
    levels = min(default_levels, most) if levels is None else levels
    return seen, data, [l.name for l in seen.stack(top, levels)]


class ImageRun:
    """The images of a run, read one at a time (:func:`dcnviz.io.images.read_image`): iterating gives
    ``(i, path, picture)`` with i counted from 1; an image that cannot be read is reported in one line
    (``; skipped`` when there are several) and counted in ``failed``, which a command may also raise for
    its own per-image errors; the run exits 1 at the end when it is not zero. With ``show`` (--show) it holds
    the ``window`` the figures are shown in (:func:`dcnviz.viz.show.open_window`; None, after one ``warn``
    line, where there is no display), closed at the end."""

    def __init__(self, images, show: bool = False, warn: Callable[[str], None] = lambda line: None):
        self.images, self.failed = list(images), 0
        self.window = None
        if show:
            from dcnviz.viz.show import open_window

            self.window = open_window("dcnviz", warn)

    def __iter__(self):
        from dcnviz.errors import ImageError
        from dcnviz.io.images import read_image

        for i, path in enumerate(self.images, 1):
            try:
                picture = read_image(path)
            except ImageError as e:
                self.skip(e)
                continue
            yield i, path, picture

    def skip(self, error) -> None:
        """Report ``error`` for one input and count it."""
        self.failed += 1
        click.echo(f"Error: {error}" + ("; skipped" if len(self.images) > 1 else ""), err=True)

    def finish(self, out_dir, say: Callable[[str], None]) -> None:
        """End the run: say where the results are (unless every input failed); exit 1 if any failed."""
        if self.window is not None:
            self.window.close()
        if self.failed < len(self.images):
            say(f"Results saved to {out_dir}")
        if self.failed:
            raise click.exceptions.Exit(1)
