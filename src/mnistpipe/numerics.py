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
from .machine import keep_freed_memory

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
    """Put the math libraries on `mode`'s code paths, and the allocator on keeping freed memory
    (in both modes). Call before torch is imported.

    Raises PortableUnavailable when this torch cannot run portable mode's kernels."""
    if mode not in MODES:
        raise ValueError(f"unknown numerics mode {mode!r}")
    threads = thread_budget(mode)
    keep_freed_memory()
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
    # Convolutions the column kernels do not take stay on ATen's own: not oneDNN's, whose
    # sums split by thread, nor NNPACK's, with its own thread pool and unverified bits.
    torch.backends.mkldnn.enabled = False
    torch.backends.nnpack.set_flags(False)
    install_portable_kernels()
    if torch.backends.cpu.get_cpu_capability() != "AVX2":
        print(f"warning: this CPU runs ATen's {torch.backends.cpu.get_cpu_capability()} kernels, "
              "not AVX2: results repeat on this machine but may differ from AVX2 machines",
              file=sys.stderr)


_overrides = None  # the registrations live as long as this object


def onednn_linear():
    """oneDNN's linear operator, or None where this torch build lacks it."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None)


def install_portable_kernels() -> None:
    """Give ATen's float32 CPU matrix products (`mm`, `addmm`) to oneDNN's AVX2 matmul, whose
    sums are index-order chains, and its 2-D convolutions to matrix products of sliding
    windows (`_column_convolution`); check that a product and a convolution really go
    there, or raise.

    MKL's COMPATIBLE branch is slower and, for small products, gives other bits with 1
    thread than with 2. Autograd calls `mm` and `convolution_backward` too, so backward
    passes take the same paths."""
    global _overrides
    if _overrides is not None:
        return
    linear = onednn_linear()
    if linear is None:
        raise PortableUnavailable(
            "numerics: portable needs oneDNN's linear kernel (torch.ops.mkldnn._linear_pointwise), "
            "which this torch build lacks; install the torch in constraints.txt, "
            "or set `numerics: fast` in params.yaml (results then depend on the machine)")
    import torch

    lib = torch.library.Library("aten", "IMPL")
    products = _register_products(lib, linear)
    convolutions = _register_convolutions(lib)
    _overrides = lib
    a = torch.ones(3, 4)
    routed = products() == 0 and torch.equal(a @ a.t(), torch.full((3, 3), 4.0)) and products() == 1
    window = torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 3, 3), padding=1)
    if not routed or convolutions() != 1 or window[0, 0, 1, 1] != 9.0 or products() != 2:
        _overrides = None
        raise PortableUnavailable("numerics: portable could not route matrix products and convolutions "
                                  "to its kernels in this torch build; install the torch in constraints.txt, "
                                  "or set `numerics: fast`")


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


def _register_convolutions(lib):
    """Register `convolution` and `convolution_backward` kernels on `lib` for float32 2-D
    convolutions without groups or dilation (the CNN's; others keep ATen's own kernels), and
    max-pooling's. Returns a counter of the convolutions they took."""
    import torch

    count = [0]
    aten_own = torch._C.DispatchKey.CompositeExplicitAutograd
    forward_op, backward_op = torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default

    def handled(x, weight, dilation, transposed, groups) -> bool:
        return (x.dtype == weight.dtype == torch.float32 and x.dim() == 4 and not transposed
                and groups == 1 and list(dilation) == [1, 1])

    def convolution(x, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
        if not handled(x, weight, dilation, transposed, groups):
            return forward_op._op_dk(aten_own, x, weight, bias, stride, padding, dilation, transposed,
                                     output_padding, groups)
        count[0] += 1
        return _column_convolution(x, weight, bias, stride, padding)

    def convolution_backward(grad, x, weight, bias_sizes, stride, padding, dilation, transposed,
                             output_padding, groups, mask):
        if not handled(x, weight, dilation, transposed, groups):
            return backward_op._op_dk(aten_own, grad, x, weight, bias_sizes, stride, padding, dilation,
                                      transposed, output_padding, groups, mask)
        return _column_convolution_backward(grad, x, weight, stride, padding, mask)

    with warnings.catch_warnings():  # "overriding a previously registered kernel": intended
        warnings.simplefilter("ignore")
        lib.impl("convolution", convolution, "CPU")
        lib.impl("convolution_backward", convolution_backward, "CPU")
        lib.impl("max_pool2d_with_indices", _channels_last_max_pool, "CPU")
    return lambda: count[0]


def _channels_last_max_pool(x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    """ATen's max-pooling in channels-last layout, where its kernel is vectorized: the same maxima
    and indices (a maximum is exact), several times faster than on NCHW."""
    import torch

    x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.contiguous_format)
    out, indices = x.new_empty(0), x.new_empty(0, dtype=torch.int64)
    torch.ops.aten.max_pool2d_with_indices.out(x, kernel_size, stride, padding, dilation, ceil_mode,
                                               out=out, indices=indices)  # .out: ATen's own kernel
    return out.contiguous(), indices.contiguous()


def _windows(x, kernel, stride, padding):
    """x's sliding windows as a matrix, row (channel, ky, kx) by column (image, y, x), so that a
    convolution is one product with the weights as a (out channels x row) matrix."""
    import torch.nn.functional as F

    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    windows = F.pad(x, (pw, pw, ph, ph)).unfold(2, kh, sh).unfold(3, kw, sw)  # n c oh ow kh kw
    n, c, oh, ow = windows.shape[:4]
    return windows.permute(1, 4, 5, 0, 2, 3).reshape(c * kh * kw, n * oh * ow)


# Images per product in a forward pass: at most 4 Mi floats (16 MiB) of windows at a time. Each
# output is a chain over one image's window, so splitting the batch changes no bit; evaluating
# 10,000 images at once would otherwise build gigabytes of windows.
WINDOW_FLOATS = 1 << 22
# A training batch's windows, kept from the forward pass for the backward pass's weight gradient
# rather than built twice, by the identity of the input, which each entry
# holds so that no other tensor can take its address meanwhile. A few entries at most: a forward
# pass without a backward one leaves its entries to be pushed out.
_kept_windows: dict[tuple, tuple] = {}
KEPT_WINDOWS = 8


def _identity(x, kernel, stride, padding) -> tuple:
    return x.data_ptr(), x._version, tuple(x.shape), tuple(x.stride()), tuple(kernel), tuple(stride), tuple(padding)


def _column_convolution(x, weight, bias, stride, padding):
    """The convolution as the product weights @ windows: each output a chain over (channel, ky, kx)."""
    import torch

    out_channels, _, kh, kw = weight.shape
    oh, ow = ((size + 2 * pad - k) // s + 1 for size, pad, k, s in zip(x.shape[2:], padding, (kh, kw), stride))
    out = x.new_empty(x.shape[0], out_channels, oh, ow)
    step = max(1, WINDOW_FLOATS // (weight[0].numel() * oh * ow))
    for start in range(0, x.shape[0], step):
        columns = _windows(x[start:start + step], (kh, kw), stride, padding)
        part = weight.reshape(out_channels, -1).mm(columns)
        if bias is not None:
            part += bias[:, None]
        out[start:start + step] = part.view(out_channels, -1, oh, ow).permute(1, 0, 2, 3)
    if 0 < x.shape[0] <= step and weight.requires_grad and torch.is_grad_enabled():  # one product
        while len(_kept_windows) >= KEPT_WINDOWS:
            del _kept_windows[next(iter(_kept_windows))]
        _kept_windows[_identity(x, (kh, kw), stride, padding)] = (x, columns)
    return out


def _column_convolution_backward(grad, x, weight, stride, padding, mask):
    """Gradients of `_column_convolution`: of the weights, grad @ windows.T, a chain over (image,
    y, x); of the input, weights.T @ grad, each window's share then added back into the image
    one kernel position (ky, kx) at a time, in order; of the bias, grad's sums over a column of ones."""
    out_channels, channels, kh, kw = weight.shape
    n, _, oh, ow = grad.shape
    grad_rows = grad.permute(1, 0, 2, 3).reshape(out_channels, -1)
    grad_x = grad_weight = grad_bias = None
    if mask[0]:
        shares = weight.reshape(out_channels, -1).t().mm(grad_rows).view(channels, kh, kw, n, oh, ow)
        (sh, sw), (ph, pw) = stride, padding
        padded = x.new_zeros(channels, n, x.shape[2] + 2 * ph, x.shape[3] + 2 * pw)
        for i in range(kh):
            for j in range(kw):
                padded[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] += shares[:, i, j]
        grad_x = padded[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]].permute(1, 0, 2, 3).contiguous()
    if mask[1]:  # as (windows @ grad.T).T: the same chains, and oneDNN splits this shape over threads
        kept = _kept_windows.pop(_identity(x, (kh, kw), stride, padding), None)
        columns = kept[1] if kept else _windows(x, (kh, kw), stride, padding)
        grad_weight = columns.mm(grad_rows.t()).t().reshape(weight.shape)
    if mask[2]:
        grad_bias = grad_rows.mm(grad_rows.new_ones(grad_rows.shape[1], 1)).view(out_channels)
    return grad_x, grad_weight, grad_bias


def facts(mode: str) -> dict[str, Any]:
    """What the math libraries ran in this process: for logs, never for metrics."""
    import torch

    return {
        "numerics": mode,
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "mkl_cbwr": os.environ.get("MKL_CBWR", "AUTO"),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL"),
        "convolutions": ("sliding windows x oneDNN AVX2 matmul (index-order chains)" if _overrides is not None
                         else "oneDNN" if torch.backends.mkldnn.enabled else "ATen im2col + MKL GEMM"),
        "float32_matmul": "oneDNN AVX2 (index-order chains)" if _overrides is not None else "MKL",
    }
