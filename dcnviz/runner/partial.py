"""The partial state of a dataset run under its output folder, so that ``--resume`` can continue it.

Layout (``OUT/partial/``)::

    run.json                         what the run computes: command, model, SHA-256 of its weights (state dict),
                                     dataset, split, image count and ids, every option that changes a result
    part-a<attempt>-r<rank>-<seq>.json   one chunk: the per-image records and error lines of the images a
                                     process finished since its previous chunk, and its additive totals
                                     (integer counts) over those images

Every file is written atomically (temporary file + rename), so a kill at any moment leaves only whole
chunks; the images of a lost, unfinished chunk are simply done again. Chunks are JSON (no pickle is ever
read back), and floats survive the round trip exactly, so a resumed run merges to the same bits as an
uninterrupted one. Each attempt (the first run, each resume) numbers its chunks apart, and any number of
processes may resume a run started with another number. The folder is removed once the final files are
written.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from dcnviz.errors import UserError
from dcnviz.io.images import write_json_atomic

FOLDER = "partial"
MANIFEST = "run.json"


class PartialState:
    """``OUT/partial`` of a run described by ``manifest`` (a JSON-ready dict)."""

    def __init__(self, out_dir: str | Path, manifest: dict):
        self.folder = Path(out_dir) / FOLDER
        self.manifest = manifest
        self.attempt = 1

    def start(self, resume: bool) -> list[dict]:
        """Begin (rank 0 only): a fresh run writes the manifest and returns []; with ``resume`` the
        manifest on disk must equal this run's and the chunks written so far are returned.

        Raises :class:`~dcnviz.errors.UserError` (one line) when there is nothing to resume, when the
        folder holds an unfinished run that was not asked to be resumed, or when the manifests differ."""
        path = self.folder / MANIFEST
        if not resume:
            if path.exists():
                raise UserError(f"{self.folder.parent} holds an interrupted run ({path}); continue it with "
                                "--resume, or choose another --out")
            write_json_atomic(path, self.manifest)
            return []
        if not path.is_file():
            raise UserError(f"nothing to resume in {self.folder.parent}: no {FOLDER}/{MANIFEST} (a finished run "
                            "leaves none)")
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot resume from {path}: {e}") from None
        for key in [*self.manifest, *(k for k in old if k not in self.manifest)]:  # the user's options first
            if old.get(key) != self.manifest.get(key):
                raise UserError(f"cannot resume {self.folder.parent}: it was started with {key} = "
                                f"{_short(old.get(key))}, this run has {_short(self.manifest.get(key))}")
        chunks = []
        for chunk in sorted(self.folder.glob("part-*.json")):
            try:
                chunks.append(json.loads(chunk.read_text()))
            except (OSError, ValueError) as e:
                raise UserError(f"cannot resume from {chunk}: {e}") from None
            self.attempt = max(self.attempt, int(chunk.name.split("-")[1][1:]) + 1)
        return chunks

    def write(self, rank: int, seq: int, records: dict, errors: dict, totals: dict) -> None:
        """One chunk of process ``rank``: ``records`` and ``errors`` by image index, ``totals`` name ->
        integer array (what these images add)."""
        chunk = {"records": {str(k): v for k, v in records.items()},
                 "errors": {str(k): v for k, v in errors.items()},
                 "totals": {k: np.asarray(v).tolist() for k, v in totals.items()}}
        write_json_atomic(self.folder / f"part-a{self.attempt:03d}-r{rank:05d}-{seq:06d}.json", chunk, expand=0)



def discard(out_dir: str | Path) -> None:
    """Remove ``out_dir/partial`` once the run's final files are written (until then it can be resumed)."""
    shutil.rmtree(Path(out_dir) / FOLDER, ignore_errors=True)


def model_digest(model) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and values): what a resumed run must match."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def ids_digest(ids) -> str:
    """SHA-256 of a list of image ids (the run's images, in order)."""
    import hashlib

    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."
