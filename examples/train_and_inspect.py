"""Your own deformable network in dcnviz, end to end: build the small torchvision-DeformConv2d network of
``examples/tiny_dcn.py``, train it for about a minute on synthetic scenes (``dcnviz synth``) to segment
the shapes, save its weights as ``.safetensors``, then look inside it with ``dcnviz offsets``,
``dcnviz effective`` and ``dcnviz explore`` (the interactive page) through ``--model examples/tiny_dcn.py:build``.

    python examples/train_and_inspect.py [--work DIR] [--seconds 60]

Everything goes under DIR (default ``runs/example``): the data set, ``tiny_dcn.safetensors``, the
outputs of ``offsets`` and ``effective``, and the page ``explore.html``. Run it from the repository root with dcnviz installed (or ``PYTHONPATH=.``).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tiny_dcn  # noqa: E402  (the model file dcnviz loads with --model)

SPEC = f"{HERE / 'tiny_dcn.py'}:build"


def dcnviz(*args) -> None:
    """``python -m dcnviz ARGS``, as a user would run it; stops the example on failure."""
    command = [sys.executable, "-m", "dcnviz", *map(str, args)]
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)


def load_split(folder: Path, split: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(image (3, H, W) preprocessed as tiny_dcn.preprocess does, labels (H, W) long, 255 void) per scene
    (landscape or portrait)."""
    ids = (folder / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
    scenes = []
    for i in ids:
        bgr = cv2.imread(str(folder / "JPEGImages" / f"{i}.jpg"))
        labels = np.array(Image.open(folder / "SegmentationClass" / f"{i}.png"), np.int64)
        scenes.append((tiny_dcn.preprocess(bgr[:, :, ::-1])[0], torch.from_numpy(labels)))
    return scenes


def crops(scenes, generator: torch.Generator, batch: int, size: int = 256):
    """A batch of random ``size`` x ``size`` crops: images (B, 3, size, size) and labels (B, size, size)."""
    images, labels = [], []
    for k in torch.randint(len(scenes), (batch,), generator=generator).tolist():
        image, label = scenes[k]
        y = int(torch.randint(image.shape[1] - size + 1, (1,), generator=generator))
        x = int(torch.randint(image.shape[2] - size + 1, (1,), generator=generator))
        images.append(image[:, y:y + size, x:x + size])
        labels.append(label[y:y + size, x:x + size])
    return torch.stack(images), torch.stack(labels)


def train(scenes, seconds: float, batch: int = 8) -> torch.nn.Module:
    """AdamW on the pixel cross-entropy (objects weighted up, void ignored) for ``seconds`` of wall time."""
    model, _ = tiny_dcn.build()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    weight = torch.tensor([0.2] + [1.0] * (tiny_dcn.CLASSES - 1))
    generator = torch.Generator().manual_seed(0)
    start, step = time.monotonic(), 0
    while time.monotonic() - start < seconds:
        images, labels = crops(scenes, generator, batch)
        loss = F.cross_entropy(model(images), labels, weight=weight, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step % 20 == 0:
            print(f"step {step}: loss {loss.item():.3f}", flush=True)
    print(f"trained {step} steps in {time.monotonic() - start:.0f} s", flush=True)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/example"))
    parser.add_argument("--seconds", type=float, default=60.0, help="training time (wall clock)")
    parser.add_argument("--images", type=int, default=64, help="synthetic training scenes")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = args.work / "synth"
    if not (data / "ImageSets" / "Segmentation" / "train.txt").exists():
        dcnviz("synth", "--data", data, "--split", "train", "--images", args.images, "--seed", 7)
    model = train(load_split(data, "train"), args.seconds)
    weights = args.work / "tiny_dcn.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    print(f"saved {weights}", flush=True)
    image = Path("samples/synth_mixed.jpg")
    dcnviz("offsets", image, "--model", SPEC, "--weights", weights, "--at", "250,190", "--at", "60,300",
           "--out", args.work / "offsets", "--exist-ok", "--device", "cpu")
    dcnviz("effective", image, "--model", SPEC, "--weights", weights, "--at", "250,190", "--at", "60,300",
           "--out", args.work / "effective", "--exist-ok", "--device", "cpu")
    dcnviz("explore", image, "--model", SPEC, "--weights", weights, "--effective-at", "250,190",
           "--output-file", args.work / "explore.html", "--exist-ok", "--device", "cpu")


if __name__ == "__main__":
    main()
