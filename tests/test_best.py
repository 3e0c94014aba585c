"""`mnistpipe best`: choosing among experiments (canned `dvc exp show --json` documents), the
verdict against the baseline, and the command on a real queued sweep (slow)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import yaml

from mnistpipe.compare import Run
from mnistpipe.errors import UserError
from mnistpipe.experiments import apply, best_json, choose, format_best, judge, load_baselines, read_show

from dvc_helpers import copy_repo, run
from sweep_project import baselines, document, entry, raw_runs, shown, sweep_project

BASE = entry("main", "a" * 40, accuracy=0.970, loss=0.10)
THREE = [entry("lr-low", "b" * 40, lr=0.0003, accuracy=0.965, loss=0.12),
         entry("lr-high", "c" * 40, lr=0.003, accuracy=0.975, loss=0.11),
         entry("wide", "d" * 40, hidden=(256, 128), accuracy=0.972, loss=0.09)]


def fake_runs(correct: dict[str, int], n: int = 1000):
    """load(rev, name) for judge: run `name` gets the first correct[name] of n images right."""
    actual = np.zeros(n, dtype=np.int64)

    def load(rev, name):
        predicted = np.where(np.arange(n) < correct[name], 0, 1)
        return Run(name, actual, predicted, [])
    return load


def test_best_of_three_by_accuracy_with_its_interval_and_changes():
    choice = choose(baselines(BASE, THREE))
    assert [e.name for e in choice.ranking] == ["lr-high", "wide", "lr-low"]
    assert choice.best.ci95() == pytest.approx((0.972, 0.978)) and not choice.tied
    text = format_best(choice, judge(choice, load=fake_runs({"main": 970, "lr-high": 975})))
    assert "*  lr-high          0.9750" in text and "0.9720–0.9780" in text and "train.lr=0.003" in text
    assert "main (baseline)" in text


def test_lower_is_better_for_loss_and_any_eval_metric_by_name():
    choice = choose(baselines(BASE, THREE), "loss")  # in eval_detail.json, read from each run's commit
    assert not choice.higher_is_better and choice.best.name == "wide"
    assert choose(baselines(BASE, THREE), "metrics/eval_detail.json:loss").best.name == "wide"
    with pytest.raises(UserError, match="no experiment records 'loss' in metrics/eval.json"):
        choose(baselines(BASE, THREE), "metrics/eval.json:loss")  # not a DVC metric any more


def test_significantly_better_and_within_noise_are_said_plainly():
    choice = choose(baselines(BASE, THREE))
    far = judge(choice, load=fake_runs({"main": 700, "lr-high": 900}))
    assert far.significantly_better and "lr-high is significantly better than its baseline main" in far.text
    near = judge(choice, load=fake_runs({"main": 970, "lr-high": 975}))
    assert not near.significantly_better and not near.significantly_worse
    assert near.text.startswith("nothing is significantly better than main")
    worse = judge(choice, load=fake_runs({"main": 900, "lr-high": 700}))
    assert worse.significantly_worse and worse.text.startswith("no experiment beats main")
    data = best_json(choice, far, applied=False)
    assert data["best"] == "lr-high" and data["significantly_better"] and data["baseline"] == "main"
    json.dumps(data)  # plain JSON for scripts


def test_a_tie_is_named_and_apply_refuses_to_guess():
    tied = [entry("x", "b" * 40, accuracy=0.975), entry("y", "c" * 40, lr=0.01, accuracy=0.975)]
    choice = choose(baselines(BASE, tied))
    assert choice.tied == ["x", "y"]
    assert "tie: x, y have the same accuracy" in format_best(choice, judge(choice, load=fake_runs(
        {"main": 970, "x": 975})))
    with pytest.raises(UserError, match="x, y tie on accuracy"):
        apply(choice)


def test_unfinished_experiments_are_skipped_and_missing_ones_explained():
    queued = entry("queued", "e" * 40, accuracy=None)
    assert [e.name for e in read_show(document(BASE, [queued, *THREE]))[0].experiments] == \
        ["lr-low", "lr-high", "wide"]
    with pytest.raises(UserError, match="no finished experiments"):
        choose(baselines(BASE, [queued]))
    with pytest.raises(UserError, match="no experiment records 'f1'.*accuracy, accuracy_ci95_high"):
        choose(baselines(BASE, THREE), "f1")


# ---------------------------------------------------------------- a real queued sweep

def mnistpipe(repo, env, *args: str):
    return run([sys.executable, "-m", "mnistpipe.cli", *args], repo, env, check=False)


@pytest.mark.slow
def test_best_picks_the_top_experiment_beyond_noise_and_applies_it(tmp_path_factory, tmp_path):
    repo, env = sweep_project(tmp_path_factory)
    rows = raw_runs(shown(repo, env))
    top = max(row["accuracy"] for row in rows.values())
    # Each run's interval comes from metrics/eval_detail.json in its own commit.
    for exp in load_baselines(cwd=str(repo))[0].experiments:
        detail = json.loads(run(["git", "show", f"{exp.rev}:metrics/eval_detail.json"], repo, env).stdout)
        assert exp.ci95() == (detail["accuracy_ci95_low"], detail["accuracy_ci95_high"])
        assert detail["accuracy_ci95_low"] < rows[exp.name]["accuracy"] < detail["accuracy_ci95_high"]
    result = mnistpipe(repo, env, "best", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert rows[data["best"]]["accuracy"] == top and data["value"] == top
    tied = sorted(name for name, row in rows.items() if row["accuracy"] == top)
    assert sorted(data["tied"]) == (tied if len(tied) > 1 else [])
    assert data["significantly_better"] and data["baseline"] == "main", data["verdict"]

    # --apply on the lowest loss (a tie there is all but impossible): the workspace gets its params and metrics.
    work = copy_repo(repo, tmp_path / "work")
    result = mnistpipe(work, env, "best", "--metric", "loss", "--apply")
    assert result.returncode == 0, result.stderr
    name = result.stdout.split("* ", 1)[1].split()[0]
    assert f"applied {name}" in result.stdout
    params = yaml.safe_load((work / "params.yaml").read_text())
    assert (params["train"]["lr"], params["model"]["hidden"]) == (rows[name]["lr"], rows[name]["hidden"])
    assert json.loads((work / "metrics/eval.json").read_text())["accuracy"] == rows[name]["accuracy"]
