"""``dcnviz synth``: write a synthetic VOC-layout dataset (see dcnviz/data/synth.py)."""
from __future__ import annotations

import time

import click

from dcnviz.errors import UserError


@click.command("synth")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--images", "-n", type=int, default=1000, show_default=True, help="Number of scenes.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same bytes).")
@click.option("--split", default="train", show_default=True,
              help="Split name: ids are <split>_<index>, listed in ImageSets/{Main,Segmentation}/<split>.txt.")
def synth(out, images, seed, split):
    """Generate synthetic scenes (worm, star, ring, blob, cross) into the VOC-layout folder OUT.

    Adds split SPLIT to OUT without touching other splits already there; never overwrites files.
    """
    from tqdm import tqdm

    from dcnviz.data.synth import generate

    start = time.perf_counter()
    try:
        with tqdm(total=images, unit="img", disable=None) as bar:
            ids = generate(out, images, seed, split, progress=lambda _: bar.update())
    except UserError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"cannot write {e.filename or out}: {e.strerror}") from None
    elapsed = time.perf_counter() - start
    click.echo(f"wrote {len(ids)} scenes ({split}, seed {seed}) to {out} in {elapsed:.1f} s "
               f"({1000 * elapsed / len(ids):.0f} ms/image)")
