"""Run a model over every image of a dataset: loading in DataLoader workers, the model in this process,
the images split over the processes of a torchrun launch, partial state saved for ``--resume``, and the
results merged exactly on rank 0.

A :class:`Job` says what is done with one image, in two halves: :meth:`Job.load` (in a worker process:
read, check and preprocess; raise :class:`~dcnviz.errors.UserError` for a bad image, which is then
reported and skipped) and :meth:`Job.step` (here: the model, and what is kept of its output). What is
kept is a small JSON-ready *record* per image, merged later in image order, and *totals*, integer arrays
that are summed. Integers sum exactly in any order and the records are combined in the same order
whatever the number of processes or interruptions, so every way of running gives the same result.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler

from dcnviz.errors import UserError
from dcnviz.runner import distributed
from dcnviz.runner.distributed import Dist
from dcnviz.runner.partial import PartialState
from dcnviz.runner.progress import Progress


class Job(Protocol):
    def name(self, index: int) -> str:
        """The image's id, for log lines."""

    def load(self, index: int) -> dict:
        """Runs in a worker: the inputs of image ``index`` (tensors are pinned for a GPU)."""

    def step(self, item: dict) -> tuple[Any, dict[str, np.ndarray]]:
        """Runs here: (record, totals) of the loaded ``item``."""


@dataclass
class Outcome:
    """All images of the run (rank 0): ``records`` and ``errors`` by image index, in index order, the
    summed ``totals``, and this run's own work: ``images`` loaded here, ``seconds`` it took."""

    records: dict[int, Any] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    totals: dict[str, np.ndarray] = field(default_factory=dict)
    images: int = 0
    seconds: float = 0.0

    def add(self, records: dict, errors: dict, totals: dict) -> None:
        self.records.update(records)
        self.errors.update(errors)
        for key, value in totals.items():
            value = np.asarray(value, np.int64)
            self.totals[key] = self.totals[key] + value if key in self.totals else value

    def sorted(self) -> "Outcome":
        return Outcome(dict(sorted(self.records.items())), dict(sorted(self.errors.items())), self.totals,
                       self.images, self.seconds)


def default_workers(processes: int | None = None) -> int:
    """DataLoader workers per process when ``processes`` (default: torchrun's ``LOCAL_WORLD_SIZE``, else 1)
    share this machine: one CPU core of each process's share is left to the model's own threads, at most
    8 workers (decoding and resizing rarely need more to keep a GPU busy)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = cores // max(1, processes or int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(8, share - 1))


class _Items(Dataset):
    """Image ``index`` as the job loads it (or its error), in a worker."""

    def __init__(self, job: Job, count: int):
        self.job, self.count = job, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        try:
            return {"index": index, **self.job.load(index)}
        except UserError as e:
            return {"index": index, "error": str(e)}


class _Order(Sampler):
    """The images this process loads, in order: set once its workers are running (see :func:`run`)."""

    def __init__(self):
        self.indices: list[int] = []

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _identity(item):
    return item


@contextlib.contextmanager
def _opencv_sequential():
    """OpenCV without its thread pool while the workers are forked. A forked child inherits the pool's
    state but not its threads, and OpenCV then deadlocks there (even in ``cv2.setNumThreads``); the
    workers (one image each; torch gives them one thread too) resize sequentially."""
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(0)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def run(job: Job, count: int, ctx: Dist, *, workers: int = 0, state: PartialState | None = None,
        resume: bool = False, save_every: int = 10, desc: str = "", quiet: bool = False) -> Outcome | None:
    """Run ``job`` over images 0 … ``count`` - 1 (see the module docstring); on rank 0 the merged
    :class:`Outcome` of every image, elsewhere None.

    ``state`` (optional) keeps the partial state; ``resume`` continues the one there. Every process saves a
    chunk and the progress display advances every ``save_every`` of its images (a collective, so ranks
    move together). Bad images (``Job.load`` raised a UserError) are reported by their process with its
    rank and recorded in ``errors``."""
    outcome = Outcome()  # rank 0: what earlier attempts did

    def begin():
        for chunk in (state.start(resume) if state is not None else []):
            outcome.add({int(k): v for k, v in chunk["records"].items()},
                        {int(k): v for k, v in chunk["errors"].items()}, chunk["totals"])
        return sorted(outcome.records) + sorted(outcome.errors), state.attempt if state else 1

    order = _Order()
    loader = DataLoader(_Items(job, count), sampler=order, batch_size=None, num_workers=workers,
                        collate_fn=_identity, pin_memory=ctx.device.type == "cuda",
                        prefetch_factor=4 if workers else None, persistent_workers=workers > 0)
    if workers:
        # The workers are forked now, before this process's first collective, and kept for the images
        # chosen after it. A gloo collective's thread frees the call's tensors after the call has
        # returned, taking the GIL and so creating a Python thread state; a fork at that moment copies
        # CPython's lock of the thread list held, and before Python 3.12 the child then hangs before it
        # runs anything (CPython gh-112275). So it was once in CI: the worker of one `torchrun` process
        # of `eval --workers 1`, forked just after the broadcast below, stuck in PyOS_AfterFork_Child.
        with _opencv_sequential():
            for _ in loader:  # no images yet
                pass
    done_before, attempt = distributed.on_main(begin, ctx)
    if state is not None:
        state.attempt = attempt
    finished = set(done_before)
    todo = [i for i in range(count) if i not in finished]
    mine = distributed.shard(todo, ctx)
    steps = len(distributed.shard(todo, Dist(0, ctx.world)))  # rank 0 has the most
    progress = Progress(count, len(finished), enabled=ctx.main and not quiet, desc=desc)
    mine_out = Outcome()  # everything this process did
    chunk = Outcome()     # since its last chunk
    seq, start = 0, time.monotonic()
    order.indices = mine
    items = iter(loader)
    index = None
    try:
        for s in range(steps):
            if s < len(mine):
                index = mine[s]
                item = next(items)
                if "error" in item:
                    chunk.errors[index] = item["error"]
                    line = f"{ctx.tag}Error: {item['error']}; skipped"
                    if ctx.main:
                        progress.write(line)
                    else:
                        print(line, file=sys.stderr, flush=True)
                else:
                    record, totals = job.step(item)
                    chunk.add({index: record}, {}, totals)
            if (s + 1) % save_every == 0 or s == steps - 1:
                if state is not None and (chunk.records or chunk.errors):
                    state.write(ctx.rank, seq, chunk.records, chunk.errors, chunk.totals)
                    seq += 1
                mine_out.add(chunk.records, chunk.errors, chunk.totals)
                chunk = Outcome()
                progress.update(len(finished) + distributed.all_sum(len(mine_out.records) + len(mine_out.errors), ctx))
    except Exception as e:
        if ctx.world > 1:  # which process failed, on which image (torchrun then stops the others)
            where = "" if index is None else f" at image {job.name(index)}"
            print(f"{ctx.tag}Error{where}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        raise
    finally:
        progress.close()
    mine_out.images, mine_out.seconds = len(mine), time.monotonic() - start
    parts = distributed.gather(mine_out, ctx)
    if not ctx.main:
        return None
    for part in parts:
        outcome.add(part.records, part.errors, part.totals)
    outcome.images, outcome.seconds = sum(p.images for p in parts), max(p.seconds for p in parts)
    return outcome.sorted()
