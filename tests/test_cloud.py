"""The SkyPilot task file, cloud/sky-exp.yaml, checked without a cloud.

SkyPilot's own parser reads it (skipped where skypilot is not installed: it is the optional
`cloud` extra, not part of `dev`). The task's `run` script, the part that does the work on
the VM, runs here in bash against a bare git `origin` and a directory DVC remote: its
experiments must reach origin, so that a teammate's clone lists and pulls them.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from test_multi_machine import clone, exp_table, in_dvc_remote, model_md5, share_project

from conftest import REPO
from dvc_helpers import dvc

TASK = REPO / "cloud/sky-exp.yaml"
REQUIRED = {"REPO_URL": "https://example.invalid/team/mnistpipe.git", "COMMIT": "main"}


def task() -> dict:
    return yaml.safe_load(TASK.read_text())


def test_task_file_runs_pulls_and_pushes_the_experiment():
    config = task()
    assert "dvc pull" in config["run"]
    assert "dvc exp run --pull --allow-missing" in config["run"]
    assert "dvc exp push origin" in config["run"]
    assert {k for k, v in config["envs"].items() if v is None} == set(REQUIRED)
    assert config["secrets"] == {"GIT_TOKEN": ""}  # a push token travels as a secret, never in envs
    for section in ("setup", "run"):
        syntax = subprocess.run(["bash", "-n"], input=config[section], capture_output=True, text=True)
        assert syntax.returncode == 0, f"{section}: {syntax.stderr}"


def test_skypilot_parses_the_task_file():
    sky = pytest.importorskip("sky")
    with pytest.raises(ValueError, match="REPO_URL"):
        sky.Task.from_yaml_config(task())  # launching without the repository fails before any VM
    parsed = sky.Task.from_yaml_config(task(), env_overrides=list(REQUIRED.items()))
    assert parsed.name == "mnistpipe-exp"
    assert {r.accelerators and next(iter(r.accelerators)) for r in parsed.resources} == {"L4", "A10G", "T4"}
    assert parsed.envs["REPO_URL"] == REQUIRED["REPO_URL"]


@pytest.mark.slow
def test_run_script_pushes_a_sweep_that_a_teammate_pulls(tmp_path):
    origin, remote, env = share_project(tmp_path)
    vm_env = {**env, "PYTHONPATH": str(tmp_path / "vm/src"), "REPO_URL": str(origin), "COMMIT": "main",
              "EXP_NAME": "cloud", "EXP_SET": "train.lr=0.003 train.batch_size=64;train.lr=0.0003",
              "CLONE_DIR": "vm", "GIT_TOKEN": "", "DVC_EXTRAS": ""}
    done = subprocess.run(["bash", "-c", task()["run"]], cwd=tmp_path, env=vm_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert in_dvc_remote(remote, model_md5(tmp_path / "vm")), "the last experiment's model is in the DVC remote"
    metrics = json.loads((tmp_path / "vm/metrics/eval.json").read_text())
    params = yaml.safe_load((tmp_path / "vm/params.yaml").read_text())["train"]
    assert (params["lr"], params["batch_size"]) == (0.0003, 32), "each experiment starts from the commit's params"

    teammate, tenv = clone(origin, tmp_path / "teammate", env)
    listed = dvc(teammate, tenv, "exp", "list", "origin").stdout
    assert "cloud-1" in listed and "cloud-2" in listed
    dvc(teammate, tenv, "exp", "pull", "origin")
    table = exp_table(teammate, tenv)
    assert sorted(table) == ["cloud-1", "cloud-2"]
    assert (table["cloud-1"]["lr"], table["cloud-2"]["lr"]) == (0.003, 0.0003)
    assert (table["cloud-2"]["accuracy"], table["cloud-2"]["macro_f1"]) == (metrics["accuracy"], metrics["macro_f1"])
