"""``dcnviz eval``: detection AP or segmentation mIoU of a model on a split (see dcnviz/eval/evaluate.py)."""
from __future__ import annotations

import json

import click

from dcnviz.cli.common import _check_device, select_device


@click.command("eval")
@click.argument("model")
@click.option("--data", required=True, type=click.Path(file_okay=False), help="VOC-layout folder.")
@click.option("--split", default="test", show_default=True, help="Split to evaluate.")
@click.option("--weights", default=None, type=click.Path(dir_okay=False),
              help="Weights file to use instead of the model's own.")
@click.option("--device", default="auto", show_default=True, callback=_check_device, metavar="auto|cpu|cuda[:N]",
              help="auto uses the first GPU if there is one.")
@click.option("--json", "as_json", is_flag=True, help="Print the scores as one JSON object.")
def eval_(model, data, split, weights, device, as_json):
    """Score MODEL (a registered name or a weights file) on SPLIT of --data.

    Detection: VOC2010+ area AP at IoU > 0.5 and > 0.7 per class, difficult boxes ignored, and their
    means (mAP50, mAP70). Segmentation: IoU per class and mIoU, pixels labelled 255 ignored."""
    from tqdm import tqdm

    from dcnviz.eval.evaluate import evaluate
    from dcnviz.models import load_model

    dev = select_device(device, warn=None if as_json else lambda line: click.echo(line, err=True))
    net = load_model(model, weights=weights, device=dev)
    with tqdm(unit="img", disable=True if as_json else None, leave=False) as bar:
        scores = evaluate(net, data, split, progress=bar.update)
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


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"
