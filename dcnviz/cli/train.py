"""``dcnviz train``: train one of dcnviz's own models on a VOC-layout folder (see dcnviz/train/loop.py)."""
from __future__ import annotations

import os

import click

from dcnviz.cli.common import _check_device, select_device


def _steps(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated iteration numbers, got {value!r}") from None


@click.command("train")
@click.argument("model")
@click.option("--data", required=True, type=click.Path(file_okay=False), help="VOC-layout folder (dcnviz synth).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Final .safetensors weights; the checkpoint (OUT.ckpt.*) and log (OUT.log.jsonl) go beside it.")
@click.option("--split", default="train", show_default=True, help="Split to train on.")
@click.option("--iterations", default=2000, show_default=True, help="Training steps (one batch each).")
@click.option("--batch-size", default=8, show_default=True, help="Images per step (one orientation per batch).")
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True,
              help="AdamW (betas --momentum, 0.999) or SGD with momentum.")
@click.option("--lr", default=0.002, show_default=True, help="Base learning rate.")
@click.option("--momentum", default=0.9, show_default=True, help="SGD momentum or AdamW beta1.")
@click.option("--steps", callback=_steps, default=None,
              help="Comma-separated iterations where the rate drops by --gamma  [default: 3/4 of --iterations]")
@click.option("--gamma", default=0.1, show_default=True, help="Learning-rate factor at each step.")
@click.option("--warmup", default=100, show_default=True, help="Iterations of linear warm-up from 0.1 x lr.")
@click.option("--weight-decay", default=1e-4, show_default=True, help="Weight decay of conv weights.")
@click.option("--offset-lr-mult", default=0.1, show_default=True,
              help="Learning-rate multiplier of the offset layers (deformable models).")
@click.option("--ohem/--no-ohem", default=True, show_default=True,
              help="R-FCN: keep the 128 hardest RoIs (official) instead of sampling 128 with 25 % foreground.")
@click.option("--seed", default=0, show_default=True, help="Seed of initialisation, image order, flips, sampling.")
@click.option("--checkpoint-every", default=200, show_default=True, help="Checkpoint interval in iterations.")
@click.option("--log-every", default=20, show_default=True, help="Log interval in iterations.")
@click.option("--device", default="cpu", show_default=True, callback=_check_device, metavar="cpu|cuda[:N]|auto",
              help="Where to train; results are reproducible on the same device and thread count.")
@click.option("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice).")
@click.option("--force", is_flag=True, help="Overwrite an existing OUT.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def train(model, data, out, split, iterations, batch_size, optimizer, lr, momentum, steps, gamma, warmup, weight_decay, offset_lr_mult, ohem, seed,
          checkpoint_every, log_every, device, threads, force, progress):
    """Train MODEL (e.g. rfcn_dcn_synth) from scratch on --data and write --out.

    Seeded: the same command gives the same weights on the same machine. Resumable: rerun the same
    command after an interruption and it continues from the last checkpoint."""
    import torch

    from dcnviz.train import TrainConfig
    from dcnviz.train import train as run

    if threads is not None:
        if threads < 1:
            raise click.BadParameter(f"must be at least 1, got {threads}", param_hint="'--threads'")
        torch.set_num_threads(threads)
    dev = select_device(device, warn=lambda line: click.echo(line, err=True))
    if steps is None:
        steps = (round(0.75 * iterations),)
    cfg = TrainConfig(model=model, data=os.path.abspath(data), split=split, iterations=iterations,
                      batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum, steps=steps,
                      gamma=gamma, warmup=warmup, weight_decay=weight_decay, offset_lr_mult=offset_lr_mult,
                      ohem=ohem, seed=seed, checkpoint_every=checkpoint_every, log_every=log_every)
    try:
        record = run(cfg, out, device=dev, progress=progress, force=force)
    except FloatingPointError as exc:  # the run diverged: say so in one line, the checkpoint stays
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {exc.filename or out}: {exc.strerror}") from None
    loss = f", last loss {record['loss']:.4f}" if "loss" in record else ""
    click.echo(f"wrote {out} ({model}, {iterations} iterations{loss}); log {out}.log.jsonl")
