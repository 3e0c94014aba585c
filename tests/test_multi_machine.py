"""Many machines, one experiment table, DVC's own way.

Two clones stand in for two machines and a third for a teammate; a bare git repository
is the shared `origin` and a local directory is the shared DVC remote. Each machine runs
its own `dvc exp run` and `dvc exp push origin`, which puts the experiment's git ref on
origin and its cached outputs (the model) in the DVC remote. Then, with both machines
gone, a fresh clone runs `dvc exp pull origin`, sees both experiments in `dvc exp show`,
and `dvc exp apply` + `dvc pull` give it machine A's model, byte for byte.
With `exp.auto_push true` a finished experiment pushes itself, no `dvc exp push` needed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from dvc_helpers import commit_all, dvc, make_repo, run

pytestmark = pytest.mark.slow
MACHINES = {"machine-a": 0.003, "machine-b": 0.0003}  # each runs a different train.lr


def clone(origin: Path, dest: Path, env: dict) -> tuple[Path, dict]:
    """`git clone origin`; the clone runs its own code, as if `pip install -e .` there."""
    run(["git", "clone", "-q", str(origin), str(dest)], dest.parent, env)
    return dest, {**env, "PYTHONPATH": str(dest / "src")}


def model_md5(repo: Path) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    (out,) = [o for o in lock["stages"]["train"]["outs"] if o["path"] == "models/model.pt"]
    return out["md5"]


def in_dvc_remote(remote: Path, md5: str) -> bool:
    return (remote / "files" / "md5" / md5[:2] / md5[2:]).is_file()


def exp_table(repo: Path, env: dict) -> dict[str, dict]:
    """Experiment name -> its train.lr and test metrics, from `dvc exp show --json`."""
    table = {}
    for baseline in json.loads(dvc(repo, env, "exp", "show", "--json").stdout):
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                table[rev["name"]] = {"lr": data["params"]["params.yaml"]["data"]["train"]["lr"],
                                      **data["metrics"]["metrics/eval.json"]["data"]}
    return table


def share_project(tmp_path: Path) -> tuple[Path, Path, dict]:
    """The project as a team shares it: git on a bare `origin`, the baseline's data and model
    in the default DVC remote (a directory). Returns origin, the remote and the environment."""
    origin, remote = tmp_path / "origin.git", tmp_path / "dvc-remote"
    seed, env = make_repo(tmp_path, train={"epochs": 1})
    dvc(seed, env, "remote", "add", "-d", "storage", str(remote))
    dvc(seed, env, "repro")
    commit_all(seed, env, "baseline")
    dvc(seed, env, "push")
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path, env)
    run(["git", "push", "-q", str(origin), "main"], seed, env)
    return origin, remote, env


def test_two_machines_push_experiments_and_a_third_clone_sees_both(tmp_path):
    origin, remote, env = share_project(tmp_path)

    # Each machine: clone, pull the baseline's data, run one experiment, push it.
    results = {}
    for name, lr in MACHINES.items():
        machine, menv = clone(origin, tmp_path / name, env)
        dvc(machine, menv, "pull")
        dvc(machine, menv, "exp", "run", "-n", name, "-S", f"train.lr={lr}")
        md5 = model_md5(machine)
        assert not in_dvc_remote(remote, md5), "a new experiment's model is only on its machine"
        dvc(machine, menv, "exp", "push", "origin", name)
        assert in_dvc_remote(remote, md5), "`dvc exp push` uploads the experiment's model to the DVC remote"
        results[name] = {"lr": lr, "model": (machine / "models/model.pt").read_bytes(),
                         **json.loads((machine / "metrics/eval.json").read_text())}
    assert results["machine-a"]["model"] != results["machine-b"]["model"]
    for name in MACHINES:
        shutil.rmtree(tmp_path / name)  # the machines are gone; only origin and the remote remain

    # A teammate's fresh clone pulls every experiment and sees one table.
    third, tenv = clone(origin, tmp_path / "third", env)
    assert exp_table(third, tenv) == {}
    dvc(third, tenv, "exp", "pull", "origin")
    table = exp_table(third, tenv)
    assert sorted(table) == sorted(MACHINES)
    for name, row in table.items():
        assert row["lr"] == results[name]["lr"]
        assert (row["accuracy"], row["macro_f1"]) == (results[name]["accuracy"], results[name]["macro_f1"])

    # Applying machine A's experiment gives machine A's params and model.
    dvc(third, tenv, "exp", "apply", "machine-a")
    dvc(third, tenv, "pull")
    assert yaml.safe_load((third / "params.yaml").read_text())["train"]["lr"] == MACHINES["machine-a"]
    assert (third / "models/model.pt").read_bytes() == results["machine-a"]["model"]
    assert "up to date" in dvc(third, tenv, "status").stdout


def test_with_auto_push_a_finished_experiment_reaches_origin_without_exp_push(tmp_path):
    origin, remote, env = share_project(tmp_path)
    machine, menv = clone(origin, tmp_path / "machine-a", env)
    dvc(machine, menv, "config", "--local", "exp.auto_push", "true")  # exp.git_remote: origin by default
    dvc(machine, menv, "pull")
    out = dvc(machine, menv, "exp", "run", "-n", "auto-a", "-S", "train.lr=0.003").stdout
    assert "Pushing experiment to 'origin'" in out
    # auto_push only warns when the push fails, so look on origin and in the remote themselves.
    assert "refs/exps/" in run(["git", "ls-remote", str(origin)], tmp_path, env).stdout
    assert in_dvc_remote(remote, model_md5(machine))
    metrics = json.loads((machine / "metrics/eval.json").read_text())

    other, oenv = clone(origin, tmp_path / "machine-b", env)
    assert "auto-a" in dvc(other, oenv, "exp", "list", "origin").stdout
    dvc(other, oenv, "exp", "pull", "origin", "auto-a")
    row = exp_table(other, oenv)["auto-a"]
    assert row["lr"] == 0.003
    assert (row["accuracy"], row["macro_f1"]) == (metrics["accuracy"], metrics["macro_f1"])
