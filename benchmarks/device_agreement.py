"""CPU vs GPU: do two GPU runs agree exactly, and how close are GPU and CPU results?

    python benchmarks/device_agreement.py          # needs data/prepared (dvc repro prepare)

Trains params.yaml's model on the CPU once (in portable numerics, as `dvc repro` does) and
on CUDA twice (same seed), then reports test accuracy on each, whether the two CUDA runs
gave identical weights and metrics, and on how many test images the portable CPU model's
weights predict the same digit on the GPU as on the CPU. The CPU-to-GPU tolerance in docs/reproducibility.md
is to come from this script's output. Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import time
from pathlib import Path

from mnistpipe.numerics import pin

pin("portable")  # before torch loads: the CPU run must be the one `dvc repro` makes

import torch  # noqa: E402

from mnistpipe.data.prepared import load_meta, load_split, normalize  # noqa: E402
from mnistpipe.evaluate import classification_metrics, loss_and_accuracy, predict_logits  # noqa: E402
from mnistpipe.models import model_spec  # noqa: E402
from mnistpipe.params import load_params  # noqa: E402
from mnistpipe.train import run_training  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PREPARED = ROOT / "data/prepared"


def main() -> None:
    if not torch.cuda.is_available():
        print("no CUDA device here: nothing to compare")
        return
    params = load_params(ROOT / "params.yaml")
    meta = load_meta(PREPARED)
    train, val, test = (load_split(PREPARED, s) for s in ("train", "val", "test"))
    spec = model_spec(params.model, meta.image_shape, meta.num_classes)
    runs = {}
    for name, device in [("cpu", "cpu"), ("cuda-1", "cuda"), ("cuda-2", "cuda")]:
        t0 = time.perf_counter()
        result = run_training(params, spec, meta, train, val, torch.device(device), log=lambda s: None)
        seconds = time.perf_counter() - t0
        x = normalize(test.images, meta.mean, meta.std, device)
        logits = predict_logits(result.model, x, 10000)
        acc = loss_and_accuracy(logits, test.labels.to(device))[1]
        runs[name] = (result.model, acc, classification_metrics(logits, test.labels)[0], result.history)
        print(f"{name:7s} test accuracy {acc:.4f}  ({seconds:.1f} s incl. start-up)")
    a, b = runs["cuda-1"][0].state_dict(), runs["cuda-2"][0].state_dict()
    print(f"two CUDA runs: identical weights {all(torch.equal(a[k], b[k]) for k in a)}, identical "
          f"metrics and curves {runs['cuda-1'][2:] == runs['cuda-2'][2:]}")
    print(f"CPU vs CUDA test accuracy: {100 * (runs['cuda-1'][1] - runs['cpu'][1]):+.2f} pp")
    model = runs["cpu"][0]
    cpu = predict_logits(model, normalize(test.images, meta.mean, meta.std), 10000).argmax(1)
    gpu = predict_logits(model.cuda(), normalize(test.images, meta.mean, meta.std, "cuda"), 10000).argmax(1).cpu()
    print(f"the portable CPU model's weights: CPU and CUDA predictions agree on "
          f"{(gpu == cpu).float().mean().item():.4%} of test images (required >= 99.9%)")


if __name__ == "__main__":
    main()
