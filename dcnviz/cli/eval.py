"""``dcnviz eval``: detection AP or segmentation mIoU of a model on a split (see dcnviz/eval/evaluate.py).

Output (``OUT`` = runs/eval, runs/eval2, …)::

    OUT/scores.json   the scores: the same object --json prints (see :func:`scores_record`)
"""
from __future__ import annotations

import contextlib
import json
import os

import click

from dcnviz.cli.common import (apply_options, data_option, dataset_run_options, debug_option, deprecated,
                               finish_processes, json_option, resolve_model, run_folder, run_options,
                               split_option, start_processes)

# Four decimals: an AP or IoU over a test split is not known better than that.
DIGITS = 4


@click.command("eval")
@click.argument("model_arg", required=False, metavar="[MODEL]")
@apply_options([data_option(), split_option()]
               + run_options("eval", "Registered model name, or a weights file whose model is recognised "
                                     "(see 'dcnviz models'); default: the bundled detection model.")
               + [json_option("Print the scores as one JSON object on stdout (the same as OUT/scores.json)."),
                  debug_option])
@dataset_run_options
def eval_(model_arg, data, split, model, weights, device, out, exist_ok, quiet, json_out, workers, resume,
          save_every):
    """Score a model (-m NAME or a weights file) on --split of --data.

    Detection: VOC2010+ area AP at IoU > 0.5 and > 0.7 per class, difficult boxes ignored, and their
    means (mAP50, mAP70). Segmentation: IoU per class and mIoU, pixels labelled 255 ignored. --data is a
    VOC-layout folder (VOCdevkit/VOC2007, dcnviz synth), COCO or Cityscapes. Images that cannot be read
    are reported and left out (exit status 1). Writes OUT/scores.json, and keeps the partial state there
    so that --resume continues an interrupted run. Under torchrun the images are split over the
    processes; detections are gathered and scored once. The positional MODEL of earlier releases still
    works (deprecated).

    \b
    Examples:
      dcnviz eval --data synth/ -m rfcn_dcn_synth
      dcnviz eval --data synth/ -w my_model.safetensors --json
      torchrun --nproc-per-node 2 -m dcnviz eval --data synth/ -m rfcn_dcn_synth -o runs/ev
    """
    from dcnviz.eval.evaluate import evaluate
    from dcnviz.io.images import write_json_atomic
    from dcnviz.models import load_model
    from dcnviz.runner import default_workers
    from dcnviz.runner.partial import discard

    if model_arg is not None:
        if model is not None:
            raise click.UsageError("give the model once: -m NAME (the positional MODEL is deprecated)")
        deprecated(f"'dcnviz eval {model_arg}'", f"'dcnviz eval -m {model_arg}'")
        model = model_arg
    if model is None and weights is None:
        model = resolve_model(None, "detection").name
    elif model is not None and not os.path.isfile(model):
        model = resolve_model(model, None).name  # an unknown name is a usage error with suggestions
    ctx = start_processes(device, quiet or json_out)
    with contextlib.ExitStack() as stack:
        out_dir = run_folder(stack, out, exist_ok, resume, ctx)
        net = load_model(model if model is not None else weights, weights=weights if model else None, device=ctx.device)
        scores = evaluate(net, data, split, ctx=ctx, workers=default_workers() if workers is None else workers,
                          out_dir=out_dir, config={"model": model, "weights": str(weights)}, resume=resume,
                          save_every=save_every, quiet=quiet or json_out)
        if scores is not None:
            record = scores_record(scores, model, weights, data, split)
            write_json_atomic(out_dir / "scores.json", record, expand=2)
            discard(out_dir)
    finish_processes(ctx)
    if scores is None:  # not rank 0: rank 0 scores and writes
        return
    if json_out:
        click.echo(json.dumps(record))
    else:
        for line in table(record):
            click.echo(line)
    if scores["skipped"]:
        click.echo(f"skipped: {len(scores['skipped'])} images ({', '.join(s['id'] for s in scores['skipped'])})",
                   err=True)
    if not quiet:
        click.echo(f"Results saved to {out_dir}", err=True)
    if scores["skipped"]:
        raise click.exceptions.Exit(1)


def scores_record(scores: dict, model: str | None, weights, data, split: str) -> dict:
    """The JSON of ``dcnviz eval``, one shape for both tasks: ``{"model" (name, or the weights file the
    model was recognised from; None), "weights", "data", "split",
    "task", "images", "metric", "mean": {name: value}, "per_class": [{"class": name, <metric>: value,
    …}], "skipped": [{"id", "error"} of the images left out]}``, values rounded to :data:`DIGITS` (None for a class without ground truth), paths relative to
    the working directory."""
    from dcnviz.io.results_json import json_path

    def r(x):
        return None if x is None else round(float(x), DIGITS)

    if scores["task"] == "detection":
        mean = {"mAP50": r(scores["mAP50"]), "mAP70": r(scores["mAP70"])}
        per_class = [{"class": name, "AP50": r(scores["AP50"][name]), "AP70": r(scores["AP70"][name])}
                     for name in scores["AP50"]]
        metric = f"{scores['metric']}, difficult ignored"
    else:
        mean = {"mIoU": r(scores["mIoU"])}
        per_class = [{"class": name, "IoU": r(iou)} for name, iou in zip(scores["classes"], scores["IoU"])]
        metric = "IoU per class, label 255 ignored"
    return {"model": model, "weights": json_path(weights), "data": json_path(data), "split": split,
            "task": scores["task"], "images": scores["images"], "metric": metric, "mean": mean,
            "per_class": per_class, "skipped": scores.get("skipped", [])}


def table(record: dict) -> list[str]:
    """The scores as a text table: a row per class, then the means."""
    names = list(record["mean"])
    columns = [k for k in record["per_class"][0] if k != "class"] if record["per_class"] else []
    lines = [f"{record['model']} on {record['split']} ({record['images']} images), {record['metric']}",
             f"{'class':<16}" + "".join(f"{c:>9}" for c in columns)]
    for row in record["per_class"]:
        lines.append(f"{row['class']:<16}" + "".join(f"{_fmt(row[c]):>9}" for c in columns))
    lines.append(f"{'mean':<16}" + "".join(f"{_fmt(record['mean'][n]):>9}" for n in names))
    return lines


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.{DIGITS}f}"
