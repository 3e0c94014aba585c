"""Identical reruns, resume after SIGKILL, and whole-or-nothing outputs, under real `dvc repro`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import same_weights
from dvc_helpers import (
    commit_all,
    copy_repo,
    dvc,
    kill,
    kill_after_first_checkpoint,
    make_repo,
    run,
    start_in_own_session,
    weights,
)

pytestmark = pytest.mark.slow

METRICS = ["metrics/train.json", "metrics/eval.json", "metrics/seeds.json"]


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A finished pipeline whose epochs are slow enough (batch size 2) to be killed mid-run."""
    repo, env = make_repo(tmp_path_factory.mktemp("resilience"), train={"epochs": 4, "batch_size": 2})
    dvc(repo, env, "repro")
    commit_all(repo, env, "pipeline")
    return repo, env


REPRO = [sys.executable, "-m", "dvc", "repro"]


def start_repro(repo: Path, env: dict, *args: str) -> subprocess.Popen:
    return start_in_own_session([*REPRO, *args], repo, env)


def test_forced_reruns_are_identical(done, tmp_path):
    repo, env = done
    before = {m: (repo / m).read_bytes() for m in METRICS}
    w_before = weights(repo)
    clone = copy_repo(repo, tmp_path / "repo")
    dvc(clone, env, "repro", "--force")
    assert {m: (clone / m).read_bytes() for m in METRICS} == before
    assert same_weights(weights(clone), w_before)
    assert (clone / "plots/predictions.csv").read_bytes() == (repo / "plots/predictions.csv").read_bytes()


def test_sigkill_during_training_then_repro_resumes_to_identical_result(done, tmp_path):
    repo, env = done
    clone = copy_repo(repo, tmp_path / "repo")
    (clone / "params.yaml").write_text((clone / "params.yaml").read_text().replace("epochs: 4", "epochs: 5"))
    reference = copy_repo(clone, tmp_path / "reference")

    resume = kill_after_first_checkpoint(clone, env, REPRO)
    assert not (clone / "models/model.pt").exists()

    rerun = dvc(clone, env, "repro")
    assert "resuming from models/resume.pt after epoch" in rerun.stderr + rerun.stdout
    assert not resume.exists()
    assert json.loads((clone / "logs/train.json").read_text())["resumed_after_epoch"] >= 1

    dvc(reference, env, "repro")  # the same change, never interrupted
    for m in METRICS:
        assert (clone / m).read_bytes() == (reference / m).read_bytes(), m
    assert (clone / "plots/train.csv").read_bytes() == (reference / "plots/train.csv").read_bytes()
    assert same_weights(weights(clone), weights(reference))


def test_checkpoint_from_other_params_is_not_resumed(done, tmp_path):
    repo, env = done
    clone = copy_repo(repo, tmp_path / "repo")
    (clone / "params.yaml").write_text((clone / "params.yaml").read_text().replace("epochs: 4", "epochs: 5"))
    kill_after_first_checkpoint(clone, env, REPRO)
    (clone / "params.yaml").write_text((clone / "params.yaml").read_text().replace("lr: 0.001", "lr: 0.002"))
    rerun = dvc(clone, env, "repro")
    out = rerun.stderr + rerun.stdout
    assert "different config or data; starting fresh" in out and "resuming" not in out


def complete(path: Path) -> bool:
    """Would a reader accept this file as whole? (every format the stages write)"""
    try:
        if path.suffix == ".pt":
            torch.load(path, weights_only=True)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".png":
            Image.open(path).load()
        elif path.suffix in (".csv", ".md"):
            return path.read_text().endswith("\n")
        elif path.suffix == ".gz":
            import gzip

            gzip.decompress(path.read_bytes())
        return True
    except Exception:
        return False


OUTPUT_ROOTS = ["data/raw", "data/prepared", "models", "metrics", "plots", "logs", "reports"]


@pytest.mark.parametrize("stage", ["fetch", "prepare", "train", "evaluate", "report"])
def test_killed_stage_leaves_only_whole_files_and_next_repro_completes(done, tmp_path, stage):
    repo, env = done
    clone = copy_repo(repo, tmp_path / "repo")
    for delay in (0.7, 1.5, 2.5):  # from start-up to well into the stage's work
        kill_after(start_repro(clone, env, "--force", "--single-item", stage), delay)
        partial = [str(p.relative_to(clone)) for root in OUTPUT_ROOTS if (clone / root).exists()
                   for p in (clone / root).rglob("*")
                   if p.is_file() and not p.name.endswith(".tmp") and not complete(p)]
        assert partial == [], f"partial outputs after a kill at {delay}s"
    dvc(clone, env, "repro")
    assert "up to date" in dvc(clone, env, "status").stdout
    # Deterministic stages: the recovered outputs are the uninterrupted ones.
    for m in METRICS:
        assert (clone / m).read_bytes() == (repo / m).read_bytes(), m
    # Temporaries a kill left behind are never inside a tracked output, nor untracked in git.
    inside = [p for root in ("data/raw", "data/prepared", "reports", "models/seeds")
              if (clone / root).exists() for p in (clone / root).rglob("*.tmp")]
    assert inside == []
    untracked = [line for line in run(["git", "status", "--porcelain"], clone, env).stdout.splitlines()
                 if line.startswith("??")]
    assert untracked == []


def kill_after(proc: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    kill(proc)
