"""Training checkpoints: model, optimizer state and iteration in one ``.safetensors`` file, plus a small
JSON with the same settings for people to read. Both are written atomically
(:func:`dcnviz.io.atomic.write_atomic`), tensors first, so an interruption at any moment leaves a complete
checkpoint of either the previous or the new iteration. Nothing is pickled.

No random-generator state is stored because training has none: every random choice of step ``i`` comes
from ``numpy.random.default_rng`` seeded with (seed, i) (see :mod:`dcnviz.train.loop`).
"""
from __future__ import annotations

import json
import os

import torch

from dcnviz.errors import UserError
from dcnviz.io.atomic import write_atomic, write_bytes_atomic


def paths(out: str) -> tuple[str, str]:
    """The checkpoint files of a run whose final weights go to ``out``: ``<out>.ckpt.safetensors`` and
    ``<out>.ckpt.json``."""
    return out + ".ckpt.safetensors", out + ".ckpt.json"


def save(out: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, iteration: int, info: dict) -> None:
    """Write the checkpoint of ``iteration`` finished steps; ``info`` (JSON-serialisable) identifies the run."""
    from safetensors.torch import save_file

    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():  # SGD momentum, AdamW moments and step
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer/{names[id(p)]}/{key}"] = value.detach().cpu().contiguous()
    meta = {"iteration": str(iteration), "info": json.dumps(info, sort_keys=True)}
    tensor_path, json_path = paths(out)
    write_atomic(tensor_path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    text = json.dumps({"iteration": iteration, **info}, indent=1, sort_keys=True) + "\n"
    write_bytes_atomic(json_path, text.encode())


def _flat(info: dict) -> dict:
    """``{"config": {"lr": 0.01}}`` -> ``{"lr": 0.01}``, so a mismatch names the setting."""
    flat = {}
    for key, value in info.items():
        flat.update(_flat(value) if isinstance(value, dict) else {key: value})
    return flat


def load(out: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, info: dict) -> int | None:
    """Restore the checkpoint of ``out`` into ``model`` and ``optimizer`` and return its iteration, or None
    when there is none. A checkpoint of a different run (``info`` differs) is refused with a message
    naming the first differing setting."""
    from safetensors import SafetensorError, safe_open

    tensor_path, _ = paths(out)
    if not os.path.exists(tensor_path):
        return None
    try:
        with safe_open(tensor_path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        iteration, stored = int(meta["iteration"]), json.loads(meta["info"])
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise UserError(f"checkpoint {tensor_path} is unreadable ({exc}); remove it to start afresh") from None
    stored, now = _flat(stored), _flat(info)
    for key in sorted(set(stored) | set(now)):
        if stored.get(key) != now.get(key):
            raise UserError(f"checkpoint {tensor_path} belongs to a different run ({key}: {stored.get(key)!r} "
                            f"there, {now.get(key)!r} now); use the same settings or another --out")
    device = next(model.parameters()).device
    model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
    params = dict(model.named_parameters())
    for key, v in tensors.items():
        if key.startswith("optimizer/"):
            name, state_key = key[len("optimizer/"):].rsplit("/", 1)
            # AdamW keeps its step count on the CPU
            optimizer.state[params[name]][state_key] = v if state_key == "step" else v.to(device)
    return iteration
