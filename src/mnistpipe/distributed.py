"""Data parallel: the few places where torchrun's processes meet.

Without torchrun there is no process group, and this process is rank 0 of 1.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from typing import Any

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, the number of processes)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process logs and writes the outputs (rank 0, or the only process)."""
    return rank_and_world()[0] == 0


def init_distributed(device: torch.device) -> torch.device:
    """Join torchrun's process group: NCCL between GPUs, gloo on the CPU. Returns the device
    this rank trains on: the GPU numbered by its LOCAL_RANK, or the CPU."""
    _die_with_launcher()
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def close_distributed() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _die_with_launcher() -> None:
    """torchrun starts every worker in a session of its own, so SIGKILL to the stage's process
    group (a killed `dvc repro`) would leave the workers training on and writing while the
    rerun starts. On Linux the kernel can kill a worker when its parent, torchrun, dies."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # torchrun died before that took effect
        os._exit(1)


def shard(n: int, rank: int, world: int) -> slice:
    """Rank's rows of an n-row global batch: contiguous, in rank order, as even as can be
    (the first n % world ranks take one row more; a rank may get none of a tiny last batch)."""
    size, extra = divmod(n, world)
    start = rank * size + min(rank, extra)
    return slice(start, start + size + (rank < extra))


def rank_seed(seed: int, rank: int) -> int:
    """A seed of its own for each rank > 0, derived from the run's seed."""
    return int.from_bytes(hashlib.sha256(f"{seed}/rank {rank}".encode()).digest()[:8], "big")


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    out = [None] * rank_and_world()[1]
    dist.all_gather_object(out, obj)
    return out
