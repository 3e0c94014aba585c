"""The DVC workflows a team relies on, each run for real in a temporary git repository:
queued experiment sweeps, applying/branching an experiment, remote push/pull, fresh clones."""

from __future__ import annotations

import json
import sys
import time

import pytest

from dvc_helpers import commit_all, dvc, make_repo, ran_stages, run

pytestmark = pytest.mark.slow
KEEP = "Experiment|train.lr|model.hidden|accuracy|macro_f1"  # docs/experiments.md's `dvc exp show --keep`


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A committed project after one `dvc repro`, with a local-directory DVC remote."""
    base = tmp_path_factory.mktemp("workflows")
    repo, env = make_repo(base, train={"epochs": 2})
    dvc(repo, env, "remote", "add", "-d", "storage", str(base / "remote"))
    dvc(repo, env, "repro")
    commit_all(repo, env, "pipeline")
    return repo, env, base


def exp_rows(repo, env) -> dict[str, dict]:
    """name -> {params, metrics} for every experiment of the workspace's baseline."""
    shown = json.loads(dvc(repo, env, "exp", "show", "--json").stdout)
    rows = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                rows[rev.get("name") or data["rev"]] = {
                    "lr": data["params"]["params.yaml"]["data"]["train"]["lr"],
                    "accuracy": data["metrics"]["metrics/eval.json"]["data"]["accuracy"],
                }
    return rows


def test_queued_sweep_runs_and_exp_show_lists_each_with_accuracy(project):
    repo, env, _ = project
    dvc(repo, env, "exp", "run", "--queue", "-S", "train.lr=0.0003,0.003,0.01")
    dvc(repo, env, "queue", "start")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = dvc(repo, env, "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    assert "Failed" not in status, status
    rows = exp_rows(repo, env)
    assert sorted(r["lr"] for r in rows.values()) == [0.0003, 0.003, 0.01]
    assert all(0 <= r["accuracy"] <= 1 for r in rows.values())

    # docs/experiments.md's narrow view fits a 120-column terminal.
    narrow = dvc(repo, env, "exp", "show", "--drop", ".*", "--keep", KEEP).stdout
    assert "accuracy" in narrow and max(map(len, narrow.splitlines())) <= 120, narrow

    # Two queued experiments compare by name.
    first, second = sorted(rows, key=lambda name: rows[name]["lr"])[:2]
    compared = json.loads(run([sys.executable, "-m", "mnistpipe.cli", "compare", first, second, "--json"],
                              repo, env).stdout)
    for name in (first, second):
        assert compared["accuracy"][name]["accuracy"] == pytest.approx(rows[name]["accuracy"], abs=1e-6)

    # Apply the best experiment, then keep it as a branch.
    best = max(rows, key=lambda name: rows[name]["accuracy"])
    dvc(repo, env, "exp", "apply", best)
    applied = json.loads((repo / "metrics/eval.json").read_text())["accuracy"]
    assert applied == rows[best]["accuracy"]
    dvc(repo, env, "exp", "branch", best, "best-lr")
    assert "best-lr" in run(["git", "branch"], repo, env).stdout
    run(["git", "checkout", "--", "."], repo, env)  # back to the committed baseline
    dvc(repo, env, "checkout", "--force")


def test_push_then_fresh_clone_pull_makes_repro_a_no_op(project, tmp_path):
    repo, env, _ = project
    dvc(repo, env, "push")
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    assert not (clone / "models/model.pt").exists()
    # A fresh clone: only missing outputs (and deps that are missing outputs), never a
    # modified file or changed params: dvc.lock is in step with the code.
    status = dvc(clone, env, "status").stdout
    assert "deleted" in status
    assert "modified:" not in status and "changed params" not in status and "new:" not in status
    dvc(clone, env, "pull")
    assert (clone / "models/model.pt").is_file() and (clone / "data/prepared/train.pt").is_file()
    assert ran_stages(dvc(clone, env, "repro").stdout) == []
    assert "up to date" in dvc(clone, env, "status").stdout
