"""The machine a run is on: its cores, CPU and library versions."""

from __future__ import annotations

import ctypes
import os
import platform
import re
from typing import Any


def share_of_cores(workers: int) -> int:
    """Threads per process when `workers` processes share the cores this one may run on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // workers)


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> None:
    """Have glibc's malloc keep freed blocks of up to 32 MiB for reuse rather than give them back
    to the system. A CNN's training step frees and allocates activations of several MiB; getting
    them back from the system, page fault by page fault, cost a quarter of a CNN epoch in either
    numerics mode (docs/cnn.md). No result changes. Elsewhere than glibc (macOS, musl) the
    allocator's defaults stay."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)  # blocks under 32 MiB (glibc's maximum) from the heap...
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)  # ...which keeps up to 1 GiB of freed memory


def _search(pattern: str, text: str) -> str | None:
    found = re.search(pattern, text, re.M)
    return found[1] if found else None


def _cpuinfo() -> str | None:
    try:
        return open("/proc/cpuinfo").read()
    except OSError:
        return None


def cpu_model() -> tuple[str, str]:
    """The CPU's model name and vendor ("" where unknown)."""
    info = _cpuinfo()
    if info is None:
        return platform.processor() or platform.machine(), ""
    return _search(r"^model name\s*:\s*(.+)$", info) or "", _search(r"^vendor_id\s*:\s*(.+)$", info) or ""


def vector_unit() -> str:
    """The CPU's widest vector unit: "AVX-512", "AVX2" or "" (older, other or unknown)."""
    flags = set((_search(r"^flags\s*:(.*)$", _cpuinfo() or "") or "").split())
    return "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""


def machine_facts(mode: str) -> dict[str, Any]:
    """What this machine and its libraries did: for logs, never for metrics."""
    import torch

    from . import numerics

    config = torch.__config__.show()
    model, vendor = cpu_model()
    return {
        **numerics.facts(mode),
        "cpu_model": model,
        "cpu_vendor": vendor,
        "cpu_cores": os.cpu_count(),
        "mkl": _search(r"Math Kernel Library Version (\S+)", config),
        "onednn": _search(r"MKL-DNN v(\S+)", config),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
