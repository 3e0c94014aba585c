"""The CNN recipe: training time and test accuracy over seeds, portable beside fast numerics.

Each seed trains in its own process with the numerics mode of params.yaml (portable by
default), on data/prepared (run `dvc repro prepare` first), with params.yaml plus the
recipe's overrides, exactly as `dvc exp run -S ...` with those overrides would. Prints
per seed the training time, test accuracy and peak memory, then the median time, the
mean ± std and the minimum of the accuracy, and whether the recipe reached 99.5%.
The first --fast-seeds seeds also train in `fast` numerics, each right after its portable
run, so that the two modes' times per epoch (and their ratio) come from the same minutes.
The old recipe (the accurate 12-epoch recipe of docs/cnn.md) is timed on its first
--old-epochs epochs and extrapolated.

    python benchmarks/cnn_recipe.py                    # 5 seeds (2 also fast) + the old recipe
    python benchmarks/cnn_recipe.py --seeds 1 --old-epochs 0 --set train.epochs=1   # one epoch each way
    python benchmarks/cnn_recipe.py --seeds 1,2,42 --fast-seeds 0 --old-epochs 0 --set train.lr=0.005
    python benchmarks/cnn_recipe.py --profile 12800    # where one epoch's time goes
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml
from torch.profiler import profile

from mnistpipe import paths
from mnistpipe.data.prepared import Split, load_meta, load_split
from mnistpipe.device import choose_device, make_deterministic
from mnistpipe.evaluate import loss_and_accuracy, split_logits
from mnistpipe.models import model_spec
from mnistpipe.params import Params, load_params, with_overrides
from mnistpipe.train import run_training

import results  # benchmarks/results.py

ROOT = Path(__file__).resolve().parents[1]
RECIPE = {  # docs/cnn.md's quick recipe: dvc exp run -S ... with these
    "model.arch": "cnn", "model.cnn.channels": [10, 48], "model.cnn.fc": 128, "model.cnn.dropout": 0.0,
    "train.epochs": 6, "train.batch_size": 128, "train.lr": 0.01, "train.schedule": "onecycle",
    "train.label_smoothing": 0.1, "train.augment.enabled": True,
}
OLD = {
    "model.arch": "cnn", "model.cnn.channels": [32, 64], "model.cnn.fc": 128, "model.cnn.dropout": 0.25,
    "train.epochs": 12, "train.batch_size": 128, "train.lr": 0.003, "train.schedule": "onecycle",
    "train.augment.enabled": True,
}


def recipe_params(overrides: dict) -> Params:
    """params.yaml with the recipe's `overrides` ({"train.lr": 0.01, ...}), validated."""
    return with_overrides(load_params(ROOT / paths.PARAMS), overrides)


def worker(overrides: dict, seed: int, profile: int = 0) -> dict | None:
    """Train one seed in this process (results.run_worker pinned its numerics); its time and test accuracy.
    profile > 0: one epoch on that many training images under torch.profiler instead,
    printing where the time went (to stderr)."""
    params = recipe_params({**overrides, "seed": seed})
    device = choose_device(params.train.device)
    make_deterministic(device, params.train.tf32)
    prepared = ROOT / paths.PREPARED
    meta = load_meta(prepared)
    train, val = (load_split(prepared, name) for name in ("train", "val"))
    spec = model_spec(params.model, meta.image_shape, meta.num_classes)
    if profile:
        return profile_epoch(params, spec, meta, Split(train.images[:profile], train.labels[:profile]),
                             Split(val.images[:1000], val.labels[:1000]), device)
    t0 = time.perf_counter()
    result = run_training(params, spec, meta, train, val, device, log=lambda line: print(line, file=sys.stderr))
    seconds = time.perf_counter() - t0
    test = load_split(prepared, "test")
    logits = split_logits(result.model, test, meta.mean, meta.std, device, 2000)
    accuracy = loss_and_accuracy(logits, test.labels.to(device))[1]
    return {"seed": seed, "train_s": seconds, "epoch_s": result.seconds_per_epoch, "test_acc": accuracy,
            "epochs": params.train.epochs, "threads": torch.get_num_threads(), "numerics": params.numerics,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def profile_epoch(params, spec, meta, train, val, device) -> None:
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, epochs=1))
    with profile() as prof:
        run_training(params, spec, meta, train, val, device, log=lambda line: None)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), file=sys.stderr)


def run(overrides: dict, seed: int, profile: int = 0) -> dict | None:
    """`worker` in a process of its own (its numerics pinned before torch loads); the profile
    goes to this process's stderr, a training run's epoch lines do not."""
    return results.run_worker(__file__, recipe_params(overrides).numerics, show_stderr=bool(profile),
                              overrides=overrides, seed=seed, profile=profile)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="5", help="N: seeds 1..N; or a list, e.g. 1,2,42")
    ap.add_argument("--fast-seeds", type=int, default=2, help="how many of the seeds also train in fast numerics")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change the recipe, e.g. train.epochs=10 (YAML values)")
    ap.add_argument("--old-epochs", type=int, default=2, help="epochs of the old recipe to time (0: skip)")
    ap.add_argument("--record", action="store_true", help="add a row to benchmarks/RESULTS.md")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="instead: profile one epoch of the recipe on N training images (torch.profiler)")
    args = ap.parse_args()
    recipe = {**RECIPE, **{k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}}
    if args.profile:
        run(recipe, 1, args.profile)
        return
    seeds = [int(s) for s in args.seeds.split(",")] if "," in args.seeds else range(1, int(args.seeds) + 1)
    runs, fast = train_seeds(recipe, list(seeds), args.fast_seeds)
    summary = summarize(runs, fast)
    print(summary.text)
    old_line = ""
    if args.old_epochs:
        old = run({**OLD, "train.epochs": args.old_epochs}, 1)  # its epochs all take about as long
        per_epoch, epochs = statistics.median(old["epoch_s"]), OLD["train.epochs"]
        old_line = f"{per_epoch:.1f} s/epoch x {epochs} = {epochs * per_epoch:.0f} s (timed {args.old_epochs} epochs)"
        print(f"old recipe ([32, 64] fc128, batch 128, {epochs} epochs): {old_line}")
    if args.record:
        record(recipe, runs, summary, old_line)


def train_seeds(recipe: dict, seeds: list[int], fast_seeds: int) -> tuple[list[dict], list[dict]]:
    """Each seed in the recipe's numerics, the first `fast_seeds` of them then again in fast."""
    runs, fast = [], []
    for i, seed in enumerate(seeds):
        runs.append(run(recipe, seed))
        print(describe(runs[-1]), flush=True)
        if i < fast_seeds:
            fast.append(run({**recipe, "numerics": "fast"}, seed))
            print(describe(fast[-1]), flush=True)
    return runs, fast


def describe(r: dict) -> str:
    return (f"seed {r['seed']} ({r['numerics']}): {r['train_s']:.1f} s ({statistics.median(r['epoch_s']):.1f} s/epoch, "
            f"{r['epochs']} epochs, {r['threads']} threads), test accuracy {r['test_acc']:.4f}, "
            f"peak memory {r['peak_rss_mb']:.0f} MB")


@dataclasses.dataclass(frozen=True)
class Summary:
    text: str
    median_s: float
    spread: str  # mean ± std of the test accuracy
    low: float  # its minimum
    epoch_s: float  # median seconds per epoch, recipe's numerics
    fast_epoch_s: float | None  # the same in fast numerics
    ratio: float | None  # recipe's numerics / fast, per epoch, over the seeds that ran both ways
    peak_rss_mb: float


def summarize(runs: list[dict], fast: list[dict]) -> Summary:
    accs = [r["test_acc"] for r in runs]
    median_s = statistics.median(r["train_s"] for r in runs)
    spread = f"{statistics.mean(accs):.4f} ± {statistics.stdev(accs):.4f}" if len(accs) > 1 else f"{accs[0]:.4f}"
    reached = statistics.mean(accs) >= 0.995
    text = (f"recipe: median training {median_s:.1f} s; test accuracy {spread} (min {min(accs):.4f}); mean "
            + (f"reached 99.5% in {median_s:.1f} s (median)" if reached else "did not reach 99.5%"))
    epoch_s = statistics.median(s for r in runs for s in r["epoch_s"])
    fast_epoch_s = statistics.median(s for r in fast for s in r["epoch_s"]) if fast else None
    peak = max(r["peak_rss_mb"] for r in runs)
    text += f"\nper epoch: {runs[0]['numerics']} {epoch_s:.2f} s (median of {sum(len(r['epoch_s']) for r in runs)})"
    ratio = None
    if fast_epoch_s:
        same = statistics.median(s for r in runs[:len(fast)] for s in r["epoch_s"])  # the seeds run both ways
        ratio = same / fast_epoch_s
        text += f"; on the same seeds {same:.2f} s against fast {fast_epoch_s:.2f} s: {ratio:.2f}x"
    text += f"; peak memory {peak:.0f} MB" + (f" (fast {max(r['peak_rss_mb'] for r in fast):.0f} MB)" if fast else "")
    return Summary(text, median_s, spread, min(accs), epoch_s, fast_epoch_s, ratio, peak)


def record(recipe: dict, runs: list[dict], summary: Summary, old_line: str) -> None:
    header = ("| date | machine | numerics, threads | recipe | seeds | median training s | s/epoch | fast s/epoch "
              "(ratio) | peak memory MB | test accuracy mean ± std (min) | old recipe |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|\n")
    changes = ", ".join(f"{k}={v}" for k, v in recipe.items())
    fast = f"{summary.fast_epoch_s:.2f} ({summary.ratio:.2f}x)" if summary.ratio else "-"
    row = (f"| {datetime.date.today()} | {results.machine()} | {runs[0]['numerics']}, {runs[0]['threads']} | "
           f"{changes} | {len(runs)} | {summary.median_s:.1f} | {summary.epoch_s:.2f} | {fast} | "
           f"{summary.peak_rss_mb:.0f} | {summary.spread} ({summary.low:.4f}) | {old_line or '-'} |\n")
    results.add_row("cnn_recipe rows beside fast", header, row,
                    "## CNN recipe, portable beside fast (`python benchmarks/cnn_recipe.py --record`)")


if __name__ == "__main__":
    main()
