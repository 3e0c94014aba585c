"""Live curves: the train stage appends each epoch's row to logs/train_live.csv as it trains
(and, inside `dvc exp run`, signals the VS Code extension), and its DVC outputs keep their bytes."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
from pathlib import Path

import pytest

from mnistpipe import live, paths

from conftest import tiny_project

OUTPUTS = [paths.MODEL, paths.SEED_MODELS / "seed1.pt", paths.SEED_LIST, paths.TRAIN_METRICS, paths.HISTORY]


def test_rows_follow_the_header_and_signal_only_inside_dvc_exp_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    log = live.LiveLog().start()
    log.row(42, 1, (0.5, 0.75, 0.25, 0.875), 1.23456)
    assert not Path(".dvc").exists()  # outside `dvc exp run`: no signal, no folder made
    run_dir = tmp_path / ".dvc/tmp/exps/run"
    run_dir.mkdir(parents=True)
    log.row(42, 2, (0.25, 0.875, 0.125, 0.9375), 0.5)
    assert json.loads((run_dir / live.SIGNAL_NAME).read_text()) == {"pid": os.getpid(), "step": 1}
    assert live.LIVE_CSV.read_text() == ("seed,epoch,train_loss,train_acc,val_loss,val_acc,seconds\n"
                                         "42,1,0.5,0.75,0.25,0.875,1.235\n42,2,0.25,0.875,0.125,0.9375,0.500\n")
    live.LiveLog().start()  # a new run starts the file afresh
    assert live.LIVE_CSV.read_text().count("\n") == 1


def test_dvc_root_names_the_repository_whose_run_folder_gets_the_signal(tmp_path, monkeypatch):
    """A run in a temporary copy (`dvc exp run --temp`, the queue) signals the original repository."""
    root, copy = tmp_path / "repo", tmp_path / "copy"
    (root / ".dvc/tmp/exps/run").mkdir(parents=True)
    copy.mkdir()
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(root))
    live.signal_step(7)
    assert json.loads((root / ".dvc/tmp/exps/run" / live.SIGNAL_NAME).read_text())["step"] == 7


@pytest.fixture(scope="module")
def prepared_project(tmp_path_factory):
    """A project folder with the tiny synthetic data prepared, and its params (2 epochs, an extra seed)."""
    return tiny_project(tmp_path_factory.mktemp("live"), ("prepare",), train={"epochs": 2}, multiseed={"seeds": [1]})


def train_in_copy(prepared_project, dest: Path) -> Path:
    """The train stage, in process, in a copy of the prepared project; the copy."""
    import torch

    from mnistpipe.device import make_deterministic
    from mnistpipe.pipeline import train

    project = shutil.copytree(prepared_project[0], dest)
    restore = make_deterministic(torch.device("cpu"))
    try:
        with contextlib.chdir(project):
            train.run(prepared_project[1])
    finally:
        restore()
    return project


def test_each_epoch_adds_its_row_before_the_stage_ends_and_the_outputs_keep_their_bytes(
        prepared_project, tmp_path, monkeypatch):
    """Acceptance: rows appear one per epoch, in order, while no output is written yet (a hook
    reads the file after every row); the outputs equal those of a run without live rows."""
    seen = []
    row = live.LiveLog.row

    def watching_row(self, *args):
        row(self, *args)
        with open(self.path) as f:
            rows = list(csv.DictReader(f))
        seen.append(([(r["seed"], r["epoch"]) for r in rows], [p for p in OUTPUTS if p.exists()]))

    monkeypatch.setattr(live.LiveLog, "row", watching_row)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (prepared_project[0] / ".dvc/tmp/exps/run").mkdir(parents=True, exist_ok=True)
    with_live = train_in_copy(prepared_project, tmp_path / "live")
    order = [("1", "1"), ("1", "2"), ("42", "1"), ("42", "2")]  # the extra seed first, then the main one
    assert seen == [(order[:n], []) for n in range(1, 5)]
    signal = json.loads((with_live / ".dvc/tmp/exps/run" / live.SIGNAL_NAME).read_text())
    assert signal == {"pid": os.getpid(), "step": 3}

    monkeypatch.setattr(live.LiveLog, "start", lambda self: None)
    monkeypatch.setattr(live.LiveLog, "for_seed", lambda self, seed: lambda record, seconds: None)
    without = train_in_copy(prepared_project, tmp_path / "without")
    assert not (without / live.LIVE_CSV).exists()
    for path in OUTPUTS:
        assert (with_live / path).read_bytes() == (without / path).read_bytes(), path
