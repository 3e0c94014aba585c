"""CPU vs GPU: do two GPU runs agree exactly, and how close are GPU and CPU results?

    python benchmarks/device_agreement.py          # needs data/prepared (dvc repro prepare)

Trains params.yaml's model on the CPU once and on CUDA twice (same seed), then reports
test accuracy on each, whether the two CUDA runs gave identical weights, and on how many
test images the same (CUDA-trained) weights predict the same digit on both devices.
Promised (README): accuracy within 0.15 percentage points, predictions agree on >= 99.9%.
Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from mnistpipe.data.prepared import load_meta, load_split, normalize
from mnistpipe.evaluate import loss_and_accuracy, predict_logits
from mnistpipe.models import model_spec
from mnistpipe.params import load_params
from mnistpipe.train import run_training

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
        acc = loss_and_accuracy(predict_logits(result.model, x, 10000), test.labels.to(device))[1]
        runs[name] = (result.model, acc)
        print(f"{name:7s} test accuracy {acc:.4f}  ({seconds:.1f} s incl. start-up)")
    a, b = runs["cuda-1"][0].state_dict(), runs["cuda-2"][0].state_dict()
    print(f"two CUDA runs identical: {all(torch.equal(a[k], b[k]) for k in a)}")
    print(f"CPU vs CUDA accuracy: {100 * (runs['cuda-1'][1] - runs['cpu'][1]):+.2f} pp")
    model = runs["cuda-1"][0]
    gpu = predict_logits(model, normalize(test.images, meta.mean, meta.std, "cuda"), 10000).argmax(1).cpu()
    cpu = predict_logits(model.cpu(), normalize(test.images, meta.mean, meta.std), 10000).argmax(1)
    print(f"same weights, CPU vs CUDA predictions agree on {(gpu == cpu).float().mean().item():.4%} of test images")


if __name__ == "__main__":
    main()
