"""GPU leases: on a machine with several GPUs, each training process takes one of its own.

`dvc queue start -j N` runs N train stages at once, each of which would otherwise pick
cuda:0. A lease is an exclusive `flock` on `gpu<i>.lock` in a directory shared by every
process of the user on this machine (not inside the repository: queued experiments run in
copies of it). A process takes the first free device; with every device leased it waits,
polling, until one is free. The kernel drops a flock when its holder's file closes, so a
lease ends with its process, however that ends (SIGKILL included): no stale leases.

`MNISTPIPE_FAKE_GPUS` stands in for the number of GPUs (read only here), so the logic is
tested without any; `MNISTPIPE_LEASE_DIR` moves the lock directory.
"""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .errors import UserError

FAKE_GPUS_ENV = "MNISTPIPE_FAKE_GPUS"
LEASE_DIR_ENV = "MNISTPIPE_LEASE_DIR"

_held: list[Lease] = []  # the stage's lease, kept open until the process ends


@dataclass
class Lease:
    """Device `index`, leased while `file` stays open."""
    index: int
    file: IO[bytes]

    def release(self) -> None:
        self.file.close()  # closing the only descriptor drops the flock


def device_count() -> int:
    """The number of GPUs to share out: MNISTPIPE_FAKE_GPUS if set, else CUDA's count."""
    fake = os.environ.get(FAKE_GPUS_ENV)
    if fake is not None:
        if not fake.isdigit():
            raise UserError(f"{FAKE_GPUS_ENV}={fake!r}: expected a number of devices, e.g. 2; or unset it")
        return int(fake)
    import torch

    return torch.cuda.device_count()


def lease_dir() -> Path:
    """MNISTPIPE_LEASE_DIR, else the user's runtime directory, else a per-user folder in /tmp;
    created private to the user."""
    if os.environ.get(LEASE_DIR_ENV):
        path = Path(os.environ[LEASE_DIR_ENV])
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "mnistpipe-gpu-leases"
    else:
        path = Path(tempfile.gettempdir()) / f"mnistpipe-gpu-leases-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid != os.getuid():  # another user's folder in a shared /tmp
        raise UserError(f"{path}: the GPU lease folder belongs to another user; "
                        f"set {LEASE_DIR_ENV} to a folder of your own")
    return path


def try_acquire(index: int, directory: Path) -> Lease | None:
    """Device `index`'s lease if no other process holds it, without waiting."""
    file = open(directory / f"gpu{index}.lock", "ab")  # noqa: SIM115  (kept open: it holds the lease)
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.close()
        return None
    return Lease(index, file)


def acquire(count: int, directory: Path | None = None, poll_s: float = 0.5,
            log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> Lease:
    """The first free one of devices 0..count-1; with all leased, wait until one is free."""
    directory = lease_dir() if directory is None else directory
    waiting = False
    while True:
        for index in range(count):
            lease = try_acquire(index, directory)
            if lease is not None:
                return lease
        if not waiting:
            log(f"all {count} GPUs are leased to other runs ({directory}); waiting for one")
            waiting = True
        time.sleep(poll_s)


def lease_device(device, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)):
    """`device` as it is, unless it is CUDA (no index) on a machine with several GPUs: then
    `cuda:<i>` of a device leased until this process ends."""
    if device.type != "cuda" or device.index is not None or (count := device_count()) <= 1:
        return device
    lease = acquire(count, log=log)
    _held.append(lease)
    log(f"leased GPU {lease.index} of {count} (released when this process ends)")
    import torch

    torch.cuda.set_device(lease.index)  # kernels and allocations that name no index go there too
    return torch.device("cuda", lease.index)
