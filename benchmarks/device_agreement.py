"""CPU vs GPU: do two GPU runs agree exactly, and how close are GPU and CPU results?

    python benchmarks/device_agreement.py          # needs data/prepared (dvc repro prepare)

Trains params.yaml's model on the CPU once (in portable numerics, as `dvc repro` does) and
on CUDA twice (same seed), then reports test accuracy on each, whether the two CUDA runs
gave identical weights and metrics, and on how many test images the portable CPU model's
weights predict the same digit on the GPU as on the CPU. The CPU-to-GPU tolerance in docs/reproducibility.md
is to come from this script's output. Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from mnistpipe import paths
from mnistpipe.data.prepared import Meta, Split, load_meta, load_split
from mnistpipe.device import make_deterministic
from mnistpipe.evaluate import classification_metrics, loss_and_accuracy, split_logits
from mnistpipe.models import model_spec
from mnistpipe.params import load_params
from mnistpipe.train import run_training

import results  # benchmarks/results.py

ROOT = Path(__file__).resolve().parents[1]


def train_three_times() -> tuple[dict, Meta, Split]:
    """params.yaml's run on the CPU, then twice on CUDA: (model, accuracy, metrics, history) each;
    with the data's constants and the test split."""
    params = load_params(ROOT / paths.PARAMS)
    prepared = ROOT / paths.PREPARED
    meta = load_meta(prepared)
    train, val, test = (load_split(prepared, s) for s in ("train", "val", "test"))
    spec = model_spec(params.model, meta.image_shape, meta.num_classes)
    runs = {}
    for name, device in [("cpu", "cpu"), ("cuda-1", "cuda"), ("cuda-2", "cuda")]:
        restore = make_deterministic(torch.device(device), params.train.tf32)  # as the train stage does
        t0 = time.perf_counter()
        result = run_training(params, spec, meta, train, val, torch.device(device), log=lambda s: None)
        seconds = time.perf_counter() - t0
        restore()
        logits = split_logits(result.model, test, meta.mean, meta.std, device, 10000)
        acc = loss_and_accuracy(logits, test.labels.to(device))[1]
        runs[name] = (result.model, acc, classification_metrics(logits.cpu(), test.labels)[0], result.history)
        print(f"{name:7s} test accuracy {acc:.4f}  ({seconds:.1f} s incl. start-up)", file=sys.stderr)
    return runs, meta, test


def worker() -> dict:
    """The comparison, in a process with portable numerics (the CPU run is the one `dvc repro` makes)."""
    if not torch.cuda.is_available():
        return {"lines": ["no CUDA device here: nothing to compare"]}
    runs, meta, test = train_three_times()
    a, b = runs["cuda-1"][0].state_dict(), runs["cuda-2"][0].state_dict()
    model = runs["cpu"][0]
    cpu = split_logits(model, test, meta.mean, meta.std, "cpu", 10000).argmax(1)
    gpu = split_logits(model, test, meta.mean, meta.std, "cuda", 10000).argmax(1).cpu()
    return {"lines": [
        f"two CUDA runs: identical weights {all(torch.equal(a[k], b[k]) for k in a)}, identical "
        f"metrics and curves {runs['cuda-1'][2:] == runs['cuda-2'][2:]}",
        f"CPU vs CUDA test accuracy: {100 * (runs['cuda-1'][1] - runs['cpu'][1]):+.2f} pp",
        f"the portable CPU model's weights: CPU and CUDA predictions agree on "
        f"{(gpu == cpu).float().mean().item():.4%} of test images (required >= 99.9%)"]}


def main() -> None:
    print("\n".join(results.run_worker(__file__, "portable", show_stderr=True)["lines"]))


if __name__ == "__main__":
    main()
