"""``dcnviz bench dataset``: images/s of ``dcnviz dilation-stats`` over a dataset with and without DataLoader
workers, on one process and on two (torchrun), run in turns so a busy machine slows them alike.

Attached to ``dcnviz bench`` in :mod:`dcnviz.cli.bench`. Each configuration is a fresh ``python -m dcnviz
dilation-stats`` (under ``python -m torch.distributed.run --standalone`` for several processes); its
speed is the run's own "N images in T s" line (images / seconds from the first image loaded to the last
one done, slowest process), so start-up and model loading are left out; the wall time of the whole
command is reported beside it.
"""
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from dcnviz.cli.analysis_common import DEFAULT_MODEL
from dcnviz.cli.common import data_option, device_option, json_option, model_option

_SPEED = re.compile(r"^(\d+) images in ([0-9.]+) s", re.MULTILINE)


def threads_per_process(processes: int, threads: int | None) -> int:
    """``threads``, or the CPU cores shared out among ``processes``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return threads or max(1, cores // processes)


def run_once(data: Path, model: str, processes: int, workers: int | None, threads: int, device: str,
             out: Path) -> dict:
    """One ``dilation-stats`` run with ``threads`` torch threads per process (``OMP_NUM_THREADS``):
    ``{"images", "seconds", "img_per_s", "wall_s"}``."""
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)] if processes > 1 else []
    cmd = [sys.executable, *launch, "-m", "dcnviz", "dilation-stats", "--data", str(data), "-m", model, "-o", str(out),
           "--device", device, *([] if workers is None else ["--workers", str(workers)])]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    wall = time.perf_counter() - start
    found = _SPEED.search(proc.stderr)
    if proc.returncode != 0 or found is None:
        raise click.ClickException(f"{' '.join(cmd)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    images, seconds = int(found[1]), float(found[2])
    return {"images": images, "seconds": seconds, "img_per_s": images / seconds, "wall_s": wall}


@click.command("dataset")
@data_option(required=False, help="A dataset folder (split test); default: --images synthetic scenes made in a "
                                   "temporary folder.")
@click.option("--images", type=click.IntRange(min=1), default=400, show_default=True,
              help="Synthetic scenes to make when --data is not given (dcnviz synth, seed 999).")
@model_option(f"Model with deformable layers; default: {DEFAULT_MODEL}.")
@device_option("cpu")
@click.option("--threads", type=click.IntRange(min=1), metavar="N",
              help="torch threads of each process (default: the CPU cores shared out among the processes, "
                   "as torchrun would without OMP_NUM_THREADS = 1).")
@click.option("--rounds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Times each configuration runs (in turns); the median is reported.")
@json_option("Print JSON instead of a table.")
def dataset(data, images, model, device, threads, rounds, json_out):
    """images/s of dilation-stats: --workers 0 vs the default, on 1 and on 2 processes (torchrun)."""
    model = model or DEFAULT_MODEL
    from dcnviz.runner import default_workers

    configs = [(1, 0), (1, None), (2, 0), (2, None)]
    with tempfile.TemporaryDirectory(prefix="dcnviz-bench-") as tmp:
        if data is None:
            from dcnviz.data.synth import generate

            data = Path(tmp) / "synth"
            generate(data, images, seed=999, split="test")
        results: dict[tuple, list[dict]] = {c: [] for c in configs}
        for r in range(rounds):
            for processes, workers in configs:
                out = Path(tmp) / f"out_{processes}_{workers}_{r}"
                results[(processes, workers)].append(
                    run_once(data, model, processes, workers, threads_per_process(processes, threads), device, out))
    rows = []
    for (processes, workers), runs in results.items():
        shown = workers if workers is not None else f"default ({default_workers(processes)})"
        rows.append({"processes": processes, "threads": threads_per_process(processes, threads), "workers": shown,
                     "images": runs[0]["images"],
                     "img_per_s": statistics.median(r["img_per_s"] for r in runs),
                     "wall_s": statistics.median(r["wall_s"] for r in runs)})
    base = rows[0]["img_per_s"]
    for row in rows:
        row["speedup"] = row["img_per_s"] / base
    if json_out:
        click.echo(json.dumps({"model": model, "device": device, "rounds": rounds, "cpus": os.cpu_count(), "rows": rows},
                              indent=2))
        return
    click.echo(f"dilation-stats, {model} on {device}, {rows[0]['images']} images, {os.cpu_count()} CPUs, "
               f"median of {rounds} round(s)")
    click.echo(f"{'processes':>9}{'threads':>8}  {'workers':<12}{'img/s':>8}{'vs 1x0':>8}{'wall s':>9}")
    for row in rows:
        click.echo(f"{row['processes']:>9}{row['threads']:>8}  {str(row['workers']):<12}{row['img_per_s']:>8.2f}"
                   f"{row['speedup']:>7.2f}x{row['wall_s']:>9.1f}")

