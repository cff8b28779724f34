"""Seeded, resumable training of a registered model on a VOC-layout folder (``dcnviz train``).

Each step trains on a batch of ``batch_size`` images of one orientation (landscape or portrait, so little
of a batch is padding), with BatchNorm using the batch's statistics (see :mod:`dcnviz.train.model`);
AdamW (or SGD with momentum) with a linear warm-up, then the learning rate multiplied by ``gamma`` at
each of ``steps``; offset layers at ``offset_lr_mult`` times the rate. The batches of epoch ``e`` come
from a permutation drawn from (seed, e) (:func:`epoch_batches`); an image's flip comes from (seed, e,
index) (see :class:`dcnviz.data.loader.VOCDetSeg`) and the anchor and RoI sampling of step ``i`` from
(seed, i). Training is thus a function of its settings, so an interrupted run resumed from its
checkpoint ends with the same weights as an uninterrupted one (same device and thread count; CPU
kernels are deterministic).

Files of a run writing ``out``: the checkpoint (see :mod:`dcnviz.train.checkpoint`), replaced every
``checkpoint_every`` steps and at the end; a log of JSON lines ``<out>.log.jsonl`` (a ``start`` record per
launch, then every ``log_every`` steps the mean losses since the previous record, learning rate and
seconds per step); and at the end ``out``, the inference weights (:func:`dcnviz.train.model.export_state`)
with metadata, which ``load_model`` reads. A run whose checkpoint exists resumes from it automatically.
"""
from __future__ import annotations

import json
import math
import os
import time
import zlib
from dataclasses import asdict, dataclass

import numpy as np
import torch

from dcnviz.errors import UserError
from dcnviz.io.atomic import write_bytes_atomic
from dcnviz.train import checkpoint
from dcnviz.train.model import export_state, init_weights, param_groups, thaw_batchnorm
from dcnviz.train.steps import DetectionTrainConfig, detection_losses, segmentation_losses


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (the checkpoint of another configuration is refused).

    ``steps`` are iteration indices where the rate is multiplied by ``gamma``; the rate of step ``i`` is
    ``lr * gamma**(#steps <= i)``, times ``warmup_factor + (1 - warmup_factor) * i / warmup`` while
    ``i < warmup``. ``optimizer`` is ``adamw`` (``momentum`` is its beta1) or ``sgd``; ``weight_decay``
    applies to conv weights only. ``offset_lr_mult`` scales the rate of the offset layers: AdamW moves
    every weight at about the learning rate whatever its gradient, and at the base rate the offset convs
    drifted to offsets of 4-7 cells (up to 38) on the 19x25 res5 maps within 800 steps, largest on the
    background. ``ohem`` only matters for detection models."""

    model: str
    data: str
    split: str = "train"
    iterations: int = 2000
    batch_size: int = 8
    optimizer: str = "adamw"
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup: int = 100
    warmup_factor: float = 0.1
    steps: tuple[int, ...] = (1500,)
    gamma: float = 0.1
    offset_lr_mult: float = 0.1
    ohem: bool = True
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 20

    def learning_rate(self, i: int) -> float:
        lr = self.lr * self.gamma ** sum(i >= s for s in self.steps)
        if i < self.warmup:
            lr *= self.warmup_factor + (1.0 - self.warmup_factor) * i / self.warmup
        return lr


OPTIMIZERS = ("adamw", "sgd")


def check_config(cfg: TrainConfig) -> None:
    """Refuse settings that cannot train, naming the option."""
    if cfg.optimizer not in OPTIMIZERS:
        raise UserError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg.optimizer!r}")
    for name in ("iterations", "batch_size", "checkpoint_every", "log_every"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    for name in ("lr", "offset_lr_mult", "momentum", "weight_decay", "warmup", "gamma", "seed"):
        value = getattr(cfg, name)
        if not math.isfinite(value) or value < 0:
            raise UserError(f"--{name.replace('_', '-')} must be a non-negative number, got {value}")
    if not 0 < cfg.warmup_factor <= 1:
        raise UserError(f"--warmup-factor must be in (0, 1], got {cfg.warmup_factor}")


def epoch_batches(seed: int, epoch: int, portrait: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """The batches of one epoch: every image once, in batches of ``batch_size`` images of one orientation
    (``portrait`` (n,) bool; the last batch of each orientation may be smaller), in random order.
    Their number does not depend on the epoch."""
    rng = np.random.default_rng([seed, epoch, 0x0D, 0x5EED])
    order = rng.permutation(len(portrait))
    batches = [group[k:k + batch_size] for group in (order[~portrait[order]], order[portrait[order]])
               for k in range(0, len(group), batch_size)]
    return [batches[k] for k in rng.permutation(len(batches))]


def step_rng(seed: int, iteration: int) -> np.random.Generator:
    """The generator of the anchor and RoI sampling of one step."""
    return np.random.default_rng([seed, iteration, 0x0D, 0x7A1])


def _optimizer(cfg: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))


def _dataset(cfg: TrainConfig, spec):
    from dcnviz.data.loader import VOCDetSeg

    seg = spec.task == "segmentation"
    # single-scale training at the model's own scale, random horizontal flip (official TRAIN settings)
    return VOCDetSeg(cfg.data, cfg.split, spec.classes, task="segmentation" if seg else "main", segmentation=seg,
                     short_side=spec.scales[0], max_size=spec.scales[1], train=True, flip=True,
                     scale_jitter=(1.0, 1.0), seed=cfg.seed)


def _trim_log(path: str, iteration: int) -> None:
    """Drop log records of steps after ``iteration`` (written after the checkpoint an interrupted run
    resumes from), and a record torn by the interruption, so the log reads as one run."""
    if not os.path.exists(path):
        return

    def keep(line: str) -> bool:
        try:
            return json.loads(line).get("iteration", 0) <= iteration
        except ValueError:
            return False
    with open(path) as f:
        lines = [line for line in f if keep(line)]
    write_bytes_atomic(path, "".join(lines).encode())


def _log(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def train(cfg: TrainConfig, out: str, device: str = "cpu", progress: bool = True, force: bool = False) -> dict:
    """Train (or resume) and write the final weights to ``out``; returns the last log record.

    ``force`` allows replacing an existing ``out``. Raises :class:`UserError` for bad settings, a missing
    dataset, an existing ``out`` or a checkpoint of another run; ``FloatingPointError`` when the loss
    stops being finite (the last checkpoint stays)."""
    from tqdm import tqdm

    from dcnviz.data.loader import collate
    from dcnviz.models import get_spec

    check_config(cfg)
    out = os.path.abspath(out)
    if os.path.exists(out) and not force:
        raise UserError(f"{out} already exists; use --force to overwrite it")
    if not os.path.isdir(os.path.dirname(out)):
        raise UserError(f"output folder {os.path.dirname(out)} does not exist")
    try:
        spec = get_spec(cfg.model)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    dataset = _dataset(cfg, spec)
    n = len(dataset)
    if n == 0:
        raise UserError(f"split {cfg.split!r} of {cfg.data} is empty")
    portrait = np.array([a.height > a.width for a in map(dataset.voc.annotation, dataset.ids)])
    info = {"config": asdict(cfg), "images": n, "ids_crc32": zlib.crc32("\n".join(dataset.ids).encode())}
    info["config"]["steps"] = list(cfg.steps)

    model = spec.factory()
    init_weights(model, cfg.seed)
    model = thaw_batchnorm(model).to(device).train()  # BatchNorm normalises with batch statistics
    optimizer = _optimizer(cfg, param_groups(model, cfg.weight_decay, cfg.offset_lr_mult))
    log_path = out + ".log.jsonl"
    start = checkpoint.load(out, model, optimizer, info) or 0
    _trim_log(log_path, start)
    _log(log_path, {"event": "start", "iteration": start, "device": str(device), "threads": torch.get_num_threads(),
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **info})
    det_cfg = DetectionTrainConfig(ohem=cfg.ohem)
    per_epoch = len(epoch_batches(cfg.seed, 0, portrait, cfg.batch_size))
    sums: dict[str, float] = {}
    count, tick, record, saved = 0, time.perf_counter(), {}, start
    bar = tqdm(total=cfg.iterations, initial=start, disable=not progress, unit="it", dynamic_ncols=True)
    for i in range(start, cfg.iterations):
        epoch, position = divmod(i, per_epoch)
        dataset.set_epoch(epoch)
        batch = epoch_batches(cfg.seed, epoch, portrait, cfg.batch_size)[position]  # a permutation: cheap
        data, targets = collate([dataset[int(k)] for k in batch])
        data = data.to(device)
        lr = cfg.learning_rate(i)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        if spec.task == "detection":
            losses = detection_losses(model, data, targets, step_rng(cfg.seed, i), det_cfg)
        else:
            losses = segmentation_losses(model, data, targets)
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise FloatingPointError(f"the loss is {total.item()} at iteration {i} (images "
                                     f"{', '.join(t['image_id'] for t in targets)}); the checkpoint of iteration "
                                     f"{saved} stays")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        sums["loss"] = sums.get("loss", 0.0) + float(total.detach())
        count += 1
        done = i + 1
        bar.update(1)
        if done % cfg.log_every == 0 or done == cfg.iterations:
            now = time.perf_counter()
            record = {"iteration": done, "lr": lr, **{k: v / count for k, v in sums.items()},
                      "s_per_it": (now - tick) / count}
            _log(log_path, record)
            bar.set_postfix(loss=f"{record['loss']:.3f}")
            sums, count, tick = {}, 0, now
        if done % cfg.checkpoint_every == 0 or done == cfg.iterations:
            checkpoint.save(out, model, optimizer, done, info)
            saved = done
    bar.close()
    _write_weights(model, spec, out, info, record, force)
    return record


def _write_weights(model, spec, out: str, info: dict, record: dict, force: bool) -> None:
    from dcnviz import __version__
    from dcnviz.convert.weights import write_safetensors

    meta = {"format": "dcnviz", "model": spec.name, "classes": json.dumps(list(spec.classes)),
            "dcnviz_version": __version__, "trained_by": "dcnviz train", "train": json.dumps(info, sort_keys=True),
            "final_losses": json.dumps(record, sort_keys=True), "bbox_stds_folded": str(spec.task == "detection")}
    write_safetensors(export_state(model), out, meta, force=force)
