"""``dcnviz eval``: detection AP or segmentation mIoU of a model on a split (see dcnviz/eval/evaluate.py)."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import click

from dcnviz.cli.common import (_check_device, dataset_run_options, finish_processes, run_folder,
                               start_processes)


@click.command("eval")
@click.argument("model")
@click.option("--data", required=True, type=click.Path(file_okay=False),
              help="Dataset folder: VOC layout (VOCdevkit/VOC2007, dcnviz synth), COCO or Cityscapes.")
@click.option("--split", default="test", show_default=True, help="Split to evaluate.")
@click.option("--weights", default=None, type=click.Path(dir_okay=False),
              help="Weights file to use instead of the model's own.")
@click.option("--device", default="auto", show_default=True, callback=_check_device, metavar="auto|cpu|cuda[:N]",
              help="auto uses the first GPU if there is one.")
@click.option("--json", "as_json", is_flag=True, help="Print the scores as one JSON object.")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Also write DIR/scores.json, and keep the partial state there so that --resume can "
                   "continue an interrupted run (a fresh DIR2, DIR3, ... if DIR exists).")
@dataset_run_options
def eval_(model, data, split, weights, device, as_json, out, workers, resume, save_every):
    """Score MODEL (a registered name or a weights file) on SPLIT of --data.

    Detection: VOC2010+ area AP at IoU > 0.5 and > 0.7 per class, difficult boxes ignored, and their
    means (mAP50, mAP70). Segmentation: IoU per class and mIoU, pixels labelled 255 ignored. Images that
    cannot be read are reported and left out (exit status 1). Under torchrun the images are split over
    the processes; detections are gathered and scored once."""
    from dcnviz.eval.evaluate import evaluate
    from dcnviz.io.images import write_json_atomic
    from dcnviz.models import load_model
    from dcnviz.runner import default_workers
    from dcnviz.runner.partial import discard

    if resume and out is None:
        raise click.UsageError("--resume needs the --out folder of the interrupted run")
    ctx = start_processes(device, as_json)
    with contextlib.ExitStack() as stack:
        out_dir = None if out is None else run_folder(stack, out, False, resume, ctx)
        net = load_model(model, weights=weights, device=ctx.device)
        scores = evaluate(net, data, split, ctx=ctx, workers=default_workers() if workers is None else workers,
                          out_dir=out_dir, config={"model": model}, resume=resume,
                          save_every=save_every, quiet=as_json)
        if scores is not None and out_dir is not None:
            write_json_atomic(out_dir / "scores.json", {"model": model, "split": split, **scores}, expand=2)
            discard(out_dir)
    finish_processes(ctx)
    if scores is None:  # not rank 0
        return
    if as_json:
        click.echo(json.dumps({"model": model, "split": split, **scores}))
    elif scores["task"] == "detection":
        click.echo(f"{model} on {split} ({scores['images']} images), {scores['metric']}, difficult ignored")
        click.echo(f"{'class':<16}{'AP@0.5':>9}{'AP@0.7':>9}")
        for name in scores["AP50"]:
            a50, a70 = scores["AP50"][name], scores["AP70"][name]
            click.echo(f"{name:<16}{_fmt(a50):>9}{_fmt(a70):>9}")
        click.echo(f"{'mean':<16}{_fmt(scores['mAP50']):>9}{_fmt(scores['mAP70']):>9}")
    else:
        click.echo(f"{model} on {split} ({scores['images']} images), IoU per class, 255 ignored")
        for name, iou in zip(scores["classes"], scores["IoU"]):
            click.echo(f"{name:<16}{iou:>9.4f}")
        click.echo(f"{'mIoU':<16}{scores['mIoU']:>9.4f}")
    if scores["skipped"]:
        click.echo(f"skipped: {len(scores['skipped'])} images ({', '.join(s['id'] for s in scores['skipped'])})",
                   err=True)
        raise click.exceptions.Exit(1)
    if out_dir is not None and not as_json:
        click.echo(f"Results saved to {out_dir}", err=True)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"
