"""Numerics modes: which code paths the math libraries take.

`portable` (the default) gives the same bits for the same inputs on any x86-64 CPU with
AVX2, whatever its vendor, core count or the user's environment; `fast` leaves every
choice to the libraries. What each mode pins, and what is guaranteed and tested, is
written once, in docs/reproducibility.md.

The libraries read their settings once, as they load, so `pin` runs before anything
imports torch.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

from .errors import UserError

MODES = ("portable", "fast")
THREADS = 2  # 3 threads give other bits: MKL and ATen's reductions split sums by thread
# A per-process thread budget, e.g. `MNISTPIPE_THREADS=1 dvc queue start -j 2` on 2 cores, so
# parallel workers do not oversubscribe the cores. Portable honours 1 (the same bits as 2, tested).
BUDGET_ENV = "MNISTPIPE_THREADS"
PORTABLE_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "OMP_NUM_THREADS": str(THREADS),
}
OVERRIDDEN_PREFIXES = ("MKL_", "ONEDNN_", "DNNL_")


class PortableUnavailable(UserError):
    """This torch build lacks a kernel portable mode needs."""


def thread_budget(mode: str) -> int | None:
    """Intra-op threads for `mode` under $MNISTPIPE_THREADS; None: the libraries choose."""
    raw = os.environ.get(BUDGET_ENV)
    if raw is None:
        return THREADS if mode == "portable" else None
    if not raw.isdigit() or int(raw) < 1:
        raise UserError(f"{BUDGET_ENV}={raw!r}: expected a whole number of threads, at least 1")
    return min(int(raw), THREADS) if mode == "portable" else int(raw)


def pin(mode: str) -> None:
    """Put the math libraries on `mode`'s code paths. Call before torch is imported.

    Raises PortableUnavailable when this torch cannot run portable mode's kernels."""
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
    torch.backends.mkldnn.enabled = False  # oneDNN's convolutions split their sums by thread
    # NNPACK would run convolutions' forward pass with its own thread pool and unverified bits.
    torch.backends.nnpack.set_flags(False)
    install_onednn_matmuls()
    if torch.backends.cpu.get_cpu_capability() != "AVX2":
        print(f"warning: this CPU runs ATen's {torch.backends.cpu.get_cpu_capability()} kernels, "
              "not AVX2: results repeat on this machine but may differ from AVX2 machines",
              file=sys.stderr)


_matmul_overrides = None  # the registration lives as long as this object


def onednn_linear():
    """oneDNN's linear operator, or None where this torch build lacks it."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None)


def install_onednn_matmuls() -> None:
    """Give ATen's float32 CPU matrix products (`mm`, `addmm`) to oneDNN's AVX2 matmul, whose
    sums are index-order chains; check that a product really goes there, or raise.

    MKL's COMPATIBLE branch is slower and, for small products, gives other bits with 1
    thread than with 2. Autograd calls `mm` too, so backward passes take the same path."""
    global _matmul_overrides
    if _matmul_overrides is not None:
        return
    linear = onednn_linear()
    if linear is None:
        raise PortableUnavailable(
            "numerics: portable needs oneDNN's linear kernel (torch.ops.mkldnn._linear_pointwise), "
            "which this torch build lacks; install the torch in constraints.txt, "
            "or set `numerics: fast` in params.yaml (results then depend on the machine)")
    import torch

    lib = torch.library.Library("aten", "IMPL")
    calls = _register_products(lib, linear)
    _matmul_overrides = lib
    a = torch.ones(3, 4)
    if calls() != 0 or not torch.equal(a @ a.t(), torch.full((3, 3), 4.0)) or calls() != 1:
        _matmul_overrides = None
        raise PortableUnavailable("numerics: portable could not route matrix products to oneDNN in this "
                                  "torch build; install the torch in constraints.txt, or set `numerics: fast`")


def _register_products(lib, linear):
    """Register the `mm` and `addmm` kernels on `lib`; returns a counter of the products they
    gave to oneDNN."""
    import torch

    count = [0]

    def handled(a, b) -> bool:
        return a.dtype == b.dtype == torch.float32 and a.dim() == b.dim() == 2 and a.numel() and b.numel()

    def mm(a, b):
        if handled(a, b):
            count[0] += 1
            return _chain(linear, a, b, None)
        return torch.mm(a, b, out=a.new_empty(a.shape[0], b.shape[1]))  # mm.out: ATen's own kernel

    def addmm(bias, a, b, *, beta=1, alpha=1):
        if handled(a, b) and beta == alpha == 1 and bias.shape == (b.shape[1],) and bias.dtype == a.dtype:
            count[0] += 1
            return _chain(linear, a, b, bias)
        return torch.addmm(bias, a, b, beta=beta, alpha=alpha, out=a.new_empty(a.shape[0], b.shape[1]))

    with warnings.catch_warnings():  # "overriding a previously registered kernel": intended
        warnings.simplefilter("ignore")
        lib.impl("mm", mm, "CPU")
        lib.impl("addmm", addmm, "CPU")
    return lambda: count[0]


def _chain(linear, a, b, bias):
    """a @ b (+ bias, once, after the sums) on oneDNN's linear, which computes input @ weight.T.

    oneDNN hands a single row or column, and zero-stride (broadcast) operands, to other kernels
    (its sgemm, a gemv, a reference loop) whose sums are not the chain: those are copied, a row
    or column twice (the copy's result is dropped)."""
    m, n = a.shape[0], b.shape[1]
    if m == 1 or 0 in a.stride():  # m == 1: a last batch of one image; predict on one image
        a = a.repeat(2 if m == 1 else 1, 1)
    if n == 1 or 0 in b.stride():
        b = b.repeat(1, 2 if n == 1 else 1)
        if n == 1 and bias is not None:
            bias = bias.repeat(2)
    out = linear.default(a, b.t(), bias, "none", [], "")
    return out[:m, :n].contiguous() if m == 1 or n == 1 else out


def facts(mode: str) -> dict[str, Any]:
    """What the math libraries ran in this process: for logs, never for metrics."""
    import torch

    return {
        "numerics": mode,
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "mkl_cbwr": os.environ.get("MKL_CBWR", "AUTO"),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL"),
        "convolutions": "oneDNN" if torch.backends.mkldnn.enabled else "ATen im2col + MKL GEMM",
        "float32_matmul": "oneDNN AVX2 (index-order chains)" if _matmul_overrides is not None else "MKL",
    }
