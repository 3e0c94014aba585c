"""A committed tiny project with a finished 2x2 queued sweep, shared by test_best.py and
test_sweep.py: the trainings run once per test session, not once per file.

The baseline learns almost nothing (lr 1e-5, one epoch), so the sweep's best run is far
beyond noise from it; an extra training seed gives every run a seed spread (seeds.json).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from mnistpipe.evaluate import HEADLINE
from mnistpipe.experiments import Baseline, read_show, with_recorded

from dvc_helpers import commit_all, dvc, make_repo

SWEEP = ["-S", "train.lr=0.001,0.01", "-S", "model.hidden=[8],[16]"]
_built: dict[str, tuple[Path, dict]] = {}


def sweep_project(tmp_path_factory) -> tuple[Path, dict]:
    """(repo, env) of the committed baseline with its four finished experiments. Tests must not
    change it: copy it (dvc_helpers.copy_repo) to apply an experiment."""
    if "repo" not in _built:
        base = tmp_path_factory.mktemp("sweep")
        repo, env = make_repo(base, train={"epochs": 1, "lr": 1e-5}, model={"hidden": [8]},
                              multiseed={"seeds": [1]})
        dvc(repo, env, "repro")
        commit_all(repo, env, "baseline")
        dvc(repo, env, "exp", "run", "--queue", *SWEEP)
        # Not through dvc(): a worker that stays alive idle would hold its captured pipes open.
        subprocess.run([sys.executable, "-m", "dvc", "queue", "start", "-j", "2"], cwd=repo, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        try:
            wait_for_queue(repo, env)
        finally:
            dvc(repo, env, "queue", "stop")  # idle workers exit: nothing outlives the tests
        _built["repo"] = (repo, env)
    return _built["repo"]


def wait_for_queue(repo: Path, env: dict, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = dvc(repo, env, "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            assert "Failed" not in status, status
            return
        time.sleep(1)
    raise AssertionError(f"the queued sweep did not finish in {timeout} s:\n{status}")


def shown(repo: Path, env: dict) -> list[dict]:
    return json.loads(dvc(repo, env, "exp", "show", "--json").stdout)


def raw_runs(document: list[dict]) -> dict[str, dict]:
    """name -> lr, hidden, accuracy, seed std, read straight from the JSON (not through the
    code under test) for every finished experiment of the current commit."""
    rows = {}
    for baseline in document:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                params = rev["data"]["params"]["params.yaml"]["data"]
                metrics = rev["data"]["metrics"]
                rows[rev["name"]] = {"lr": params["train"]["lr"], "hidden": params["model"]["hidden"],
                                     "accuracy": metrics["metrics/eval.json"]["data"]["accuracy"],
                                     "std": metrics["metrics/seeds.json"]["data"]["test_acc_std"]}
    return rows


# ---------------------------------------------------------------- canned documents (fast tests)

def entry(name: str | None, rev: str, lr: float = 0.001, hidden=(128, 64), accuracy: float | None = 0.97,
          std: float | None = None, **eval_metrics) -> dict:
    """One run as DVC 3.67's `dvc exp show --json` lists it (the parts mnistpipe reads). Its
    metrics/eval_detail.json, which is in the run's commit and not in DVC's JSON, rides along
    under "detail" (see `baselines`); evaluate's other numbers go where evaluate writes them."""
    params = {"seed": 42, "model": {"arch": "mlp", "hidden": list(hidden)}, "train": {"lr": lr, "epochs": 10}}
    metrics, detail = {}, None
    if accuracy is not None:
        headline = {k: v for k, v in eval_metrics.items() if k in HEADLINE}
        metrics["metrics/eval.json"] = {"data": {"accuracy": accuracy, **headline}}
        detail = {"accuracy_ci95_low": accuracy - 0.003, "accuracy_ci95_high": accuracy + 0.003,
                  **{k: v for k, v in eval_metrics.items() if k not in HEADLINE}}
        seeds = {"n": 1} if std is None else {"n": 3, "test_acc_mean": accuracy, "test_acc_std": std}
        metrics["metrics/seeds.json"] = {"data": seeds}
    return {"rev": rev, "name": name, "error": None, "experiments": None,
            "data": {"rev": rev, "timestamp": None, "params": {"params.yaml": {"data": params}},
                     "metrics": metrics, "deps": {}, "outs": {}, "meta": {}}, "detail": detail}


def document(baseline: dict, experiments: list[dict]) -> list[dict]:
    """[workspace, baseline with its experiments], the shape `dvc exp show --json` prints."""
    base = {**baseline, "experiments": [{"revs": [exp], "executor": None, "name": exp["name"]}
                                        for exp in experiments]}
    return [{**baseline, "rev": "workspace", "name": None}, base]


def baselines(baseline: dict, experiments: list[dict]) -> list[Baseline]:
    """What experiments.load_baselines gives for `document(baseline, experiments)`: each run
    with its metrics/eval_detail.json, here from the entries instead of git."""
    details = {e["rev"]: e["detail"] for e in [baseline, *experiments]}

    def read(rev: str, path: str) -> dict | None:
        return details.get(rev) if path == "metrics/eval_detail.json" else None
    return with_recorded(read_show(document(baseline, experiments)), read)
