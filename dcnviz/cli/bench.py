"""``dcnviz bench``: timings of the operators (``bench ops``), of whole models (``bench model``) and of dataset
runs (``bench dataset``)."""
from __future__ import annotations

import json
import textwrap

import click

from dcnviz.bench_dataset import dataset
from dcnviz.bench_model import memory_note, model
from dcnviz.cli.common import device_option, json_option, select_device, threads_option, use_threads


@click.group()
def bench():
    """Time the operators and models."""


bench.add_command(model)
bench.add_command(dataset)


@bench.command()
@device_option("cpu")
@json_option("Print JSON instead of a table.")
@threads_option()
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timed runs per measurement (after one warm-up); the median is reported.")
@click.option("--op", "ops", type=click.Choice(["conv", "pool"]), multiple=True,
              help="Only these operators (repeatable): conv = deform_conv2d at res5, pool = "
                   "deform_psroi_pool at the R-FCN head (cls, cls no-trans, bbox) and psroi_pool. Default: both. "
                   "conv2d is always timed.")
@click.option("--channels-last", is_flag=True,
              help="Run the res5 convolutions (conv2d and both deform_conv2d) on channels-last input, offsets "
                   "and weights, the layout the prepared models run them in (default: NCHW).")
def ops(device, json_out, threads, repeats, ops, channels_last):
    """Forward and forward+backward time of the operators at the R-FCN sizes, with torchvision's
    deform_conv2d and a plain conv2d of the same shape for comparison (ratios are to conv2d)."""
    import torch

    from dcnviz import bench as lib

    device = str(select_device(device))
    use_threads(threads)
    try:
        rows = lib.run_ops(device, repeats, ops or lib.OPS, channels_last=channels_last)
    except (RuntimeError, NotImplementedError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise click.ClickException(f"benchmark failed: {textwrap.shorten(first_line, 240)}") from exc
    from dcnviz import _C
    from dcnviz.memory import freed_memory_kept

    if json_out:
        click.echo(json.dumps({"device": device, "threads": torch.get_num_threads(), "repeats": repeats,
                               "torch": torch.__version__, "cpu_kernels": _C.cpu_kernels(),
                               "freed_memory_kept": freed_memory_kept(),
                               "channels_last": channels_last, "rows": lib.as_dicts(rows),
                               "comparisons": lib.comparisons(rows)}, indent=2))
    else:
        layout = "channels-last" if channels_last else "NCHW"
        click.echo(f"device {device}, {torch.get_num_threads()} threads, median of {repeats} runs, torch "
                   f"{torch.__version__}, dcnviz CPU kernels {_C.cpu_kernels()}, res5 convolutions {layout}"
                   f"{memory_note(freed_memory_kept())}")
        click.echo(lib.format_table(rows))
