"""``dcnviz dilation-stats``: the paper's Table 2 for a model on a VOC-layout split (see
dcnviz/eval/dilation_stats.py for the computation and dcnviz.analysis.TABLE2_CONFIG for every rule).

Output (``OUT`` = runs/dilation-stats, …)::

    OUT/stats.json          {"layers": {layer: {bucket: {"mean", "std", "n"}}}, "config": {...}, "paper": {...}}
    OUT/stats.csv           layer, bucket, mean, std, n, paper_mean, paper_std
    OUT/hist_<layer>.png    the distribution per bucket
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import click

from dcnviz.cli.analysis_common import analysis_options, reporter, resolve
from dcnviz.cli.common import dataset_run_options, finish_processes, run_folder, start_processes

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
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--split", default="test", show_default=True, help="Image set ImageSets/Main/SPLIT.txt.")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="Use only the first N images of the split.")
@click.option("--compare-paper", is_flag=True, help="Print the paper's Table 2 values under each layer.")
@dataset_run_options
@analysis_options("dilation-stats")
def dilation_stats(dataset, split, limit, compare_paper, workers, resume, save_every, model, weights, device, out,
                   exist_ok, quiet):
    """Effective dilation of the deformable filters by object size (paper Table 2) over DATASET, a
    VOC-layout folder (JPEGImages/, Annotations/*.xml with 1-based boxes, ImageSets/Main/SPLIT.txt).

    Each filter (output position of a deformable layer) gets the mean distance between its horizontally
    or vertically adjacent sampling locations, in cells of the layer's input map, and the size bucket of
    the smallest ground-truth box holding its centre: small (< 96² px), medium, large (> 224² px) or
    background; positions inside difficult boxes only are left out. Prints the table (mean ± std and N
    per cell) with every rule used, and writes OUT/stats.json, OUT/stats.csv and OUT/hist_<layer>.png.
    Entries whose annotation or image is missing or broken are reported and skipped (exit status 1).
    DATASET may also be a COCO folder (annotations/instances_SPLIT.json). Under torchrun the images are
    split over the processes and the statistics merged exactly; --resume continues an interrupted run.

    \b
    Examples:
      dcnviz dilation-stats /data/VOCdevkit/VOC2007 --split test --compare-paper
      dcnviz dilation-stats synth/ --limit 50 --device cuda
      torchrun --nproc-per-node 4 -m dcnviz dilation-stats VOC2007 -o runs/t2 --device cuda
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

    spec, meta = resolve(model)
    ctx = start_processes(device, quiet)
    say = reporter(quiet or not ctx.main)
    with contextlib.ExitStack() as stack:
        out_dir = run_folder(stack, out, exist_ok, resume, ctx)
        net = dcnviz.load_model(spec.name, weights, ctx.device)
        say(f"{spec.name} on {ctx.device}{f' x {ctx.world} processes' if ctx.world > 1 else ''}: {dataset}, "
            f"split {split}")
        run = run_stats(net, dataset, split, limit, ctx=ctx, workers=default_workers() if workers is None else workers,
                        out_dir=out_dir, resume=resume, save_every=save_every, quiet=quiet,
                        config={"model": spec.name})
        if run is None:  # not rank 0: rank 0 merges and writes
            finish_processes(ctx)
            return
        summary = run.stats.summary("pooled")
        config = {**TABLE2_CONFIG, "group_mode": "pooled", "model": spec.name,
                  "weights": os.fspath(weights) if weights else "default", "dataset": os.fspath(dataset),
                  "split": split, "limit": limit, "images_listed": len(run.ids), "images": run.stats.images,
                  "hist_max": float(run.stats.edges[-1]), "hist_bins": len(run.stats.edges) - 1,
                  "skipped": [{"id": i, "error": e} for i, e in run.skipped]}
        write_json_atomic(out_dir / "stats.json", stats_record(summary, config, PAPER_TABLE2), expand=3)
        write_bytes_atomic(out_dir / "stats.csv", stats_csv(summary, PAPER_TABLE2).encode())
        nominal = {short_name(l): l.dilation for l in meta.deformable_layers}
        for layer, counts in run.stats.histograms("pooled").items():
            title = f"{layer}: {spec.name}, {run.stats.images} images of {split}"
            write_bytes_atomic(out_dir / f"hist_{layer}.png",
                               dilation_histogram(run.stats.edges, counts, BUCKETS, title, nominal[layer]))
        discard(out_dir)
    finish_processes(ctx)

    click.echo(f"Effective dilation, {spec.name} on {dataset} ({split}, {run.stats.images} images): "
               f"mean {PLUS_MINUS} std (N filters)")
    for line in table(summary, PAPER_TABLE2 if compare_paper else None):
        click.echo(line)
    click.echo("Rules:")
    for key, value in config.items():
        if key not in ("skipped",):
            click.echo(f"  {key}: {value}")
    if run.skipped:
        click.echo(f"  skipped: {len(run.skipped)} of {len(run.ids)} images ({', '.join(i for i, _ in run.skipped)})")
    if run.images_run:
        say(f"{run.images_run} images in {run.seconds:.1f} s ({run.images_run / max(run.seconds, 1e-9):.2f} img/s"
            f"{f' over {ctx.world} processes' if ctx.world > 1 else ''})")
    say(f"Results saved to {out_dir}")
    if run.skipped:
        raise click.exceptions.Exit(1)
