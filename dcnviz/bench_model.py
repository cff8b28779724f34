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
@click.argument("name")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--size", callback=_size, default=None, metavar="HxW",
              help="Input size (default: the model's official test size, e.g. 600x1000 or 1024x2048).")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed runs after one warm-up; the median is reported.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch (default: torch's own choice).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a line of text.")
def model(name, device, size, repeats, threads, as_json):
    """Time one full forward of model NAME (random weights) at its official test size."""
    import torch

    from dcnviz.models import get_spec

    try:
        get_spec(name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'NAME'") from None
    if device == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("CUDA is not available on this machine", param_hint="'--device'")
    if threads is not None:
        torch.set_num_threads(threads)
    r = time_forward(name, device, size, repeats)
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    rois = f", {r['rois']} RoIs" if r["rois"] is not None else ""
    click.echo(f"{name}: {r['median_s'] * 1e3:.0f} ms median of {repeats} (input {r['input'][0]}x{r['input'][1]}"
               f"{rois}; {r['device']}, {r['threads']} threads, torch {r['torch']}; runs "
               + ", ".join(f"{t * 1e3:.0f}" for t in r["runs_s"]) + " ms)")
