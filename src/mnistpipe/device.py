"""Device choice and the settings that make results repeatable on it."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from .errors import UserError


def choose_device(requested: str, key: str = "train.device") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit device must exist."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
        "cpu": True,
    }
    if requested == "auto":
        return torch.device(next(name for name, ok in available.items() if ok))
    if not available[requested]:
        raise UserError(f"params.yaml: {key}: {requested!r} is not available on this machine; "
                        "use 'auto' or 'cpu'")
    return torch.device(requested)


def make_deterministic(device: torch.device, tf32: bool = False) -> Callable[[], None]:
    """Deterministic kernels everywhere; TF32 only when asked for (it changes results).
    Returns a function that puts every setting back (stages never need it; tests do)."""
    backends = torch.backends
    saved = (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory,
             backends.cudnn.benchmark, backends.cudnn.deterministic, backends.cuda.matmul.allow_tf32,
             backends.cudnn.allow_tf32)

    def restore() -> None:
        torch.set_flush_denormal(False)
        torch.use_deterministic_algorithms(saved[0])
        (torch.utils.deterministic.fill_uninitialized_memory, backends.cudnn.benchmark, backends.cudnn.deterministic,
         backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32) = saved[1:]

    if device.type == "cuda":
        # cuBLAS needs a fixed workspace to be deterministic; set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if device.type == "cpu":
        # Adam's second moments of tiny gradients fall into the denormal range late in
        # training, where x86 arithmetic slows down many times over; flush them to zero.
        torch.set_flush_denormal(True)
    torch.use_deterministic_algorithms(True, warn_only=False)
    # That call also fills every new tensor with NaN, a debugging aid that costs time and
    # changes no result (tests/test_train.py trains with it on and off).
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return restore


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


def synchronize(device: torch.device) -> None:
    """Wait for queued work (for honest timings); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024
