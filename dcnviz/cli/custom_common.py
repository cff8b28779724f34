"""What the analysis commands need for a ``--model FILE.py:FUNCTION`` model: loading it (a bad spec, file or
function is a usage error of --model; weights must be .safetensors), the deformable layer stack from one
recorded forward, the units and their composed sampling points (:mod:`dcnviz.models.custom`)."""
from __future__ import annotations

from types import SimpleNamespace

import click
import numpy as np

from dcnviz.cli.analysis_common import usage_error
from dcnviz.cli.common import select_device


def load_custom_model(spec: str, weights, device: str, quiet: bool):
    """(:class:`~dcnviz.models.custom.CustomModel` on the chosen device, the device)."""
    from dcnviz.models.custom import CustomModelError, load_custom

    if weights is not None and weights.suffix.lower() != ".safetensors":
        raise usage_error("--weights", ValueError(f"{weights}: a FILE.py:FUNCTION model takes .safetensors "
                                                  "weights only"))
    dev = select_device(device, warn=None if quiet else lambda line: click.echo(line, err=True))
    try:
        return load_custom(spec, weights, dev), dev
    except CustomModelError as e:
        raise usage_error("--model", e) from None


def custom_units(cm, picture: np.ndarray, layer: str | None, levels: int | None, at, group, round_,
                 default_levels: int = 3) -> SimpleNamespace:
    """Run ``cm`` once on ``picture`` and choose: the layer stack (``layer``, default the last deformable
    layer called, and ``levels`` layers at or below it in call order), the units (at ``at``, else the
    background unit), and each unit's composed sampling points through the consecutive layers of the
    stack whose maps match (each one's input is the next higher one's output size).

    Returns calls (top first), names, geoms, strides (feature stride of each layer's input map), units,
    found/xys (:func:`dcnviz.analysis.sampling_locations` and image positions), composed (layers
    composed), data and prep."""
    from dcnviz.analysis import pick_units, sampling_locations, units_at
    from dcnviz.analysis.effective import feature_stride, layer_geometry

    calls, prep, data = cm.capture(picture)
    names = [c.name for c in calls]
    top = names[-1] if layer is None else layer
    if top not in names:
        raise usage_error("--layer", ValueError(f"{cm.name} has no deformable layer {top!r}; its deformable layers "
                                                f"are {', '.join(names)}"))
    index = names.index(top)
    levels = min(default_levels, index + 1) if levels is None else levels
    if levels > index + 1:
        raise usage_error("--levels", ValueError(f"{levels} levels from {top} need {levels} deformable layers at or "
                                                 f"below it; there are {index + 1}"))
    chosen = calls[index - levels + 1:index + 1][::-1]
    composed = 1
    while composed < len(chosen) and tuple(chosen[composed].output.shape[-2:]) == tuple(
            chosen[composed - 1].input.shape[-2:]):
        composed += 1
    geoms = [layer_geometry(c) for c in chosen]
    net = tuple(data.shape[-2:])
    strides = [feature_stride(net, tuple(c.input.shape[-2:])) for c in chosen]
    groups = {g.deformable_groups for g in geoms[:composed]}
    if isinstance(group, int) and group >= min(groups):
        raise usage_error("--group", ValueError(f"{group}: {top} has {min(groups)} deformable group(s)"))
    if group == "all" and len(groups) > 1:
        raise usage_error("--group", ValueError("the layers have different numbers of deformable groups; "
                                                "use --group mean or a number"))
    map_size = tuple(chosen[0].output.shape[-2:])
    out_stride = feature_stride(net, map_size)
    image_size = picture.shape[:2]
    if at:
        try:
            units = units_at(at, map_size, prep.scale, out_stride, image_size)
        except ValueError as e:
            raise usage_error("--at", e) from None
    else:
        units = pick_units(np.zeros((0, 4)), map_size, prep.scale, out_stride, image_size, ("background",))
    stack = chosen[:composed]
    found = [sampling_locations([c.offset for c in stack], u.cell, geoms[:composed], group=group, round=round_,
                                input_size=tuple(stack[-1].input.shape[-2:]), boundary=[c.boundary for c in stack])
             for u in units]
    xys = [f.image_xy(prep.scale, strides[composed - 1]) for f in found]
    return SimpleNamespace(calls=chosen, names=[c.name for c in chosen], geoms=geoms, strides=strides, units=units,
                           found=found, xys=xys, composed=composed, data=data, prep=prep)
