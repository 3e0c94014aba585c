"""Identical reruns, resume after SIGKILL (a multi-seed run's finished seeds kept), a diverged run
that changes nothing, and whole-or-nothing outputs, under real `dvc repro`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
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
    set_param,
    start_in_own_session,
    weights,
)

pytestmark = pytest.mark.slow

METRICS = ["metrics/train.json", "metrics/eval.json", "metrics/eval_detail.json", "metrics/seeds.json"]


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
    # persist: true, and the stage replaces its outputs only when it is done
    assert (clone / "models/model.pt").read_bytes() == (repo / "models/model.pt").read_bytes()

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


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists(), f"the run ended or timed out before writing {path}"


def epoch_lines(log: str) -> list[str]:
    """The lines training prints for an epoch it trains."""
    return re.findall(r"^epoch +\d+/\d+ .*$", log, re.MULTILINE)


def test_killed_multiseed_run_trains_no_finished_seed_again(done, tmp_path):
    repo, env = done
    clone = copy_repo(repo, tmp_path / "repo")
    set_param(clone, "multiseed", "seeds", [1, 2])
    reference = copy_repo(clone, tmp_path / "reference")

    proc = start_repro(clone, env)
    wait_for(clone / "models/resume-seed2.pt", proc)  # seed 2 has trained an epoch: seed 1 is done
    kill(proc)
    rerun = dvc(clone, env, "repro")
    log = rerun.stderr + rerun.stdout
    seed1, rest = log[log.index("extra seed 1:"):log.index("extra seed 2:")], log[log.index("extra seed 2:"):]
    assert "resuming from models/resume-seed1.pt after epoch 4: every epoch is done" in seed1
    assert epoch_lines(seed1) == [], "the finished seed was trained again"
    assert re.search(r"resuming from models/resume-seed2.pt after epoch [123]\n", rest)
    assert len(epoch_lines(rest)) < 8, "seed 2 resumes; the main seed trains its 4 epochs"
    assert sorted(p.name for p in (clone / "models").glob("resume*.pt")) == []

    dvc(reference, env, "repro")  # the same change, never interrupted
    outputs = ["models/model.pt", "models/seeds/seed1.pt", "models/seeds/seed2.pt", "models/seeds/seeds.json",
               "plots/train.csv", *METRICS]
    for name in outputs:
        assert (clone / name).read_bytes() == (reference / name).read_bytes(), name

    set_param(clone, "multiseed", "seeds", [2])  # persist: true, so the stage itself drops seed 1
    dvc(clone, env, "repro")
    assert sorted(p.name for p in (clone / "models/seeds").iterdir()) == ["seed2.pt", "seeds.json"]
    assert list(json.loads((clone / "metrics/seeds.json").read_text())["test_acc"])[1:] == ["2"]


def test_diverged_training_fails_with_its_cause_and_changes_nothing(done, tmp_path):
    repo, env = done
    clone = copy_repo(repo, tmp_path / "repo")
    set_param(clone, "train", "optimizer", "sgd")
    set_param(clone, "train", "lr", 10)
    # The default batch size: on this data, batches of 2 or 32 leave the loss huge but finite.
    set_param(clone, "train", "batch_size", 64)
    kept = ["models/model.pt", "models/seeds/seeds.json", "plots/train.csv", "plots/predictions.csv", *METRICS]
    before = {name: (clone / name).read_bytes() for name in kept}
    lock = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]

    failed = dvc(clone, env, "repro", check=False)
    out = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert re.search(r"train: the (training|validation) loss is (NaN|infinite) after epoch \d+ \(seed 42\): "
                     r"the run diverged; lower train.lr in params.yaml \(10 is high for sgd", out), out
    assert "Traceback" not in out and "Running stage 'evaluate'" not in out
    assert {name: (clone / name).read_bytes() for name in kept} == before
    after = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]
    for stage in ("train", "evaluate", "report"):
        assert after[stage] == lock[stage], stage
    assert not (clone / "models/resume.pt").exists()


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
    # DVC writes its own lock file in place, so a kill can cut it short; DVC then names it and
    # the user deletes it (docs/reproducibility.md). It is DVC's file, not a pipeline output.
    rwlock = clone / ".dvc/tmp/rwlock"
    try:
        json.loads(rwlock.read_text())
    except FileNotFoundError:
        pass
    except ValueError:
        rwlock.unlink()
    # So is dvc.lock, which DVC rewrites in place after each stage: the user restores it from git.
    try:
        yaml.safe_load((clone / "dvc.lock").read_text())
    except yaml.YAMLError:
        run(["git", "checkout", "--", "dvc.lock"], clone, env)
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
