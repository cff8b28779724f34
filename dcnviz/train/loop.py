"""Seeded, resumable training of a registered model on a VOC-layout folder (``dcnviz train``).

One image per step (as the official recipes, one per GPU), SGD with momentum, a linear warm-up, then the
learning rate multiplied by ``gamma`` at each of ``steps``; offset layers at ``offset_lr_mult`` times the
rate. Step ``i`` (0-based) reads image ``order_e[i % n]`` of the split, where epoch ``e = i // n`` and
``order_e`` is a permutation drawn from (seed, e); its flip comes from (seed, e, index) (see
:class:`dcnviz.data.loader.VOCDetSeg`) and its anchor and RoI sampling from (seed, i). Training is thus a
function of its settings, so an interrupted run resumed from its checkpoint ends with the same weights
as an uninterrupted one (same device and thread count; CPU kernels are deterministic).

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
from dcnviz.train import checkpoint
from dcnviz.train.model import calibrate_batchnorm, export_state, init_weights, param_groups, thaw_batchnorm
from dcnviz.train.steps import DetectionTrainConfig, detection_losses, segmentation_losses


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (the checkpoint of another configuration is refused).

    ``steps`` are iteration indices where the rate is multiplied by ``gamma``; the rate of step ``i`` is
    ``lr * gamma**(#steps <= i)``, times ``warmup_factor + (1 - warmup_factor) * i / warmup`` while
    ``i < warmup``. ``weight_decay`` applies to conv weights only. ``ohem`` only matters for detection
    models. BatchNorm statistics are calibrated on the first images of the first epoch, then fixed
    (see :mod:`dcnviz.train.model`)."""

    model: str
    data: str
    split: str = "train"
    iterations: int = 6000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup: int = 200
    warmup_factor: float = 0.1
    steps: tuple[int, ...] = (4500,)
    gamma: float = 0.1
    offset_lr_mult: float = 1.0
    ohem: bool = True
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 20

    def learning_rate(self, i: int) -> float:
        lr = self.lr * self.gamma ** sum(i >= s for s in self.steps)
        if i < self.warmup:
            lr *= self.warmup_factor + (1.0 - self.warmup_factor) * i / self.warmup
        return lr


CALIBRATION_IMAGES = 64


def check_config(cfg: TrainConfig) -> None:
    """Refuse settings that cannot train, naming the option."""
    for name in ("iterations", "checkpoint_every", "log_every"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    for name in ("lr", "offset_lr_mult", "momentum", "weight_decay", "warmup", "gamma", "seed"):
        value = getattr(cfg, name)
        if not math.isfinite(value) or value < 0:
            raise UserError(f"--{name.replace('_', '-')} must be a non-negative number, got {value}")
    if not 0 < cfg.warmup_factor <= 1:
        raise UserError(f"--warmup-factor must be in (0, 1], got {cfg.warmup_factor}")


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The image order of one epoch (a permutation of 0..n-1)."""
    return np.random.default_rng([seed, epoch, 0x0D, 0x5EED]).permutation(n)


def step_rng(seed: int, iteration: int) -> np.random.Generator:
    """The generator of the anchor and RoI sampling of one step."""
    return np.random.default_rng([seed, iteration, 0x0D, 0x7A1])


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
    tmp = path + ".part"
    with open(tmp, "w") as f:
        f.writelines(lines)
    os.replace(tmp, path)


def _log(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def train(cfg: TrainConfig, out: str, device: str = "cpu", progress: bool = True, force: bool = False) -> dict:
    """Train (or resume) and write the final weights to ``out``; returns the last log record.

    ``force`` allows replacing an existing ``out``. Raises :class:`UserError` for bad settings, a missing
    dataset, an existing ``out`` or a checkpoint of another run; ``FloatingPointError`` when the loss
    stops being finite (the last checkpoint stays)."""
    from tqdm import tqdm

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
    info = {"config": asdict(cfg), "images": n, "ids_crc32": zlib.crc32("\n".join(dataset.ids).encode())}
    info["config"]["steps"] = list(cfg.steps)

    model = spec.factory()
    init_weights(model, cfg.seed)
    model = thaw_batchnorm(model).to(device)  # BatchNorm stays in eval mode: fixed statistics
    groups = param_groups(model, cfg.weight_decay, cfg.offset_lr_mult)
    optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    log_path = out + ".log.jsonl"
    start = checkpoint.load(out, model, optimizer, info) or 0
    if start == 0:
        calibrate_batchnorm(model, (dataset[int(k)][0][None].to(device)
                                    for k in epoch_order(cfg.seed, 0, n)[:CALIBRATION_IMAGES]))
    _trim_log(log_path, start)
    _log(log_path, {"event": "start", "iteration": start, "device": str(device), "threads": torch.get_num_threads(),
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **info})
    det_cfg = DetectionTrainConfig(ohem=cfg.ohem)
    sums: dict[str, float] = {}
    count, tick, record, saved = 0, time.perf_counter(), {}, start
    bar = tqdm(total=cfg.iterations, initial=start, disable=not progress, unit="it", dynamic_ncols=True)
    for i in range(start, cfg.iterations):
        epoch, position = divmod(i, n)
        dataset.set_epoch(epoch)
        data, target = dataset[int(epoch_order(cfg.seed, epoch, n)[position])]
        data = data[None].to(device)
        lr = cfg.learning_rate(i)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        if spec.task == "detection":
            losses = detection_losses(model, data, target, step_rng(cfg.seed, i), det_cfg)
        else:
            losses = segmentation_losses(model, data, target)
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise FloatingPointError(f"the loss is {total.item()} at iteration {i} (image {target['image_id']}, "
                                     f"flipped {target['flipped']}); the checkpoint of iteration {saved} stays")
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
