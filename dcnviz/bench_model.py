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

from dcnviz.cli.common import (apply_options, device_option, dtype_options, json_option, model_option, threads_option,
                               use_threads)


def _size(ctx, param, value):
    if value is None:
        return None
    m = re.fullmatch(r"(\d+)[xX](\d+)", value.strip())
    if not m or min(int(m[1]), int(m[2])) < 32:
        raise click.BadParameter(f"expected HEIGHTxWIDTH with both at least 32, e.g. 600x1000; got {value!r}")
    return int(m[1]), int(m[2])


def time_forwards(cases: list[tuple[str, str]], device: str = "cpu", size: tuple[int, int] | None = None,
                  repeats: int = 3, seed: int = 0) -> list[dict]:
    """Median seconds of ``forward_official`` for each ``(model name, dtype)`` case ("float32" or
    "bfloat16") on one random (1, 3, H, W) input, after one warm-up round. The cases take turns within
    each repeat, so a change in machine load affects them alike and their ratios stay meaningful.

    ``size`` defaults to the first model's test scales (short x long side: 600x1000 for R-FCN, 1024x2048
    for Cityscapes DeepLab), the largest input its preprocessing produces."""
    import torch

    from dcnviz import _C
    from dcnviz.cli.common import model_dtype
    from dcnviz.memory import freed_memory_kept
    from dcnviz.models import get_spec
    from dcnviz.models.mxnet_cpu import mxnet_cpu_inference

    h, w = size or get_spec(cases[0][0]).scales
    dev = torch.device(device)
    torch.manual_seed(seed)
    data = (torch.randn(1, 3, h, w) * 60).to(dev)
    nets = []
    for name, dtype in cases:
        torch.manual_seed(seed)
        nets.append(mxnet_cpu_inference(get_spec(name).factory().eval()).to(dev, model_dtype(dtype)))
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times: list[list[float]] = [[] for _ in cases]
    rois: list[int | None] = [None] * len(cases)
    with torch.inference_mode():
        for i in range(repeats + 1):
            for k, ((_, dtype), net) in enumerate(zip(cases, nets)):
                x = data.to(model_dtype(dtype))
                sync()
                start = time.perf_counter()
                out = net.forward_official(x)
                sync()
                if i:  # the first round warms up caches and kernels
                    times[k].append(time.perf_counter() - start)
                rois[k] = int(out["rois"].shape[0]) if "rois" in out else None
    return [{"model": name, "dtype": dtype, "device": str(dev), "threads": torch.get_num_threads(), "input": [h, w],
             "median_s": statistics.median(ts), "runs_s": ts, "rois": r, "torch": torch.__version__,
             "cpu_kernels": _C.cpu_kernels(), "freed_memory_kept": freed_memory_kept()}
            for (name, dtype), ts, r in zip(cases, times, rois)]


def time_forward(name: str, device: str = "cpu", size: tuple[int, int] | None = None, repeats: int = 3,
                 seed: int = 0) -> dict:
    """:func:`time_forwards` of one model in float32."""
    return time_forwards([(name, "float32")], device, size, repeats, seed)[0]


def memory_note(kept: bool) -> str:
    """What the text lines of ``bench model`` and ``bench ops`` add when freed memory was kept."""
    return ", freed memory kept" if kept else ""


@click.command("model")
@click.argument("name_arg", required=False, metavar="[NAME]")
@model_option("Registered model to time (see 'dcnviz models').")
@device_option("cpu")
@click.option("--size", callback=_size, default=None, metavar="HxW",
              help="Input size (default: the model's official test size, e.g. 600x1000 or 1024x2048).")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed runs after one warm-up; the median is reported.")
@threads_option()
@click.option("--compare", metavar="NAME",
              help="Also time this model (e.g. the plain twin rfcn_synth of rfcn_dcn_synth) on the same input, "
                   "interleaved, and print the time ratio.")
@apply_options(dtype_options())
@json_option("Print JSON instead of a line of text.")
def model(name_arg, model, device, size, repeats, threads, compare, dtype, json_out):
    """Time one full forward of a model (-m NAME; random weights) at its official test size.

    With --compare PLAIN the two models run in turn within each repeat and the ratio of their medians is
    printed; with --dtype bfloat16 the model also runs in float32, in turn, for the bfloat16/float32
    ratio. The positional NAME of earlier releases still works (deprecated)."""
    from dcnviz.cli.common import deprecated, resolve_model, select_device

    if name_arg is not None:
        if model is not None:
            raise click.UsageError("give the model once: -m NAME (the positional NAME is deprecated)")
        deprecated(f"'dcnviz bench model {name_arg}'", f"'dcnviz bench model -m {name_arg}'")
        model = name_arg
    if model is None:
        raise click.UsageError("Missing option '-m' / '--model'.")
    name = resolve_model(model, None).name
    cases = [(name, dtype)] + ([(name, "float32")] if dtype != "float32" else [])
    if compare is not None:
        cases.append((resolve_model(compare, None).name, dtype))
    dev = str(select_device(device))
    use_threads(threads)
    runs = time_forwards(cases, dev, size, repeats)
    ratios = {}
    if dtype != "float32":
        ratios[f"{dtype}/float32"] = runs[0]["median_s"] / runs[1]["median_s"]
    if compare is not None:
        ratios[f"{name}/{cases[-1][0]}"] = runs[0]["median_s"] / runs[-1]["median_s"]
    if json_out:
        click.echo(json.dumps(dict(runs[0], compared=runs[1:], ratios=ratios) if len(runs) > 1 else runs[0],
                              indent=2))
        return
    for r in runs:
        rois = f", {r['rois']} RoIs" if r["rois"] is not None else ""
        kind = f" ({r['dtype']})" if len(runs) > 1 else ""
        click.echo(f"{r['model']}{kind}: {r['median_s'] * 1e3:.0f} ms median of {repeats} (input "
                   f"{r['input'][0]}x{r['input'][1]}{rois}; {r['device']}, {r['threads']} threads, torch "
                   f"{r['torch']}, dcnviz CPU kernels {r['cpu_kernels']}{memory_note(r['freed_memory_kept'])}; runs "
                   + ", ".join(f"{t * 1e3:.0f}" for t in r["runs_s"]) + " ms)")
    for what, ratio in ratios.items():
        click.echo(f"ratio {what}: {ratio:.2f} (medians, interleaved runs)")
