"""Processes of one run, as ``torchrun`` starts them: rank, world size, device, and the few collectives a
dataset run needs (:mod:`torch.distributed`; no scheduler of dcnviz's own).

Without torchrun's environment (``WORLD_SIZE`` unset or 1) everything here is a no-op on one process.
Under ``torchrun --nproc-per-node N`` each process takes ``cuda:LOCAL_RANK`` when CUDA is asked for (or
``auto`` finds GPUs) and the CPU otherwise; the process group uses gloo for CPU tensors and objects and,
with GPUs, NCCL for CUDA tensors (``"cpu:gloo,cuda:nccl"``), so object collectives never need a GPU.

Images are split by :func:`shard`: process r takes images r, r + N, r + 2N, … of those still to do. This
is what :class:`torch.utils.data.DistributedSampler` does without shuffling, minus its padding: the
sampler repeats images to give every process the same count, which would count them twice in the
statistics; a resumed run also has to leave out the images already done, which the sampler cannot.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """This process in its run: ``rank`` of ``world`` processes, ``local_rank`` on its machine (of
    ``local_world``), and the device it computes on."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0: the process that reports, merges and writes the results."""
        return self.rank == 0

    @property
    def tag(self) -> str:
        """``[rank R/N] `` before this process's log lines in a multi-process run, else empty."""
        return f"[rank {self.rank}/{self.world}] " if self.world > 1 else ""


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device_spec: str, select_device, warn=None) -> Dist:
    """This process's :class:`Dist`; joins the process group when launched by torchrun.

    ``select_device(spec, warn)`` is the CLI's device parser (``auto|cpu|cuda[:N]``). Under torchrun,
    "auto" and "cuda" mean ``cuda:LOCAL_RANK`` (the CPU when auto finds no GPU); "cuda:N" on several
    processes is refused because they would share one GPU."""
    if not launched():
        return Dist(device=select_device(device_spec, warn))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    spec = device_spec.strip().lower()
    if spec.startswith("cuda:"):
        from dcnviz.errors import DeviceError

        raise DeviceError(f"--device {spec} under torchrun: every process would use the same GPU; use "
                          "--device cuda (each process takes cuda:LOCAL_RANK) or auto")
    device = select_device(spec if spec == "cpu" else "auto", warn if rank == 0 else None)
    if device.type == "cuda":
        device = select_device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
    elif spec == "cuda":
        select_device("cuda")  # raises the usual error saying what was found
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=2))
    return Dist(rank, world, local_rank, local_world, device)


def shard(indices: list[int], ctx: Dist) -> list[int]:
    """This process's part of ``indices`` (strided, no padding; see the module docstring)."""
    return indices[ctx.rank::ctx.world]


def broadcast(obj, ctx: Dist):
    """Rank 0's ``obj`` on every process."""
    if ctx.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj, ctx: Dist) -> list | None:
    """Every process's ``obj``, in rank order, on rank 0 (None elsewhere)."""
    if ctx.world == 1:
        return [obj]
    out = [None] * ctx.world if ctx.main else None
    dist.gather_object(obj, out, dst=0)
    return out


def on_main(fn, ctx: Dist):
    """``fn()`` run on rank 0 and its result on every process; a UserError it raises is raised on every
    process (so no process waits for a rank 0 that gave up)."""
    from dcnviz.errors import UserError

    if ctx.world == 1:
        return fn()
    result = message = None
    if ctx.main:
        try:
            result = fn()
        except UserError as e:
            message = str(e)
    result, message = broadcast((result, message), ctx)
    if message is not None:
        raise UserError(message)
    return result


def all_sum(value: int, ctx: Dist) -> int:
    """The sum of an integer over all processes (on every process)."""
    if ctx.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t)
    return int(t.item())


def finish(ctx: Dist) -> None:
    """Leave the process group (after a last barrier, so no process exits while others still talk)."""
    if ctx.world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
