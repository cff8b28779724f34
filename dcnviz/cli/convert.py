"""``dcnviz convert``: official MXNet ``.params`` -> ``.safetensors`` that ``load_model`` reads."""
from __future__ import annotations

import click

from dcnviz.cli.common import debug_option, resolve_model


def _check_model(ctx, param, value: str | None) -> str | None:
    return None if value is None else resolve_model(value, None).name


@click.command("convert")
@click.argument("params", type=click.Path(dir_okay=False))
@click.option("--model", "-m", default=None, metavar="NAME", callback=_check_model,
              help="Model the file belongs to (default: recognised from its keys).")
@click.option("--output", "-o", default=None, type=click.Path(dir_okay=False),
              help="Output .safetensors file (default: $DCNVIZ_HOME/<model>.safetensors, "
                   "~/.cache/dcnviz when DCNVIZ_HOME is unset; load_model(<model>) finds it there).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@debug_option
def convert(params, model, output, force):
    """Convert an official MXNet weight file (e.g. rfcn_dcn_coco-0000.params) to .safetensors.

    Reads legacy, V1 and V2 array encodings without MXNet and never unpickles; refuses files whose keys
    or shapes do not match the model exactly; writes atomically and never overwrites without --force."""
    from tqdm import tqdm

    from dcnviz.models import convert_file

    bar = tqdm(total=None, unit="array", desc="reading", leave=False, disable=None)

    def progress(done, total):
        bar.total = total
        bar.update(done - bar.n)

    try:  # a UserError becomes one "Error: ..." line in the CLI group (dcnviz.cli.common.report_errors)
        summary = convert_file(params, output, model, force, progress)
    finally:
        bar.close()
    click.echo(f"model      {summary['model']}")
    click.echo(f"arrays     {summary['arrays']} in the file ({summary['encodings']}; {summary['dtypes']}), "
               f"{summary['tensors']} tensors, {summary['parameters']:,} values")
    click.echo(f"box keys   {summary['bbox_keys']}")
    click.echo(f"source     sha256 {summary['source_sha256']}")
    click.echo(f"wrote      {summary['output']} ({summary['bytes'] / 2**20:.1f} MiB)")
