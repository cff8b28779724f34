"""``dcnviz convert``: official MXNet ``.params`` -> ``.safetensors`` that ``load_model`` reads."""
from __future__ import annotations

from pathlib import Path

import click

from dcnviz.cli.common import debug_option, deprecated, model_option, progress, quiet_option, resolve_model


@click.command("convert")
@click.argument("params", type=click.Path(dir_okay=False))
@model_option("Model the file belongs to (default: recognised from its keys).")
@click.option("-o", "--out", type=click.Path(path_type=Path), metavar="DIR", default=None,
              help="Output folder for MODEL.safetensors (default: $DCNVIZ_HOME, ~/.cache/dcnviz when unset, "
                   "where load_model(MODEL) looks).")
@click.option("--output-file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write this .safetensors file instead of OUT/MODEL.safetensors.")
@click.option("--output", "old_output", type=click.Path(dir_okay=False, path_type=Path), hidden=True,
              help="Deprecated: --output-file.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@quiet_option()
@debug_option
def convert(params, model, out, output_file, old_output, force, quiet):
    """Convert an official MXNet weight file (e.g. rfcn_dcn_coco-0000.params) to .safetensors.

    Reads legacy, V1 and V2 array encodings without MXNet and never unpickles; refuses files whose keys
    or shapes do not match the model exactly; writes atomically and never overwrites without --force.
    The forms of earlier releases (-o FILE.safetensors, --output FILE) still work (deprecated)."""
    from dcnviz.models import convert_file

    if model is not None:
        model = resolve_model(model, None).name
    if old_output is not None:
        deprecated(f"'--output {old_output}'", f"'--output-file {old_output}'")
        output_file = output_file or old_output
    if out is not None and (out.suffix == ".safetensors" or out.is_file()):  # the old -o FILE
        deprecated(f"'-o {out}' (a file)", f"'--output-file {out}' (-o is a folder now)")
        output_file, out = output_file or out, None
    if output_file is not None and out is not None:
        raise click.UsageError("give either --output-file FILE or -o DIR")
    with progress(None, "array", quiet=quiet, every=0) as bar:
        def step(done, total):
            bar.total = total
            bar.update(done - bar.n)

        # a UserError becomes one "Error: ..." line in the CLI group (dcnviz.cli.common.report_errors)
        summary = convert_file(params, output_file, model, force, step, folder=out)
    if quiet:
        return
    click.echo(f"model      {summary['model']}")
    click.echo(f"arrays     {summary['arrays']} in the file ({summary['encodings']}; {summary['dtypes']}), "
               f"{summary['tensors']} tensors, {summary['parameters']:,} values")
    click.echo(f"box keys   {summary['bbox_keys']}")
    click.echo(f"source     sha256 {summary['source_sha256']}")
    click.echo(f"wrote      {summary['output']} ({summary['bytes'] / 2**20:.1f} MiB)")
