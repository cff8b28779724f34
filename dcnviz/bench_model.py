"""``dcnviz bench model NAME``: wall time of a full network forward at the model's official test size.

Attached to ``dcnviz bench`` in :mod:`dcnviz.cli.bench`. The network gets random weights (the
time does not depend on their values), prepared for inference as ``load_model`` returns it (BatchNorms
folded, convs as in MXNet's CPU executor): R-FCN models run ``forward_official`` end to end (backbone,
RPN, proposals, head on up to 300 RoIs); DeepLab models up to the cropped scores.
"""
from __future__ import annotations

import json
import re
import statistics
import time

import click

from dcnviz.cli.common import device_option, json_option, model_option, threads_option, use_threads


def _size(ctx, param, value):
    if value is None:
        return None
    m = re.fullmatch(r"(\d+)[xX](\d+)", value.strip())
    if not m or min(int(m[1]), int(m[2])) < 32:
        raise click.BadParameter(f"expected HEIGHTxWIDTH with both at least 32, e.g. 600x1000; got {value!r}")
    return int(m[1]), int(m[2])


def time_forward(name: str, device: str = "cpu", size: tuple[int, int] | None = None, repeats: int = 3,
                 seed: int = 0) -> dict:
    """Median seconds of ``forward_official`` on a random (1, 3, H, W) input after one warm-up run.

    ``size`` defaults to the model's test scales (short x long side: 600x1000 for R-FCN, 1024x2048 for
    Cityscapes DeepLab), the largest input its preprocessing produces."""
    import torch

    from dcnviz.models import get_spec
    from dcnviz.models.mxnet_cpu import mxnet_cpu_inference

    spec = get_spec(name)
    h, w = size or spec.scales
    torch.manual_seed(seed)
    dev = torch.device(device)
    net = mxnet_cpu_inference(spec.factory().eval()).to(dev)
    data = (torch.randn(1, 3, h, w) * 60).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times, rois = [], None
    with torch.inference_mode():
        for i in range(repeats + 1):
            sync()
            start = time.perf_counter()
            out = net.forward_official(data)
            sync()
            if i:  # the first run warms up caches and kernels
                times.append(time.perf_counter() - start)
            rois = int(out["rois"].shape[0]) if "rois" in out else None
    return {"model": name, "device": str(dev), "threads": torch.get_num_threads(), "input": [h, w],
            "median_s": statistics.median(times), "runs_s": times, "rois": rois, "torch": torch.__version__}


@click.command("model")
@click.argument("name_arg", required=False, metavar="[NAME]")
@model_option("Registered model to time (see 'dcnviz models').")
@device_option("cpu")
@click.option("--size", callback=_size, default=None, metavar="HxW",
              help="Input size (default: the model's official test size, e.g. 600x1000 or 1024x2048).")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed runs after one warm-up; the median is reported.")
@threads_option()
@json_option("Print JSON instead of a line of text.")
def model(name_arg, model, device, size, repeats, threads, json_out):
    """Time one full forward of a model (-m NAME; random weights) at its official test size.

    The positional NAME of earlier releases still works (deprecated)."""
    from dcnviz.cli.common import deprecated, resolve_model, select_device

    if name_arg is not None:
        if model is not None:
            raise click.UsageError("give the model once: -m NAME (the positional NAME is deprecated)")
        deprecated(f"'dcnviz bench model {name_arg}'", f"'dcnviz bench model -m {name_arg}'")
        model = name_arg
    if model is None:
        raise click.UsageError("Missing option '-m' / '--model'.")
    name = resolve_model(model, None).name
    dev = str(select_device(device))
    use_threads(threads)
    r = time_forward(name, dev, size, repeats)
    if json_out:
        click.echo(json.dumps(r, indent=2))
        return
    rois = f", {r['rois']} RoIs" if r["rois"] is not None else ""
    click.echo(f"{name}: {r['median_s'] * 1e3:.0f} ms median of {repeats} (input {r['input'][0]}x{r['input'][1]}"
               f"{rois}; {r['device']}, {r['threads']} threads, torch {r['torch']}; runs "
               + ", ".join(f"{t * 1e3:.0f}" for t in r["runs_s"]) + " ms)")
