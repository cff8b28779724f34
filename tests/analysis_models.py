"""Test helper: registered models with deterministic random weights in a ``.safetensors`` file, so that the
analysis commands run (``--weights FILE``) without the bundled weights, with offsets set where needed.

Run as a script it writes such a file, e.g. for a random-weight reference figure of an official model:

    python tests/analysis_models.py rfcn_dcn_coco rfcn_dcn_coco-random.safetensors [--seed 0]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from dcnviz.convert.weights import write_safetensors

import random_weights


def random_model(name: str, seed: int = 0, offsets: dict | str | None = None,
                 part_offset: tuple[float, float] | None = None) -> torch.nn.Module:
    """``name``'s network with PyTorch's default initialisation under ``seed`` (:func:`random_weights.random_model`).

    ``offsets``: None keeps the random offset convs (offsets of about a cell); "zero" makes every offset
    zero; a dict {block name ("res5a"): 18-vector} makes that block's offsets this constant vector
    (weights zero, bias = vector; blocks not named get zero offsets). ``part_offset`` (dx, dy) makes the
    classification branch's PS RoI offsets that constant for every class and part (before trans_std)."""
    model = random_weights.random_model(name, seed)
    with torch.no_grad():
        if part_offset is not None:
            conv = model.head.rfcn_cls_offset_t
            parts = model.part_geometry.pooled_size ** 2
            conv.weight.zero_()
            # channel (ctop * P + gh) * P + gw; ctop = 2c is dx and 2c + 1 is dy of class c
            conv.bias.copy_(torch.tensor(part_offset).repeat(conv.out_channels // (2 * parts)).repeat_interleave(parts))
        if offsets is None:
            return model
        for layer in model.deformable_layers:
            conv = getattr(model.backbone, layer.offset.removesuffix("_branch2b_offset")).branch2b_offset
            conv.weight.zero_()
            bias = offsets.get(layer.name.removesuffix("_branch2b")) if isinstance(offsets, dict) else None
            conv.bias.copy_(torch.zeros(conv.bias.shape) if bias is None else torch.as_tensor(bias))
    return model


def write_weights(name: str, path: Path, seed: int = 0, offsets: dict | str | None = None,
                  part_offset: tuple[float, float] | None = None) -> Path:
    """Write :func:`random_model`'s weights as a dcnviz ``.safetensors`` file that ``--weights`` accepts."""
    state = random_model(name, seed, offsets, part_offset).state_dict()
    write_safetensors(state, str(path), {"format": "dcnviz", "model": name, "source_file": f"random seed {seed}"})
    return Path(path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_weights(args.model, args.out, args.seed), file=sys.stderr)
