"""A queued sweep with `dvc queue start -j 1` against `-j 2`: wall time, and identical results.

Clones this repository (HEAD) into a temporary directory, fetches and prepares the data
there, then queues the same sweep twice: once run by one worker, once by --jobs workers
that each get cores / jobs threads (`MNISTPIPE_THREADS`, so they do not oversubscribe
the cores). Prints the wall time of each and checks that every experiment's metrics are
byte-identical between the two. Needs the MNIST files: MNISTPIPE_MIRROR or the network.

    MNISTPIPE_MIRROR=../shared/mnist python benchmarks/queue_sweep.py --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mnistpipe import paths
from mnistpipe.machine import share_of_cores
from mnistpipe.numerics import BUDGET_ENV

ROOT = Path(__file__).resolve().parents[1]
DVC = [sys.executable, "-m", "dvc"]
GIT_ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid"}


def sh(*cmd: str, cwd: Path, env: dict) -> str:
    return subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def wait_for_experiments(repo: Path, env: dict, names: set[str]) -> None:
    """Wait until every experiment in `names` has its git ref.

    A finished experiment leaves a ref under refs/exps, which `git for-each-ref` reads in
    milliseconds; `dvc queue status` starts a Python process that took 1-2 s of CPU, and
    polling it every second weighed on the very workers being timed. So it runs only every
    15 s, to notice a failed experiment (which leaves no ref)."""
    def finished() -> bool:
        refs = sh("git", "for-each-ref", "--format=%(refname)", "refs/exps", cwd=repo, env=env)
        return names <= {ref.rsplit("/", 1)[-1] for ref in refs.split()}

    last_status = time.perf_counter()
    while not finished():
        if time.perf_counter() - last_status > 15:
            status = sh(*DVC, "queue", "status", cwd=repo, env=env)
            stopped = "Failed" in status or ("Queued" not in status and "Running" not in status)
            if stopped and not finished():  # finished(): it may have ended since the refs were read
                sys.exit(f"the queue stopped before every experiment finished:\n{status}")
            last_status = time.perf_counter()
        time.sleep(0.2)


def sweep(repo: Path, env: dict, lrs: list[str], epochs: int, jobs: int) -> tuple[float, dict[str, str]]:
    """Queue one experiment per lr, run the queue with `jobs` workers; (seconds, lr -> eval.json)."""
    names = {f"lr{lr}-j{jobs}": lr for lr in lrs}
    for name, lr in names.items():
        sh(*DVC, "exp", "run", "--queue", "-n", name, "-S", f"train.lr={lr}",
           "-S", f"train.epochs={epochs}", cwd=repo, env=env)
    budget = {**env, BUDGET_ENV: str(share_of_cores(jobs))}
    t0 = time.perf_counter()
    sh(*DVC, "queue", "start", "-j", str(jobs), cwd=repo, env=budget)
    wait_for_experiments(repo, env, set(names))
    seconds = time.perf_counter() - t0
    shown = json.loads(sh(*DVC, "exp", "show", "--json", cwd=repo, env=env))
    metrics = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                if rev.get("name") in names:
                    data = rev["data"]["metrics"][str(paths.EVAL_METRICS)]["data"]
                    metrics[names[rev["name"]]] = json.dumps(data, sort_keys=True)
    return seconds, metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--lrs", default="0.0003,0.001,0.002,0.003", help="one experiment per value")
    args = ap.parse_args()
    lrs = args.lrs.split(",")
    env = {**os.environ, **GIT_ENV}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        sh("git", "clone", "-q", str(ROOT), str(repo), cwd=Path(tmp), env=env)
        sh(*DVC, "repro", "prepare", cwd=repo, env=env)
        one = sweep(repo, env, lrs, args.epochs, 1)
        many = sweep(repo, env, lrs, args.epochs, args.jobs)
    same = one[1] == many[1] and len(one[1]) == len(lrs)
    print(f"{len(lrs)} experiments of {args.epochs} epochs on {os.cpu_count()} cores")
    print(f"-j 1: {one[0]:.1f} s; -j {args.jobs} ({share_of_cores(args.jobs)} threads each): "
          f"{many[0]:.1f} s; ratio {one[0] / many[0]:.2f}x")
    print(f"metrics identical between the two: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
