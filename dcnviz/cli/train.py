"""``dcnviz train``: train one of dcnviz's own models on a VOC-layout folder (see dcnviz/train/loop.py)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from dcnviz.cli.common import (data_option, debug_option, deprecated, device_option, json_option,
                               model_option, out_option, quiet_option, resolve_model, select_device, split_option,
                               threads_option, use_threads)
from dcnviz.io.results_json import json_path


def _steps(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated iteration numbers, got {value!r}") from None


@click.command("train")
@click.argument("model_arg", required=False, metavar="[MODEL]")
@model_option("Model to train (one of dcnviz's own, e.g. rfcn_dcn_synth; see 'dcnviz models').")
@data_option()
@split_option("train", "Split to train on: the ids in ImageSets/Main/SPLIT.txt. Unlike the other commands "
                       "(default test) this defaults to train: a model is fitted on its training split.")
@out_option(Path("runs", "train"), "Output folder: MODEL.safetensors, its checkpoint (.ckpt.*) and log "
                                   "(.log.jsonl) go here. Not numbered: the same command resumes the run in it.")
@click.option("--output-file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write the weights to FILE instead of OUT/MODEL.safetensors (checkpoint and log beside it).")
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
@device_option()
@threads_option()
@quiet_option()
@json_option("Print the last log record (iteration, losses, learning rate) as one JSON object on stdout.")
@click.option("--force", is_flag=True, help="Replace finished weights already at the output file.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar (on a terminal only).")
@debug_option
def train(model_arg, model, data, split, out, output_file, iterations, batch_size, optimizer, lr, momentum,
          steps, gamma, warmup, weight_decay, offset_lr_mult, ohem, seed, checkpoint_every, log_every, device,
          threads, quiet, json_out, force, progress):
    """Train a model (-m NAME, e.g. rfcn_dcn_synth) from scratch on --data; writes OUT/NAME.safetensors.

    Seeded: the same command gives the same weights on the same machine (device and thread count).
    Resumable: rerun the same command after an interruption and it continues from the last checkpoint.
    The forms of earlier releases (positional MODEL, --out FILE.safetensors) still work (deprecated).

    \b
    Example:
      dcnviz train -m rfcn_dcn_synth --data synth/ --iterations 4000
    """
    from dcnviz.train import TrainConfig
    from dcnviz.train import train as run

    if model_arg is not None:
        if model is not None:
            raise click.UsageError("give the model once: -m NAME (the positional MODEL is deprecated)")
        deprecated(f"'dcnviz train {model_arg}'", f"'dcnviz train -m {model_arg}'")
        model = model_arg
    if model is None:
        raise click.UsageError("Missing option '-m' / '--model'.")
    model = resolve_model(model, None).name
    if out.suffix == ".safetensors":  # the old --out FILE
        if output_file is not None:
            raise click.UsageError("give either --output-file FILE or -o DIR")
        deprecated(f"'--out {out}' (a file)", f"'--output-file {out}' (-o is a folder now)")
        output_file, out = out, None
    if output_file is None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise click.ClickException(f"cannot create output folder '{out}': {exc.strerror}") from None
        output_file = out / f"{model}.safetensors"
    use_threads(threads)
    dev = select_device(device)
    if steps is None:
        steps = (round(0.75 * iterations),)
    cfg = TrainConfig(model=model, data=os.path.abspath(data), split=split, iterations=iterations,
                      batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum, steps=steps,
                      gamma=gamma, warmup=warmup, weight_decay=weight_decay, offset_lr_mult=offset_lr_mult,
                      ohem=ohem, seed=seed, checkpoint_every=checkpoint_every, log_every=log_every)
    bar = progress and not quiet and not json_out and sys.stderr.isatty()
    try:
        record = run(cfg, os.fspath(output_file), device=dev, progress=bar, force=force)
    except FloatingPointError as exc:  # the run diverged: say so in one line, the checkpoint stays
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {exc.filename or output_file}: {exc.strerror}") from None
    if json_out:
        click.echo(json.dumps({"weights": json_path(output_file), "model": model, **record}))
    elif not quiet:
        loss = f", last loss {record['loss']:.4f}" if "loss" in record else ""
        click.echo(f"wrote {output_file} ({model}, {iterations} iterations{loss}); log {output_file}.log.jsonl")
