"""`mnistpipe compare`: paired statistics on per-image predictions, at git revisions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from mnistpipe.compare import Run, compare, holm, mcnemar, p_text, paired_bootstrap
from mnistpipe.evaluate import wilson_interval

from dvc_helpers import GIT_ENV


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (9750, 10000), (10000, 10000), (1, 1)])
def test_wilson_matches_scipy(k, n):
    expected = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((expected.low, expected.high), abs=1e-9)


def test_mcnemar_exact_values():
    a = np.array([True] * 10 + [False] * 5 + [True] * 100)
    b = np.array([False] * 10 + [False] * 5 + [True] * 100)
    assert mcnemar(a, b) == (10, 0, pytest.approx(2 * 0.5**10))
    assert mcnemar(a, a)[2] == 1.0  # no discordant pairs: no evidence of any difference


def test_p_values_that_underflow_are_not_printed_as_zero():
    assert p_text(mcnemar(np.zeros(2000, bool), np.ones(2000, bool))[2]) == "p < 1e-300"
    assert p_text(2 / 1024) == "p = 0.002"


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_paired_bootstrap_is_seeded_and_centred_on_the_difference():
    rng = np.random.default_rng(1)
    a = rng.random(10_000) < 0.97
    b = a.copy()
    b[rng.choice(np.flatnonzero(~a), 60, replace=False)] = True  # B fixes 60 of A's errors
    b[rng.choice(np.flatnonzero(a), 20, replace=False)] = False  # and breaks 20 others
    low, high = paired_bootstrap(a, b)
    assert (low, high) == paired_bootstrap(a, b)
    diff = b.mean() - a.mean()
    assert low < diff < high
    d = b.astype(int) - a.astype(int)
    half = 1.96 * d.std() / np.sqrt(len(d))  # the normal approximation, for scale
    assert high - low == pytest.approx(2 * half, rel=0.1)


def runs(n_flip_worse: int, seed: int = 0, n: int = 10_000) -> tuple[Run, Run]:
    rng = np.random.default_rng(seed)
    actual = rng.integers(0, 10, n)
    pred_a = np.where(rng.random(n) < 0.975, actual, (actual + 1) % 10)
    pred_b = pred_a.copy()
    right = np.flatnonzero((pred_a == actual) & (actual == 3))[:n_flip_worse]
    pred_b[right] = 5  # B breaks some 3s
    return Run("A", actual, pred_a, []), Run("B", actual, pred_b, [])


def test_clear_regression_is_found_with_its_class():
    a, b = runs(n_flip_worse=60)
    r = compare(a, b)
    assert r.b_worse and r.verdict.startswith("B is worse than A")
    assert [row.label for row in r.per_class_significant] == [3]
    assert r.difference_ci95[1] < 0


def test_per_class_significance_is_holm_corrected():
    """One class with 6 images broken has p = 2 * 0.5**6 = 0.031 on its own: below alpha, but
    not after Holm's correction for testing ten classes; 60 broken images stay significant."""
    a, b = runs(n_flip_worse=6)
    r = compare(a, b)
    row = next(row for row in r.per_class if row.label == 3)
    assert row.p == pytest.approx(2 * 0.5**6) and row.p_holm == pytest.approx(10 * row.p)
    assert r.per_class_significant == []


def test_accuracy_intervals_are_95_percent():
    a, b = runs(n_flip_worse=60)
    for run in (a, b):
        k, n = int(run.correct.sum()), len(run.actual)
        expected = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert compare(a, b).accuracy[run.name].ci95 == pytest.approx([expected.low, expected.high])


def test_identical_runs_are_no_significant_difference():
    a, _ = runs(0)
    r = compare(a, Run("B", a.actual, a.predicted.copy(), []))
    assert not r.b_worse and "no significant difference" in r.verdict


def test_welch_over_seeds_when_both_sides_have_them():
    a, b = runs(0)
    a.seed_accuracies, b.seed_accuracies = [0.975, 0.977, 0.976], [0.981, 0.982, 0.980]
    seeds = compare(a, b).seeds
    assert seeds.p < 0.01 and seeds.mean_b > seeds.mean_a


def test_different_test_sets_are_refused():
    from mnistpipe.errors import UserError

    a, b = runs(0)
    with pytest.raises(UserError, match="different test sets"):
        compare(a, Run("B", b.actual[:-1], b.predicted[:-1], []))


def write_predictions(repo: Path, run: Run) -> None:
    (repo / "plots").mkdir(exist_ok=True)
    lines = ["index,actual,predicted,confidence"] + [f"{i},{t},{p},1.0" for i, (t, p)
                                                     in enumerate(zip(run.actual, run.predicted))]
    (repo / "plots/predictions.csv").write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_cli_compares_head_with_workspace_and_gates_on_regression(tmp_path):
    import os

    env = {**os.environ, **GIT_ENV}
    git = lambda *args: subprocess.run(["git", *args], cwd=tmp_path, env=env, check=True,  # noqa: E731
                                       capture_output=True)
    git("init", "-q", "-b", "main")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, env=env, check=True)
    a, b = runs(n_flip_worse=60)
    write_predictions(tmp_path, a)
    git("add", "-A")
    git("commit", "-qm", "baseline")
    write_predictions(tmp_path, b)
    cli = [sys.executable, "-m", "mnistpipe.cli", "compare"]
    gate = subprocess.run(cli + ["--fail-if-worse"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert gate.returncode == 1, gate.stderr
    assert "workspace is worse than HEAD" in gate.stdout
    out = subprocess.run(cli + ["--json"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(out.stdout)["mcnemar"]["only_a_right"] == 60
    bad = subprocess.run(cli + ["no-such-branch"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "no-such-branch" in bad.stderr


GOOD = "index,actual,predicted,confidence\n0,7,7,0.99\n1,2,2,0.98\n"
MALFORMED = {
    "empty": (b"", "not a readable CSV table"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "not a text file"),
    "bad quoting": (b'index,actual,predicted\n0,"7,7\n1,2,2\n', "not a readable CSV table"),
    "missing column": (b"index,actual,confidence\n0,7,0.9\n", "no 'predicted' column"),
    "header only": (b"index,actual,predicted,confidence\n", "no rows"),
    "a word for a class": (b"index,actual,predicted,confidence\n0,7,seven,0.9\n1,2,2,0.9\n",
                           "row 1: predicted is 'seven'"),
    "a negative class": (b"index,actual,predicted,confidence\n0,-1,7,0.9\n", "row 1: actual is '-1'"),
    "a fraction": (b"index,actual,predicted,confidence\n0,7,7.5,0.9\n", "row 1: predicted is '7.5'"),
}
BAD_SEEDS = {"garbage": b"{not json", "a list": b"[1, 2]", "accuracy out of range": b'{"n": 2, "test_acc": {"1": 7}}'}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_predictions_are_refused_by_name(case, tmp_path, monkeypatch):
    """A verdict must never come from a table the evaluate stage did not write: one word in
    a cell once gave "worse (p < 1e-300)"."""
    from mnistpipe.compare import load_run
    from mnistpipe.errors import UserError

    content, message = MALFORMED[case]
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots/predictions.csv").write_bytes(content)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="plots/predictions.csv") as error:
        load_run(None)
    assert message in str(error.value) and "dvc repro evaluate" in str(error.value)


@pytest.mark.parametrize("case", sorted(BAD_SEEDS))
def test_malformed_seeds_json_is_refused_by_name(case, tmp_path, monkeypatch):
    from mnistpipe.compare import load_run
    from mnistpipe.errors import UserError

    (tmp_path / "plots").mkdir()
    (tmp_path / "metrics").mkdir()
    (tmp_path / "plots/predictions.csv").write_text(GOOD)
    (tmp_path / "metrics/seeds.json").write_bytes(BAD_SEEDS[case])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="metrics/seeds.json"):
        load_run(None)


@pytest.mark.parametrize("alpha", [0, -0.1, 0.51, 5])
def test_alpha_must_be_a_significance_level(alpha):
    from mnistpipe.errors import UserError

    with pytest.raises(UserError, match="--alpha"):
        compare(*runs(0), alpha=alpha)


def test_the_cli_gives_no_verdict_on_malformed_data(tmp_path):
    cli = [sys.executable, "-m", "mnistpipe.cli", "compare", "--fail-if-worse"]
    out = subprocess.run(cli, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "git" in out.stderr  # not a repository
    env = {**os.environ, **GIT_ENV}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, env=env, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, env=env, check=True)
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots/predictions.csv").write_bytes(MALFORMED["a word for a class"][0])
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, env=env, check=True)
    subprocess.run(["git", "commit", "-qm", "a"], cwd=tmp_path, env=env, check=True)
    out = subprocess.run(cli, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "HEAD: plots/predictions.csv" in out.stderr
    assert "worse" not in out.stdout and "better" not in out.stdout
