"""What the analysis commands (offsets, receptive-field, rois, dilation-stats) share: options, the model
checks made before any weights are loaded, the layer stack, and the choice of activation units."""
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
    from dcnviz.cli.predict import DEFAULT_CONF

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


def stack(net, layer: str | None, levels: int | None, default_levels: int):
    """:func:`dcnviz.models.capture.layer_stack`, its errors as usage errors of --layer/--levels."""
    from dcnviz.models.capture import layer_stack

    try:
        return layer_stack(net, layer, levels, default_levels)
    except ValueError as e:
        raise usage_error("--levels" if levels is not None and "levels" in str(e) else "--layer", e) from None


def load(spec, weights, device: str, quiet: bool):
    """The model with its weights on the chosen device."""
    import dcnviz

    dev = select_device(device, warn=None if quiet else lambda line: click.echo(line, err=True))
    return dcnviz.load_model(spec.name, weights, dev), dev


def geometry(layer):
    """:class:`dcnviz.analysis.LayerGeometry` of a :class:`dcnviz.models.resnet.DeformableLayer`."""
    from dcnviz.analysis import LayerGeometry

    return LayerGeometry(layer.kernel_size, layer.dilation, layer.padding, layer.stride, layer.deformable_groups)


def points_per_unit(geometries) -> int:
    """How many composed sampling points a unit has: the product of the layers' tap counts (9**L for 3x3)."""
    return int(np.prod([g.kernel_size[0] * g.kernel_size[1] for g in geometries]))


def sample_images() -> list[Path]:
    """The bundled sample images (``samples/synth_*.jpg``)."""
    from dcnviz.models.loading import bundled_dir

    folder = Path(bundled_dir("samples"))
    images = sorted(folder.glob(SAMPLES))
    if not images:
        raise UserError(f"no sample images ({SAMPLES}) in {folder}; name an IMAGE")
    return images


def object_boxes(result, image: np.ndarray, annotation: Path | None, conf: float) -> tuple[np.ndarray, str]:
    """Boxes to choose units on, and where they come from: ``annotation`` (a VOC XML; every object,
    difficult ones too), else the model's detections with score >= ``conf``, else the connected
    components of its segmentation (classes named background left out)."""
    from dcnviz.analysis.units import segment_boxes
    from dcnviz.structures import Detections
    from dcnviz.viz.draw import BACKGROUND_NAMES

    if annotation is not None:
        from dcnviz.data.voc import parse_annotation

        ann = parse_annotation(annotation)
        if (ann.height, ann.width) != image.shape[:2]:
            raise UserError(f"{annotation} is for a {ann.width}x{ann.height} image, but the image is "
                            f"{image.shape[1]}x{image.shape[0]}")
        return ann.boxes().astype(np.float64), f"the objects of {annotation}"
    if isinstance(result, Detections):
        keep = np.asarray(result.scores) >= conf
        return np.asarray(result.boxes, np.float64)[keep], f"the detections with score >= {conf:g}"
    skip = [i for i, name in enumerate(result.class_names) if name.lower() in BACKGROUND_NAMES]
    return segment_boxes(result.labels, skip), "the segments"


def choose_units(result, image: np.ndarray, top_layer, at, annotation, conf: float, kinds, warn):
    """The units of one image: at the ``--at`` positions, else the ``kinds`` picked on
    :func:`object_boxes`; ``warn`` gets a line for each kind that has no candidate."""
    from dcnviz.analysis.units import pick_units, units_at

    map_size = tuple(result.captured[top_layer.offset].shape[-2:])
    stride = top_layer.feature_stride
    if at:
        try:
            return units_at(at, map_size, result.prep.scale, stride, image.shape[:2])
        except ValueError as e:
            raise usage_error("--at", e) from None
    boxes, source = object_boxes(result, image, annotation, conf)
    units = pick_units(boxes, map_size, result.prep.scale, stride, image.shape[:2], kinds)
    missing = [k for k in kinds if k not in {u.kind for u in units}]
    if missing:
        warn(f"no {' or '.join(missing)} unit from {source} ({len(boxes)} boxes); use --at or --annotation")
    return units


def reporter(quiet: bool) -> Callable[[str], None]:
    """Where progress lines go: stderr, or nowhere with --quiet (errors are printed regardless)."""
    return (lambda line: None) if quiet else (lambda line: click.echo(line, err=True))


def predict_units(net, image: np.ndarray, path, layers, at, annotation, conf: float, kinds, say):
    """Run the model on one image and choose its units: (result, units, the layers' offset maps top first).
    Raises :class:`~dcnviz.errors.UserError` when there is no unit at all."""
    result = net.predict(image)
    units = choose_units(result, image, layers[0], at, annotation, conf, kinds, lambda line: say(f"{path}: {line}"))
    if not units:
        raise UserError(f"{path}: no unit to show; use --at")
    return result, units, [result.captured[layer.offset] for layer in layers]


def unit_points(offsets, geometries, units, prep, stride: int, group, round_: bool):
    """Per unit, its :class:`~dcnviz.analysis.SamplingLocations` and their (x, y) image positions."""
    from dcnviz.analysis import sampling_locations

    found = [sampling_locations(offsets, u.cell, geometries, group=group, round=round_) for u in units]
    return found, [f.image_xy(prep.scale, stride) for f in found]


def titles(units) -> list[str]:
    """Panel titles: the unit's kind, its object's size, its position."""
    out = []
    for u in units:
        kind = {"at": "unit", "small": "small object", "large": "large object"}.get(u.kind, u.kind)
        size = "" if u.box is None else f" {u.box[2] - u.box[0] + 1:.0f}x{u.box[3] - u.box[1] + 1:.0f}"
        out.append(f"{kind}{size} at ({u.xy[0]:.0f}, {u.xy[1]:.0f})")
    return out
