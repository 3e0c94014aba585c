"""Numerics modes: which code paths the math libraries take.

`portable` (the default) makes the same inputs give the same bits on any x86-64 CPU
with AVX2, Intel or AMD, whatever the core count or the user's environment:

- ATen (PyTorch's own kernels) runs its AVX2 build, not AVX-512 where the CPU has it;
- MKL runs its COMPATIBLE branch, the one code path it keeps on every vendor's CPU
  (other branches are honoured only on Intel CPUs);
- oneDNN's JIT is capped at AVX2 and its convolutions are switched off, so
  convolutions run as ATen's im2col + MKL GEMM;
- exactly THREADS intra-op threads: MKL's COMPATIBLE GEMM and ATen's parallel
  reductions split their sums by thread count (3 threads gave other bits than 1 or 2).

Every setting that could steer those libraries elsewhere (ATEN_CPU_CAPABILITY,
MKL_*, ONEDNN_*, DNNL_*, OMP_NUM_THREADS) is overridden. They are read once, when the
libraries load, so `pin` must run before anything imports torch.

`fast` leaves every choice to the libraries: faster on CPUs with AVX-512, but the
numbers then depend on the CPU and the thread count.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .params import Params

MODES = ("portable", "fast")
THREADS = 2
PORTABLE_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "OMP_NUM_THREADS": str(THREADS),
}
OVERRIDDEN_PREFIXES = ("MKL_", "ONEDNN_", "DNNL_")


def pin(mode: str) -> None:
    """Put the math libraries on `mode`'s code paths. Call before torch is imported."""
    if mode not in MODES:
        raise ValueError(f"unknown numerics mode {mode!r}")
    if mode == "fast":
        return
    if "torch" in sys.modules:
        raise RuntimeError("numerics.pin() must run before torch is imported: "
                           "MKL and ATen read their settings when they load")
    for key in [k for k in os.environ if k.startswith(OVERRIDDEN_PREFIXES)]:
        del os.environ[key]
    os.environ.update(PORTABLE_ENV)

    import torch

    torch.set_num_threads(THREADS)
    torch.backends.mkldnn.enabled = False
    if torch.backends.cpu.get_cpu_capability() != "AVX2":
        print(f"warning: this CPU runs ATen's {torch.backends.cpu.get_cpu_capability()} kernels, "
              "not AVX2: results repeat on this machine but may differ from AVX2 machines",
              file=sys.stderr)


def pin_from_params(path: str = "params.yaml") -> Params:
    """Read and validate params.yaml, pin its `numerics` mode, and return the params.

    Stage scripts call this first, before importing torch (see `pin`), and use the params
    it returns. A bad params.yaml ends the stage here, before any work.
    """
    from .errors import exit_on_user_error
    from .params import load_params

    params = exit_on_user_error(load_params)(path)
    pin(params.numerics)
    return params


def cpu_model() -> tuple[str, str]:
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        return platform.processor() or platform.machine(), ""
    field = lambda name: (re.search(rf"^{name}\s*:\s*(.+)$", info, re.M) or [None, ""])[1]  # noqa: E731
    return field("model name"), field("vendor_id")


def machine_facts(mode: str) -> dict[str, Any]:
    """What this machine and its libraries did: for logs, never for metrics."""
    import torch

    config = torch.__config__.show()
    version = lambda pattern: (re.search(pattern, config) or [None, None])[1]  # noqa: E731
    model, vendor = cpu_model()
    return {
        "numerics": mode,
        "cpu_model": model,
        "cpu_vendor": vendor,
        "cpu_cores": os.cpu_count(),
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "mkl": version(r"Math Kernel Library Version (\S+)"),
        "mkl_cbwr": os.environ.get("MKL_CBWR", "AUTO"),
        "onednn": version(r"MKL-DNN v(\S+)"),
        "onednn_enabled": torch.backends.mkldnn.enabled,
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL"),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
