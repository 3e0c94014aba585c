"""Numerics modes: which code paths the math libraries take.

`portable` (the default) makes the same inputs give the same bits on any x86-64 CPU
with AVX2, Intel or AMD, whatever the core count or the user's environment:

- ATen (PyTorch's own kernels) runs its AVX2 build, not AVX-512 where the CPU has it;
- float32 matrix products (every Linear layer's, forward and backward) run on oneDNN's
  AVX2 kernels, which compute each output as one fused multiply-add chain in index order,
  over consecutive blocks of 1,024 terms, each block's chain added to the sum of those
  before it: a result defined by the math, not by the CPU's cache sizes, vendor or thread
  count (tests/test_numerics.py checks it against that definition; in oneDNN v3.12's
  source the block is a constant, `default_k_blk = 1024` in brgemm_matmul_utils.cpp);
- MKL, for what remains (the CNN's convolutions), runs its COMPATIBLE branch, the one
  code path it keeps on every vendor's CPU (other branches are honoured only on Intel);
- oneDNN's JIT is capped at AVX2 and its convolutions are switched off (their sums
  are split by thread), as is NNPACK, so convolutions run as ATen's im2col + MKL GEMM;
- exactly THREADS intra-op threads (or 1, under a thread budget): MKL's COMPATIBLE GEMM
  and ATen's parallel reductions split their sums by thread count (3 threads gave other
  bits than 1 or 2).

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
# A per-process thread budget, e.g. `MNISTPIPE_THREADS=1 dvc queue start -j 2` on 2 cores, so
# parallel workers do not oversubscribe the cores. Portable honours 1 (the same bits as 2,
# tested); a larger budget stays at THREADS, since 3 threads give other bits.
BUDGET_ENV = "MNISTPIPE_THREADS"
PORTABLE_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "OMP_NUM_THREADS": str(THREADS),
}
OVERRIDDEN_PREFIXES = ("MKL_", "ONEDNN_", "DNNL_")


def share_of_cores(workers: int) -> int:
    """Threads per process when `workers` processes share the cores this one may run on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // workers)


def thread_budget(mode: str) -> int | None:
    """Intra-op threads for `mode` under $MNISTPIPE_THREADS; None: the libraries choose."""
    from .errors import UserError

    raw = os.environ.get(BUDGET_ENV)
    if raw is None:
        return THREADS if mode == "portable" else None
    if not raw.isdigit() or int(raw) < 1:
        raise UserError(f"{BUDGET_ENV}={raw!r}: expected a whole number of threads, at least 1")
    return min(int(raw), THREADS) if mode == "portable" else int(raw)


def pin(mode: str) -> None:
    """Put the math libraries on `mode`'s code paths. Call before torch is imported."""
    if mode not in MODES:
        raise ValueError(f"unknown numerics mode {mode!r}")
    threads = thread_budget(mode)
    if mode == "fast":
        if threads is not None:
            os.environ["OMP_NUM_THREADS"] = str(threads)  # read as torch loads
        return
    if "torch" in sys.modules:
        raise RuntimeError("numerics.pin() must run before torch is imported: "
                           "MKL and ATen read their settings when they load")
    for key in [k for k in os.environ if k.startswith(OVERRIDDEN_PREFIXES)]:
        del os.environ[key]
    os.environ.update(PORTABLE_ENV, OMP_NUM_THREADS=str(threads))

    import torch

    torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = False
    # NNPACK would otherwise run convolutions' forward pass: another library with its own
    # thread pool (which fights OpenMP's for the cores) and unverified bits; ATen's own
    # convolution was 10% faster here anyway.
    torch.backends.nnpack.set_flags(False)
    _route_matmuls_to_onednn(torch)
    if torch.backends.cpu.get_cpu_capability() != "AVX2":
        print(f"warning: this CPU runs ATen's {torch.backends.cpu.get_cpu_capability()} kernels, "
              "not AVX2: results repeat on this machine but may differ from AVX2 machines",
              file=sys.stderr)


_matmul_overrides = None  # the registration lives as long as this object


def _route_matmuls_to_onednn(torch) -> None:
    """Give ATen's float32 CPU matrix products (`mm`, `addmm`) to oneDNN's AVX2 matmul.

    MKL's COMPATIBLE branch is SSE-era (2.4x slower on the MLP's first layer) and, for
    small products such as a batch times a 10-class layer, gives other bits with 1 thread
    than with 2. Autograd's formulas call `mm` too, so backward passes take the same path.
    """
    global _matmul_overrides
    linear = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if _matmul_overrides is not None or linear is None or not torch.backends.mkldnn.is_available():
        return

    def handled(a, b) -> bool:
        return a.dtype == b.dtype == torch.float32 and a.dim() == b.dim() == 2 and a.numel() and b.numel()

    def chain(a, b, bias):
        """a @ b (+ bias, once, after the sums) on oneDNN's linear, which computes input @ weight.T.

        oneDNN hands some products to other kernels (its sgemm, a gemv, a reference loop)
        whose sums are not the chain: a single row or column, and zero-stride (broadcast)
        operands. So those are copied: a row or column twice (the copy's result is dropped)."""
        m, n = a.shape[0], b.shape[1]
        if m == 1 or 0 in a.stride():  # m == 1: a last batch of one image; predict on one image
            a = a.repeat(2 if m == 1 else 1, 1)
        if n == 1 or 0 in b.stride():
            b = b.repeat(1, 2 if n == 1 else 1)
            if n == 1 and bias is not None:
                bias = bias.repeat(2)
        out = linear.default(a, b.t(), bias, "none", [], "")
        return out[:m, :n].contiguous() if m == 1 or n == 1 else out

    def mm(a, b):
        if handled(a, b):
            return chain(a, b, None)
        return torch.mm(a, b, out=a.new_empty(a.shape[0], b.shape[1]))  # mm.out: ATen's own kernel

    def addmm(bias, a, b, *, beta=1, alpha=1):
        if handled(a, b) and beta == alpha == 1 and bias.shape == (b.shape[1],) and bias.dtype == a.dtype:
            return chain(a, b, bias)
        return torch.addmm(bias, a, b, beta=beta, alpha=alpha, out=a.new_empty(a.shape[0], b.shape[1]))

    import warnings

    lib = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():  # "overriding a previously registered kernel": intended
        warnings.simplefilter("ignore")
        lib.impl("mm", mm, "CPU")
        lib.impl("addmm", addmm, "CPU")
    _matmul_overrides = lib


def pin_from_params(path: str = "params.yaml") -> Params:
    """Read and validate params.yaml, pin its `numerics` mode, and return the params.

    Stage scripts call this first, before importing torch (see `pin`), and use the params
    it returns. A bad params.yaml ends the stage here, before any work.
    """
    from .errors import exit_on_user_error
    from .params import load_params

    params = exit_on_user_error(load_params)(path)
    exit_on_user_error(pin)(params.numerics)
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
        "float32_matmul": "oneDNN AVX2 (index-order chains)" if _matmul_overrides is not None else "MKL",
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
