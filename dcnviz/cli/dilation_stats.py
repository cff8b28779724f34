"""``dcnviz dilation-stats``: the paper's Table 2 for a model on a VOC-layout split (see
dcnviz/eval/dilation_stats.py for the computation and dcnviz.analysis.TABLE2_CONFIG for every rule).

Output (``OUT`` = runs/dilation-stats, …)::

    OUT/stats.json          {"layers": {layer: {bucket: {"mean", "std", "n"}}}, "config": {...}, "paper": {...}}
    OUT/stats.csv           layer, bucket, mean, std, n, paper_mean, paper_std
    OUT/hist_<layer>.png    the distribution per bucket
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import click
import numpy as np

from dcnviz.cli.analysis_common import analysis_options, emit_json, load_custom_model, reporter, resolve
from dcnviz.cli.common import (data_option, dataset_run_options, deprecated, finish_processes, in_dtype, run_folder,
                               split_option, start_processes)
from dcnviz.io.results_json import json_path
from dcnviz.models.custom import is_custom_spec

PLUS_MINUS = "\u00b1"


def _cell(mean, std, n: int | None = None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f} {PLUS_MINUS} {std:.2f}" + ("" if n is None else f" (N={n})")


def table(summary: dict, paper: dict | None) -> list[str]:
    """The Table 2 layout: a row per layer (top first), a column per bucket, "mean ± std (N)"; with
    ``paper``, its value under each layer that it has."""
    from dcnviz.analysis import BUCKETS

    rows = [["layer", *BUCKETS]]
    for layer, cells in summary.items():
        rows.append([layer, *(_cell(cells[b]["mean"], cells[b]["std"], cells[b]["n"]) for b in BUCKETS)])
        if paper is not None and layer in paper:
            rows.append(["  paper", *(f"{m:.1f} {PLUS_MINUS} {s:.1f}" for m, s in (paper[layer][b] for b in BUCKETS))])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


@click.command("dilation-stats")
@click.argument("dataset_arg", required=False, type=click.Path(path_type=Path), metavar="[DATASET]")
@data_option(required=False)
@split_option()
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="Use only the first N images of the split.")
@click.option("--compare-paper", is_flag=True, help="Print the paper's Table 2 values under each layer.")
@click.option("--explain", is_flag=True, help="Print every rule used under the table (they are in stats.json always).")
@dataset_run_options
@analysis_options("dilation-stats", figures=False)
def dilation_stats(dataset_arg, data, split, limit, compare_paper, explain, workers, resume, save_every, model,
                   weights, device, out, exist_ok, quiet, json_out, dtype):
    """Effective dilation of the deformable filters by object size (paper Table 2) over --data, a
    VOC-layout folder (JPEGImages/, Annotations/*.xml with 1-based boxes, ImageSets/Main/SPLIT.txt).

    Each filter (output position of a deformable layer) gets the mean distance between its horizontally
    or vertically adjacent sampling locations, in cells of the layer's input map, and the size bucket of
    the smallest ground-truth box holding its centre: small (< 96² px), medium, large (> 224² px) or
    background; positions inside difficult boxes only are left out. Prints the table (mean ± std and N
    per cell; --explain adds every rule used), and writes OUT/stats.json, OUT/stats.csv and
    OUT/hist_<layer>.png; --json prints stats.json instead of the table. Entries whose annotation or image
    is missing or broken are reported and skipped (exit status 1). --data may also be a COCO folder
    (annotations/instances_SPLIT.json). Under torchrun the images are split over the processes and the
    statistics merged exactly; --resume continues an interrupted run. --model FILE.py:FUNCTION runs your
    own network (see the README): its deformable layers by module path, each bucketed with its own
    feature stride (recorded in stats.json). The positional DATASET of earlier releases still works
    (deprecated).

    \b
    Examples:
      dcnviz dilation-stats --data /data/VOCdevkit/VOC2007 --compare-paper
      dcnviz dilation-stats --data synth/ --limit 50 --device cuda
      dcnviz dilation-stats --data synth/ --model mynet.py:build --weights mynet.safetensors
      torchrun --nproc-per-node 4 -m dcnviz dilation-stats --data VOC2007 -o runs/t2 --device cuda
    """
    import dcnviz
    from dcnviz.analysis import BUCKETS, PAPER_TABLE2, TABLE2_CONFIG
    from dcnviz.eval.dilation_stats import dilation_stats as run_stats
    from dcnviz.io.analysis_json import stats_csv, stats_record
    from dcnviz.io.images import write_bytes_atomic, write_json_atomic
    from dcnviz.models.capture import short_name
    from dcnviz.runner import default_workers
    from dcnviz.runner.partial import discard
    from dcnviz.viz.plots import dilation_histogram

    if dataset_arg is not None:
        if data is not None:
            raise click.UsageError("give the dataset once: --data DIR (the positional DATASET is deprecated)")
        deprecated(f"'dcnviz dilation-stats {dataset_arg}'", f"'dcnviz dilation-stats --data {dataset_arg}'")
        data = dataset_arg
    if data is None:
        raise click.UsageError("Missing option '--data'.")
    dataset = data
    custom = is_custom_spec(model)
    if not custom:
        spec, meta = resolve(model)
    ctx = start_processes(device, quiet)
    say = reporter(quiet or not ctx.main)
    with contextlib.ExitStack() as stack:
        if custom:  # imported (and its usage errors reported) before the output folder is made
            net, _ = load_custom_model(model, weights, ctx.device, dtype)
            name, nominal = model, {n: float(np.mean(m.dilation)) for n, m in net.layers.items()}
        else:
            name, nominal = spec.name, {short_name(l): l.dilation for l in meta.deformable_layers}
        out_dir = run_folder(stack, out, exist_ok, resume, ctx)
        if not custom:
            net = in_dtype(dcnviz.load_model(spec.name, weights, ctx.device), dtype, say)
        say(f"{name} on {ctx.device}{f' x {ctx.world} processes' if ctx.world > 1 else ''}: {dataset}, "
            f"split {split}")
        run = run_stats(net, dataset, split, limit, ctx=ctx, workers=default_workers() if workers is None else workers,
                        out_dir=out_dir, resume=resume, save_every=save_every, quiet=quiet,
                        config={"model": name})
        if run is None:  # not rank 0: rank 0 merges and writes
            finish_processes(ctx)
            return
        summary = run.stats.summary("pooled")
        config = {**TABLE2_CONFIG, "group_mode": "pooled", "model": name, "feature_strides": run.strides,
                  "weights": json_path(weights) if weights else "default", "dataset": json_path(dataset),
                  "split": split, "limit": limit, "images_listed": len(run.ids), "images": run.stats.images,
                  "hist_max": float(run.stats.edges[-1]), "hist_bins": len(run.stats.edges) - 1,
                  "skipped": [{"id": i, "error": e} for i, e in run.skipped]}
        record = stats_record(summary, config, PAPER_TABLE2)
        write_json_atomic(out_dir / "stats.json", record, expand=3)
        write_bytes_atomic(out_dir / "stats.csv", stats_csv(summary, PAPER_TABLE2).encode())
        for layer, counts in run.stats.histograms("pooled").items():
            title = f"{layer}: {name}, {run.stats.images} images of {split}"
            write_bytes_atomic(out_dir / f"hist_{layer}.png",
                               dilation_histogram(run.stats.edges, counts, BUCKETS, title, nominal[layer]))
        discard(out_dir)
    finish_processes(ctx)

    if json_out:
        emit_json(record, True)
    else:
        click.echo(f"Effective dilation, {name} on {dataset} ({split}, {run.stats.images} images): "
                   f"mean {PLUS_MINUS} std (N filters)")
        for line in table(summary, PAPER_TABLE2 if compare_paper else None):
            click.echo(line)
        if explain:
            click.echo("Rules:")
            for key, value in config.items():
                if key not in ("skipped",):
                    click.echo(f"  {key}: {value}")
        else:
            click.echo("Rules: Table 2's buckets by the area of the smallest GT box holding a filter's centre, the "
                       "12 adjacent tap pairs, in cells of the input map (--explain or stats.json: all of them)")
    if run.skipped:
        say(f"skipped: {len(run.skipped)} of {len(run.ids)} images ({', '.join(i for i, _ in run.skipped)})")
    if run.images_run:
        say(f"{run.images_run} images in {run.seconds:.1f} s ({run.images_run / max(run.seconds, 1e-9):.2f} img/s"
            f"{f' over {ctx.world} processes' if ctx.world > 1 else ''})")
    say(f"Results saved to {out_dir}")
    if run.skipped:
        raise click.exceptions.Exit(1)
