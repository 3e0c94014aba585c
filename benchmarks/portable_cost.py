"""Where the cost of portable numerics goes: one training step of the default MLP, four ways.

    fast               the libraries choose (on an AVX-512 CPU: MKL's AVX-512 matrix products)
    + python kernel    fast, but every float32 mm/addmm goes through a Python kernel, back to MKL
    + oneDNN           fast, but every mm/addmm goes to oneDNN's matmul, its ISA not capped
    portable           the default: oneDNN capped at AVX2, ATen's AVX2 kernels, 2 threads

Each step adds one thing to the one before, so the differences between rows are the costs
of the Python kernel, of oneDNN's per-call overhead (against MKL), and of AVX2 instead of
AVX-512. Each way runs in its own subprocess (the libraries read their settings when torch
loads); rounds interleave the ways, so a slow spell on a shared machine hits them all.
Random data of MNIST's shape: the timing does not depend on the pixels.

    python benchmarks/portable_cost.py --rounds 3
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import statistics
from pathlib import Path

import torch

from mnistpipe import numerics, paths
from mnistpipe.data.prepared import Meta, Split
from mnistpipe.device import make_deterministic
from mnistpipe.models import model_spec
from mnistpipe.params import load_params
from mnistpipe.train import run_training

import results  # benchmarks/results.py

WAYS = ["fast", "+ python kernel", "+ oneDNN", "portable"]
ROOT = Path(__file__).resolve().parents[1]
N_TRAIN = 60_000


def route_to_mkl_through_python() -> object:
    """The Python kernel of numerics' routing, calling ATen's own (MKL) product: its cost alone."""
    lib = torch.library.Library("aten", "IMPL")
    lib.impl("mm", lambda a, b: torch.mm(a, b, out=a.new_empty(a.shape[0], b.shape[1])), "CPU")
    lib.impl("addmm", lambda bias, a, b, *, beta=1, alpha=1: torch.addmm(
        bias, a, b, beta=beta, alpha=alpha, out=a.new_empty(a.shape[0], b.shape[1])), "CPU")
    return lib  # the registration lasts as long as this object


def worker(way: str, epochs: int) -> dict:
    """Microseconds per step of `epochs` epochs of the library's training run, after one more
    epoch to warm up; random images, and a validation split too small to matter."""
    _routing = route_to_mkl_through_python() if way == "+ python kernel" else None  # kept while it runs
    if way == "+ oneDNN":
        numerics.install_portable_kernels()
    make_deterministic(torch.device("cpu"))
    params = load_params(ROOT / paths.PARAMS)
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, epochs=epochs + 1))
    generator = torch.Generator().manual_seed(0)
    train = Split(torch.randint(0, 256, (N_TRAIN, 28, 28), dtype=torch.uint8, generator=generator),
                  torch.randint(0, 10, (N_TRAIN,), generator=generator))
    meta = Meta(0.5, 0.25, 10, (28, 28), {"train": N_TRAIN})
    result = run_training(params, model_spec(params.model, meta.image_shape, meta.num_classes), meta, train,
                          Split(train.images[:64], train.labels[:64]), torch.device("cpu"), log=lambda line: None)
    steps = -(-N_TRAIN // params.train.batch_size)
    return {"us_per_step": [s / steps * 1e6 for s in result.seconds_per_epoch[1:]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-record", action="store_true", help="do not write benchmarks/RESULTS.md")
    args = ap.parse_args()
    steps: dict[str, list[float]] = {way: [] for way in WAYS}
    for _ in range(args.rounds):
        for way in WAYS:
            steps[way] += results.run_worker(__file__, "portable" if way == "portable" else "fast",
                                             way=way, epochs=args.epochs)["us_per_step"]
    median = {way: statistics.median(t) for way, t in steps.items()}
    machine = results.machine()
    print(f"{machine}; torch {torch.__version__}; {args.rounds} rounds of {args.epochs} epochs")
    previous = None
    for way in WAYS:
        added = "" if previous is None else f"{median[way] - median[previous]:+6.0f} µs"
        print(f"{way:16s} {median[way]:6.0f} µs/step ({min(steps[way]):.0f}–{max(steps[way]):.0f}) {added}")
        previous = way
    cost = median["portable"] / median["fast"]
    print(f"portable / fast: {cost:.2f}x")
    if not args.no_record:
        header = ("| date | machine | torch | rounds × epochs | fast µs/step | + python kernel | + oneDNN | "
                  "portable | portable / fast |\n|---|---|---|---|---|---|---|---|---|\n")
        cells = " | ".join(f"{median[w]:.0f}" for w in WAYS)
        row = (f"| {datetime.date.today()} | {machine} | {torch.__version__} | "
               f"{args.rounds}×{args.epochs} | {cells} | {cost:.2f}x |\n")
        results.add_row("portable_cost rows", header, row,
                        "## Where portable's cost goes (`python benchmarks/portable_cost.py`)\n\n"
                        "Microseconds per training step of the default MLP (batch 64, random data of "
                        "MNIST's shape), median over the rounds; each column adds one thing to the "
                        "one before: a Python kernel for every matrix product, oneDNN instead of MKL, "
                        "then the rest of portable (AVX2 cap, ATen AVX2).")


if __name__ == "__main__":
    main()
