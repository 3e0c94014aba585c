"""Portable matrix products: each output is a fused multiply-add chain in index order, over
blocks of 1,024 terms, each block's chain added to the sum of the blocks before it.

That order is defined by the math, not by the machine, so a CPU that computes it gives
the same bits as any other. The check runs in a subprocess: numerics.pin must come
before torch loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mnistpipe.numerics import OVERRIDDEN_PREFIXES

# The matrix products of the default MLP's training (784-128-64-10, batch 64, a last batch
# of 24) and evaluation (larger batches), as (M, K, N) of (M x K) @ (K x N); the widest single
# block; the CNNs' first dense layers (32 or 64 channels of 7x7: several blocks, the last one
# partial); a single image (one row) and a single output (one column).
SHAPES = [(64, 784, 128), (128, 64, 784), (64, 128, 64), (64, 64, 128), (64, 64, 10), (10, 64, 64),
          (64, 10, 64), (24, 784, 128), (24, 64, 10), (512, 784, 128), (2048, 64, 10), (64, 1024, 16),
          (16, 1568, 32), (8, 3136, 16), (5, 2100, 10), (1, 784, 128), (64, 784, 1), (1, 64, 1)]
BLOCK = 1024

PROGRAM = """
import json, sys
from mnistpipe.numerics import pin
pin("portable")
import torch
torch.manual_seed(0)
out = []
for m, k, n in json.loads(sys.argv[1]):
    a, b, bias = torch.randn(m, k), torch.randn(k, n) / k ** 0.5, torch.randn(n)
    out.append({"a": a.tolist(), "b": b.tolist(), "bias": bias.tolist(),
                "mm": torch.mm(a, b).tolist(),
                "mm_transposed": torch.mm(b.t(), a.t()).t().tolist(),  # strided operands
                "addmm": torch.addmm(bias, a, b).tolist(),
                "linear": torch.nn.functional.linear(a, b.t(), bias).tolist()})
a64 = torch.randn(5, 7, dtype=torch.float64)
reference = torch.mm(a64, a64.t(), out=torch.empty(5, 5, dtype=torch.float64))  # mm.out: not overridden
extras = {"float64": (torch.mm(a64, a64.t()) - reference).abs().max().item(),
          "empty": list(torch.mm(torch.randn(0, 3), torch.randn(3, 4)).shape),
          "scaled": torch.equal(torch.addmm(torch.ones(2), torch.eye(2), torch.eye(2), beta=0.5, alpha=2),
                                torch.tensor([[2.5, 0.5], [0.5, 2.5]]))}
row, column = torch.randn(1, 300), torch.randn(300, 1)  # broadcast (zero-stride) operands
extras["broadcast"] = {"row": row.tolist(), "column": column.tolist(),
                       "mm": torch.mm(row.expand(3, -1), column.expand(-1, 2)).tolist()}
print(json.dumps({"products": out, "extras": extras}))
"""


def fma_chain(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a @ b) in float32, each output accumulated as fma(a[i,k], b[k,j], acc) for k = 0, 1, ...

    A float32 product is exact in float64, so adding it to the float32 accumulator in
    float64 and rounding once to float32 is the fused multiply-add's single rounding.
    """
    a, b = a.astype(np.float64), b.astype(np.float64)
    acc = np.zeros((a.shape[0], b.shape[1]), np.float32)
    for k in range(a.shape[1]):
        acc = (acc.astype(np.float64) + np.outer(a[:, k], b[k])).astype(np.float32)
    return acc


def blocked_fma_chain(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a @ b) in float32: fma_chain over each block of BLOCK terms, added to the blocks' sum so far."""
    total = fma_chain(a[:, :BLOCK], b[:BLOCK])
    for start in range(BLOCK, a.shape[1], BLOCK):
        total = total + fma_chain(a[:, start:start + BLOCK], b[start:start + BLOCK])  # float32 + float32
    return total


def run_portable(program: str, cases: list) -> dict:
    """The JSON a program prints, run in a subprocess (portable pins numerics before torch loads)
    on `cases`, without the user's library settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(OVERRIDDEN_PREFIXES)}
    result = subprocess.run([sys.executable, "-c", program, json.dumps(cases)], env=env,
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def portable() -> dict:
    """PROGRAM's output: one subprocess for the module."""
    return run_portable(PROGRAM, SHAPES)


def test_portable_products_are_the_index_order_fma_chain(portable):
    for (m, k, n), case in zip(SHAPES, portable["products"]):
        a, b, bias = (np.array(case[key], np.float32) for key in ("a", "b", "bias"))
        expected = blocked_fma_chain(a, b)
        for key in ("mm", "mm_transposed"):
            np.testing.assert_array_equal(np.array(case[key], np.float32), expected, err_msg=f"{key} {(m, k, n)}")
        for key in ("addmm", "linear"):  # the bias is added once, after the chain
            np.testing.assert_array_equal(np.array(case[key], np.float32), expected + bias,
                                          err_msg=f"{key} {(m, k, n)}")


def test_other_products_keep_their_meaning(portable):
    extras = portable["extras"]
    assert extras["float64"] < 1e-12  # other dtypes take ATen's own path
    assert extras["empty"] == [0, 4]
    assert extras["scaled"] is True  # addmm's beta and alpha


def test_broadcast_operands_are_the_chain_too(portable):
    case = portable["extras"]["broadcast"]
    row, column = np.array(case["row"], np.float32), np.array(case["column"], np.float32)
    expected = blocked_fma_chain(np.repeat(row, 3, 0), np.repeat(column, 2, 1))
    np.testing.assert_array_equal(np.array(case["mm"], np.float32), expected)


PIN = """
import json, os
from mnistpipe.numerics import pin
pin("portable")
import torch
print(json.dumps({"env": {k: v for k, v in os.environ.items() if k.startswith(("MKL_", "ONEDNN_", "DNNL_", "OMP_"))},
                  "threads": torch.get_num_threads()}))
"""


@pytest.mark.parametrize("budget", [None, "1"])
def test_portable_replaces_the_users_library_settings_and_keeps_the_thread_budget(budget):
    """The user's MKL_*, ONEDNN_* and DNNL_* variables would change code paths (or, like
    MKL_VERBOSE, flood the log): portable mode clears them and sets its own; a thread
    budget of 1 gives one thread."""
    env = {**os.environ, "MKL_VERBOSE": "1", "MKL_ENABLE_INSTRUCTIONS": "AVX512", "ONEDNN_VERBOSE": "1",
           "DNNL_MAX_CPU_ISA": "AVX512_CORE", "OMP_NUM_THREADS": "7"}
    env.pop("MNISTPIPE_THREADS", None)
    if budget:
        env["MNISTPIPE_THREADS"] = budget
    out = subprocess.run([sys.executable, "-c", PIN], env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    threads = int(budget or 2)
    assert result == {"env": {"MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": str(threads)},
                      "threads": threads}


BROKEN = """
import sys
from mnistpipe import numerics
from mnistpipe.errors import exit_on_user_error
if sys.argv[1] == "no kernel":
    numerics.onednn_linear = lambda: None
else:  # the kernels register, but products do not reach them
    numerics._register_products = lambda lib, linear: (lambda: 0)
exit_on_user_error(numerics.pin)("portable")
print("ran portable")
"""


@pytest.mark.parametrize("broken", ["no kernel", "not routed"])
def test_portable_refuses_to_run_without_its_matmul_kernel(broken):
    """Without oneDNN's linear kernel, or when products do not reach it, a run would silently
    be on MKL's paths: portable mode stops with a message instead."""
    out = subprocess.run([sys.executable, "-c", BROKEN, broken], capture_output=True, text=True)
    assert out.returncode == 2 and "ran portable" not in out.stdout
    assert "error: numerics: portable" in out.stderr and "numerics: fast" in out.stderr
    assert "Traceback" not in out.stderr


# The quick and accurate CNN recipes' convolutions (3x3, padding 1, no bias) on two images:
# (channels in, channels out, image side). The weight gradient sums over 2 x 28 x 28 = 1,568
# terms, more than one block.
CONVOLUTIONS = [(1, 10, 28), (10, 48, 14), (1, 32, 28), (32, 64, 14)]

CONVOLUTION_PROGRAM = """
import json, sys
from mnistpipe.numerics import pin
pin("portable")
import torch
torch.manual_seed(0)
out = []
for c, o, side in json.loads(sys.argv[1]):
    x = torch.randn(2, c, side, side, requires_grad=True)
    w = (torch.randn(o, c, 3, 3) / (3 * c ** 0.5)).requires_grad_()
    y = torch.nn.functional.conv2d(x, w, padding=1)
    grad = torch.randn_like(y)
    y.backward(grad)
    out.append({k: v.tolist() for k, v in dict(x=x, w=w, y=y, grad=grad, grad_x=x.grad, grad_w=w.grad).items()})
x = torch.randn(4, 8, 10, 10).clamp(min=0)  # ReLU'd: many tied zeros in a window
pool, at = torch.nn.functional.max_pool2d_with_indices(x, 2)
own = torch.ops.aten.max_pool2d_with_indices.out(x, [2, 2], [2, 2], [0, 0], [1, 1], False,
                                                 out=x.new_empty(0), indices=x.new_empty(0, dtype=torch.long))
from mnistpipe import numerics
x, w = torch.randn(50, 16, 14, 14), torch.randn(32, 16, 3, 3)
whole = torch.nn.functional.conv2d(x, w, padding=1)
numerics.WINDOW_FLOATS = 7 * 16 * 9 * 14 * 14  # 7 images at a time
chunked = torch.equal(torch.nn.functional.conv2d(x, w, padding=1), whole)
none = torch.zeros(0, 16, 14, 14, requires_grad=True)  # a rank's empty share of a last batch
w.requires_grad_()
torch.nn.functional.conv2d(none, w, padding=1).sum().backward()
empty = [list(none.grad.shape), w.grad.abs().sum().item()]
print(json.dumps({"convolutions": out, "max_pool_as_atens": torch.equal(pool, own[0]) and torch.equal(at, own[1]),
                  "chunked_as_whole": chunked, "empty_batch": empty}))
"""


def windows(x: np.ndarray) -> np.ndarray:
    """The (channel, ky, kx) x (image, y, x) matrix of 3x3 windows of x, zero-padded by 1."""
    n, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    rows = [padded[:, ch, ky:ky + h, kx:kx + w].reshape(-1) for ch in range(c) for ky in range(3) for kx in range(3)]
    return np.stack(rows)


def add_back(shares: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The input gradient from each window position's share (rows as in `windows`): added into the
    zero-padded image one kernel position (ky, kx) at a time, in order, in float32."""
    n, c, h, w = shape
    padded = np.zeros((n, c, h + 2, w + 2), np.float32)
    per_position = shares.reshape(c, 3, 3, n, h, w)
    for ky in range(3):
        for kx in range(3):
            padded[:, :, ky:ky + h, kx:kx + w] += per_position[:, ky, kx].transpose(1, 0, 2, 3)
    return padded[:, :, 1:-1, 1:-1]


@pytest.fixture(scope="module")
def convolutions() -> dict:
    return run_portable(CONVOLUTION_PROGRAM, CONVOLUTIONS)


@pytest.mark.parametrize("index", range(len(CONVOLUTIONS)), ids=[f"{c}->{o} on {s}x{s}" for c, o, s in CONVOLUTIONS])
def test_portable_convolutions_are_products_of_windows(convolutions, index):
    """Forward: weights (out x (channel, ky, kx)) @ windows, each output the blocked chain.
    Backward: the weight gradient grad @ windows.T (a chain over image, y, x); the input's,
    weights.T @ grad added back window position by window position."""
    case = {k: np.array(v, np.float32) for k, v in convolutions["convolutions"][index].items()}
    x, w = case["x"], case["w"]
    o = w.shape[0]
    cols = windows(x)
    grad_rows = case["grad"].transpose(1, 0, 2, 3).reshape(o, -1)
    expected_y = blocked_fma_chain(w.reshape(o, -1), cols).reshape(o, x.shape[0], *x.shape[2:]).transpose(1, 0, 2, 3)
    np.testing.assert_array_equal(case["y"], expected_y)
    np.testing.assert_array_equal(case["grad_w"], blocked_fma_chain(grad_rows, cols.T).reshape(w.shape))
    np.testing.assert_array_equal(case["grad_x"], add_back(blocked_fma_chain(w.reshape(o, -1).T, grad_rows), x.shape))


def test_portable_max_pooling_gives_atens_maxima_and_indices(convolutions):
    assert convolutions["max_pool_as_atens"] is True


def test_a_large_batch_convolves_in_chunks_with_the_same_bits(convolutions):
    assert convolutions["chunked_as_whole"] is True


def test_an_empty_batch_has_empty_and_zero_gradients(convolutions):
    assert convolutions["empty_batch"] == [[0, 16, 14, 14], 0.0]
