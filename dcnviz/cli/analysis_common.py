"""What the analysis commands (offsets, receptive-field, rois, dilation-stats) share: their options, the
model checks made before any weights are loaded, and turning --at/--annotation/--conf into the units of an
:class:`dcnviz.analysis.Inspection` (the analysis itself is in :mod:`dcnviz.analysis.inspection`)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import click
import numpy as np

from dcnviz.cli.common import apply_options, debug_option, resolve_model, run_options, select_device
from dcnviz.errors import UserError

DEFAULT_MODEL = "rfcn_dcn_synth"
SAMPLES = "synth_*.jpg"


def analysis_options(command: str, needs: str = "deformable conv layers") -> Callable[[Callable], Callable]:
    """--model (a registered model with ``needs``, default :data:`DEFAULT_MODEL`), --weights, --device,
    --out runs/<command>, --exist-ok, --quiet, --debug."""
    return apply_options(run_options(command, f"Registered model with {needs}; default: {DEFAULT_MODEL}.")
                         + [debug_option])


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
                                                levels, default_levels)]
    except ValueError as e:
        raise usage_error("--levels" if levels is not None and "levels" in str(e) else "--layer", e) from None


def load(spec, weights, device: str, quiet: bool):
    """The model with its weights on the chosen device."""
    import dcnviz

    dev = select_device(device, warn=None if quiet else lambda line: click.echo(line, err=True))
    return dcnviz.load_model(spec.name, weights, dev), dev


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
            return [inspection.unit_at(x, y, top) for x, y in at]
        except ValueError as e:
            raise usage_error("--at", e) from None
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
