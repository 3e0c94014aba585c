"""Training speed, side by side in one run: the tutorial's DataLoader pipeline vs mnistpipe's
loop, the latter in both numerics modes (portable, the default, and fast).

All train the same network (params.yaml's model), with the same batch size, optimizer,
learning rate and epochs, on the full 60,000 training images, then evaluate on the
10,000 test images. Each way runs in its own subprocess, so peak RSS and the numerics
settings (fixed when torch loads) are its own. The tutorial is written out here, as the
tutorials write it, with the libraries choosing their code paths; mnistpipe's side is the
library's own `run_training`, whose epochs include a validation pass over 5,000 images.

    python benchmarks/train_speed.py                # 2 rounds of 3 epochs, device from params (auto)
    python benchmarks/train_speed.py --epochs 10 --device cuda

Reads the raw files from data/raw/ (run `dvc repro fetch` first) or MNISTPIPE_MIRROR.
Prints a table and records it in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gzip
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mnistpipe import paths
from mnistpipe.data.prepared import Meta, Split, pixel_stats, read_raw
from mnistpipe.device import choose_device, device_name, make_deterministic, peak_rss_mb, synchronize
from mnistpipe.evaluate import loss_and_accuracy, split_logits
from mnistpipe.models import build_model, model_spec
from mnistpipe.params import load_dataset, load_params
from mnistpipe.train import run_training

import results  # benchmarks/results.py

ROOT = Path(__file__).resolve().parents[1]


def raw_dir() -> Path:
    mirror = os.environ.get("MNISTPIPE_MIRROR")
    if (ROOT / paths.RAW).is_dir():
        return ROOT / paths.RAW
    if mirror and Path(mirror).is_dir():
        return Path(mirror)
    sys.exit("no data: run `dvc repro fetch` or set MNISTPIPE_MIRROR to a directory")


def torchvision_root() -> Path:
    """A temporary directory laid out as torchvision wants it: <root>/MNIST/raw/<uncompressed
    files>. Its MD5s pin other gzip wrappers than our mirror's, hence the decompressed files."""
    root = Path(tempfile.mkdtemp())
    (root / "MNIST/raw").mkdir(parents=True)
    for spec in load_dataset(ROOT / paths.DATASET).files.values():
        data = gzip.decompress((raw_dir() / spec.name).read_bytes())
        (root / "MNIST/raw" / spec.name.removesuffix(".gz")).write_bytes(data)
    return root


def worker_tutorial(params, device, epochs: int) -> dict:
    """The tutorial: torchvision MNIST, ToTensor + Normalize per sample, DataLoader(shuffle)."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    root = torchvision_root()
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    train_set = datasets.MNIST(str(root), train=True, download=False, transform=tf)
    test_set = datasets.MNIST(str(root), train=False, download=False, transform=tf)
    loader = DataLoader(train_set, batch_size=params.train.batch_size, shuffle=True)
    torch.manual_seed(params.seed)
    model = build_model(model_spec(params.model, tuple(train_set.data.shape[1:]), params.data.num_classes))
    model = model.to(device)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=params.train.lr)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            loss.item()  # the tutorial's running loss: one host sync per step
        synchronize(device)
        times.append(time.perf_counter() - t0)
    model.eval()
    correct = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for images, labels in DataLoader(test_set, batch_size=1000):
            correct += (model(images.to(device)).argmax(1).cpu() == labels).sum().item()
    eval_s = time.perf_counter() - t0
    shutil.rmtree(root)
    return {"epoch_s": times, "test_acc": correct / len(test_set), "eval_s": eval_s}


def worker_mnistpipe(params, device, epochs: int) -> dict:
    """mnistpipe's training run, as the train stage makes it (the split normalized once on the
    device, seeded permutation batches, a validation pass after each epoch), on all 60,000
    training images; 5,000 test images stand in for the validation split."""
    make_deterministic(device, params.train.tf32)
    train, test = read_raw(raw_dir(), params)
    mean, std = pixel_stats(train.images)
    meta = Meta(mean, std, params.data.num_classes, tuple(train.images.shape[1:]), {"train": len(train)})
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, epochs=epochs))
    t_start = time.perf_counter()
    result = run_training(params, model_spec(params.model, meta.image_shape, meta.num_classes), meta, train,
                          Split(test.images[:5000], test.labels[:5000]), device, log=lambda line: None)
    total = time.perf_counter() - t_start
    split_logits(result.model, test, mean, std, device, 10000)  # warm-up, so the timing below is steady state
    synchronize(device)
    t0 = time.perf_counter()
    logits = split_logits(result.model, test, mean, std, device, 10000)
    synchronize(device)
    eval_s = time.perf_counter() - t0
    return {"epoch_s": result.seconds_per_epoch, "test_acc": loss_and_accuracy(logits, test.labels.to(device))[1],
            "eval_s": eval_s, "train_total_s": total}


def worker(way: str, epochs: int, device: str) -> dict:
    """One way's run, in a process of its own (results.run_worker), with its peak RSS."""
    params = load_params(ROOT / paths.PARAMS)
    run = worker_tutorial if WAYS[way][0] == "tutorial" else worker_mnistpipe
    return {**run(params, choose_device(device), epochs), "peak_rss_mb": peak_rss_mb()}


WAYS = {"tutorial": ("tutorial", "fast"), "portable": ("mnistpipe", "portable"), "fast": ("mnistpipe", "fast")}


def pooled(rounds: list[dict]) -> dict:
    """One way's rounds as one result: every epoch time, the fastest evaluation and total,
    the largest peak RSS. Seeded runs give one accuracy; a second one would be a finding."""
    accuracies = {r["test_acc"] for r in rounds}
    if len(accuracies) > 1:
        print(f"warning: the rounds' test accuracies differ: {sorted(accuracies)}", file=sys.stderr)
    result = {"epoch_s": [t for r in rounds for t in r["epoch_s"]], "test_acc": min(accuracies),
              "eval_s": min(r["eval_s"] for r in rounds), "peak_rss_mb": max(r["peak_rss_mb"] for r in rounds)}
    if "train_total_s" in rounds[0]:
        result["train_total_s"] = min(r["train_total_s"] for r in rounds)
    return result


def summary(times: list[float]) -> str:
    return f"{statistics.median(times):.3f} ({min(times):.3f}–{max(times):.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="runs of each way, interleaved")
    ap.add_argument("--device", default=None, help="auto|cpu|cuda|mps (default: params.yaml train.device)")
    ap.add_argument("--no-record", action="store_true", help="do not write benchmarks/RESULTS.md")
    args = ap.parse_args()
    params = load_params(ROOT / paths.PARAMS)
    args.device = args.device or params.train.device
    device = choose_device(args.device)
    # Rounds interleave the ways, so a slow spell on this shared machine hits all of them.
    runs: dict[str, list[dict]] = {way: [] for way in WAYS}
    for _ in range(args.rounds):
        for way in WAYS:
            runs[way].append(results.run_worker(__file__, WAYS[way][1], way=way, epochs=args.epochs,
                                                device=args.device))
    res = {way: pooled(r) for way, r in runs.items()}
    median = {way: statistics.median(r["epoch_s"]) for way, r in res.items()}
    ratio = median["tutorial"] / median["portable"]
    cost = median["portable"] / median["fast"]
    prepared = sum(p.stat().st_size for p in (ROOT / paths.PREPARED).glob("*")) / 1e6 \
        if (ROOT / paths.PREPARED).is_dir() else float("nan")
    machine = f"{results.machine()}; {device_name(device)}"
    lines = [
        f"machine: {machine}; torch {torch.__version__}; python {platform.python_version()}",
        f"model {params.model.hidden} batch {params.train.batch_size} {params.train.optimizer} "
        f"lr {params.train.lr}, {args.rounds} rounds of {args.epochs} epochs on 60,000 images",
        f"{'':10s} {'epoch s: median (min–max)':>28s} {'test acc':>9s} {'eval s':>7s} {'peak RSS MB':>12s}",
    ]
    for way, r in res.items():
        lines.append(f"{way:10s} {summary(r['epoch_s']):>28s} {r['test_acc']:9.4f} {r['eval_s']:7.3f} "
                     f"{r['peak_rss_mb']:12.0f}")
    lines.append(f"speed-up, tutorial / portable (median epoch): {ratio:.1f}x; portable costs {cost:.2f}x "
                 f"fast; portable {args.epochs} epochs in {res['portable']['train_total_s']:.2f} s; "
                 f"data/prepared/ {prepared:.1f} MB")
    print("\n".join(lines))
    if not args.no_record:
        record(machine, args, res, ratio, cost, prepared)


def record(machine: str, args, res: dict, ratio: float, cost: float, prepared: float) -> None:
    header = ("| date | machine | torch | epochs | tutorial s/epoch | portable s/epoch | fast s/epoch | "
              "speed-up (tutorial / portable) | portable cost (portable / fast) | "
              "test acc (tut / portable / fast) | eval s (portable) | peak RSS MB (tut / portable) |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    tut, por, fast = res["tutorial"], res["portable"], res["fast"]
    row = (f"| {datetime.date.today()} | {machine} | {torch.__version__} | {args.rounds}×{args.epochs} | "
           f"{summary(tut['epoch_s'])} | {summary(por['epoch_s'])} | {summary(fast['epoch_s'])} | "
           f"{ratio:.1f}x | {cost:.2f}x | {tut['test_acc']:.4f} / {por['test_acc']:.4f} / {fast['test_acc']:.4f} | "
           f"{por['eval_s']:.3f} | {tut['peak_rss_mb']:.0f} / {por['peak_rss_mb']:.0f} |\n")
    results.add_row("train_speed rows: portable and fast", header, row,
                    "## Training speed (`python benchmarks/train_speed.py`)")


if __name__ == "__main__":
    main()
