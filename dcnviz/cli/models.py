"""``dcnviz models``: every registered model, what it does, its size, and where its weights are."""
from __future__ import annotations

import json

import click

from dcnviz.cli.common import debug_option


@click.command("models")
@click.option("--json", "json_out", is_flag=True,
              help="Print one JSON object instead (schema in dcnviz/schemas/models.schema.json).")
@debug_option
def models(json_out):
    """List every registered model: task, dataset, number of classes, size, and whether its weights
    are on this machine (and where they are expected).

    Bundled models were trained by dcnviz; their weights ship in the repository's weights/ folder.
    The official models' weights are not bundled: download NAME-0000.params from the official release
    and run 'dcnviz convert NAME-0000.params' once (it writes $DCNVIZ_HOME/NAME.safetensors, default
    ~/.cache/dcnviz), or pass the .params file to --weights."""
    from dcnviz.models.catalog import all_models
    from dcnviz.models.loading import bundled_weights_dir, weights_home
    from dcnviz.models.official import DOWNLOAD

    infos = all_models()
    if json_out:
        click.echo(json.dumps({"weights_home": weights_home(), "bundled_weights_dir": bundled_weights_dir(),
                               "models": [_record(i) for i in infos]}))
        return
    header = ("NAME", "TASK", "DATASET", "CLASSES", "PARAMS", "WEIGHTS", "FILE")
    rows = [(i.name, i.task, i.dataset, str(len(i.classes)), f"{i.parameters / 1e6:.1f}M", _status(i),
             i.weights_path) for i in infos]
    right = {3, 4}  # numbers
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    for row in [header, *rows]:
        cells = [cell.rjust(w) if c in right else cell.ljust(w) for c, (cell, w) in enumerate(zip(row, widths))]
        click.echo("  ".join(cells).rstrip())
    click.echo()
    click.echo(f"bundled: trained by dcnviz, shipped in {bundled_weights_dir()} (see weights/README.md).")
    click.echo(f"official: download NAME-0000.params from {DOWNLOAD}, then run 'dcnviz convert "
               f"NAME-0000.params' (writes {weights_home()}/NAME.safetensors; DCNVIZ_HOME sets the folder) "
               "or pass the file to --weights.")


def _status(info) -> str:
    if info.weights_present:
        return f"{info.weights_kind}, {info.weights_bytes / 2**20:.1f} MiB"
    return "bundled, MISSING" if info.weights_kind == "bundled" else "official, not converted"


def _record(info) -> dict:
    return {"name": info.name, "task": info.task, "dataset": info.dataset, "num_classes": len(info.classes),
            "classes": list(info.classes), "parameters": info.parameters,
            "weights": {"kind": info.weights_kind, "path": info.weights_path, "present": info.weights_present,
                        "bytes": info.weights_bytes, "official_file": info.official_file},
            "description": info.description}
