"""``dcnviz synth``: write a synthetic VOC-layout dataset (see dcnviz/data/synth.py)."""
from __future__ import annotations

import time

import click

from dcnviz.cli.common import (DEFAULT_SPLIT, data_option, debug_option, deprecated, progress, quiet_option,
                               split_option)
from dcnviz.errors import UserError


@click.command("synth")
@click.argument("out_arg", required=False, metavar="[DIR]", type=click.Path(file_okay=False))
@data_option(required=False, help="VOC-layout folder to write the scenes into (created if needed).")
@split_option(help="Split name: ids are <split>_<index>, listed in ImageSets/{Main,Segmentation}/<split>.txt. "
                   f"The default is the one eval and dilation-stats read ({DEFAULT_SPLIT}); use --split train "
                   "for the scenes to train on.")
@click.option("--images", "-n", type=click.IntRange(min=1), default=1000, show_default=True, help="Number of scenes.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same bytes).")
@quiet_option()
@debug_option
def synth(out_arg, data, split, images, seed, quiet):
    """Generate synthetic scenes (worm, star, ring, blob, cross) into the VOC-layout folder --data.

    Adds split SPLIT to the folder without touching other splits already there; never overwrites files.
    The positional DIR of earlier releases still works (deprecated).

    \b
    Examples:
      dcnviz synth --data synth/ --split train -n 2000
      dcnviz synth --data synth/ -n 400 --seed 999
    """
    from dcnviz.data.synth import generate

    if out_arg is not None:
        if data is not None:
            raise click.UsageError("give the folder once: --data DIR (the positional DIR is deprecated)")
        deprecated(f"'dcnviz synth {out_arg}'", f"'dcnviz synth --data {out_arg}'")
        data = out_arg
    if data is None:
        raise click.UsageError("Missing option '--data'.")
    start = time.perf_counter()
    try:
        with progress(images, "img", quiet=quiet) as bar:
            ids = generate(data, images, seed, split, progress=lambda _: bar.update())
    except UserError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"cannot write {e.filename or data}: {e.strerror}") from None
    elapsed = time.perf_counter() - start
    if not quiet:
        click.echo(f"wrote {len(ids)} scenes ({split}, seed {seed}) to {data} in {elapsed:.1f} s "
                   f"({1000 * elapsed / len(ids):.0f} ms/image)")
