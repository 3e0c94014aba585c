"""`mnistpipe pr-report` and the workflow that posts it on a pull request.

The branches carry fabricated predictions and metrics instead of trained runs: what is under
test is the command the workflow calls, on a real git+DVC repository.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from mnistpipe.compare import Run, compare, format_markdown
from mnistpipe.pr_report import MARKER, collapsed

from conftest import REPO
from dvc_helpers import commit_all, make_repo, run, set_param

WORKFLOW = REPO / ".github/workflows/pr-report.yml"


def baseline(n: int = 10_000) -> Run:
    rng = np.random.default_rng(0)
    actual = rng.integers(0, 10, n)
    return Run("A", actual, np.where(rng.random(n) < 0.975, actual, (actual + 1) % 10), [])


def worse(a: Run) -> Run:
    """B breaks 60 of the threes A gets right: far beyond noise."""
    predicted = a.predicted.copy()
    predicted[np.flatnonzero(a.correct & (a.actual == 3))[:60]] = 5
    return Run("B", a.actual, predicted, [])


def write_run(repo: Path, run_: Run) -> None:
    """plots/predictions.csv and metrics/eval.json, as the evaluate stage would leave them."""
    (repo / "plots").mkdir(exist_ok=True)
    rows = [f"{i},{t},{p},1.0" for i, (t, p) in enumerate(zip(run_.actual, run_.predicted))]
    (repo / "plots/predictions.csv").write_text("\n".join(["index,actual,predicted,confidence", *rows]) + "\n")
    (repo / "metrics").mkdir(exist_ok=True)
    accuracy = round(float(run_.correct.mean()), 4)
    (repo / "metrics/eval.json").write_text(json.dumps({"accuracy": accuracy}, indent=2) + "\n")


def neutral(a: Run) -> Run:
    """B fixes 3 of A's errors and breaks 3 other images: a change within noise."""
    predicted = a.predicted.copy()
    wrong, right = np.flatnonzero(~a.correct), np.flatnonzero(a.correct)
    predicted[wrong[:3]] = a.actual[wrong[:3]]
    predicted[right[:3]] = (a.actual[right[:3]] + 1) % 10
    return Run("B", a.actual, predicted, [])


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A project repository whose main branch holds the baseline run."""
    repo, env = make_repo(tmp_path_factory.mktemp("pr"))
    write_run(repo, baseline())
    commit_all(repo, env, "baseline")
    return repo, env


def branch(repo: Path, env: dict, name: str, lr: float, run_: Run) -> None:
    run(["git", "checkout", "-q", "-b", name, "main"], repo, env)
    set_param(repo, "train", "lr", lr)
    write_run(repo, run_)
    commit_all(repo, env, name)


def pr_report(repo: Path, env: dict) -> tuple[subprocess.CompletedProcess, str]:
    """The command the workflow runs, with main as the base; the report goes outside the repository."""
    output = repo.parent / f"{run(['git', 'branch', '--show-current'], repo, env).stdout.strip()}.md"
    cmd = [sys.executable, "-m", "mnistpipe.cli", "pr-report", "--base", "main", "--output", str(output),
           "--fail-if-worse"]
    result = run(cmd, repo, env, check=False)
    return result, output.read_text() if output.exists() else ""


@pytest.mark.slow
def test_a_significantly_worse_branch_fails_and_the_report_says_why(repo):
    repo, env = repo
    branch(repo, env, "worse", 0.01, worse(baseline()))
    result, report = pr_report(repo, env)
    assert result.returncode == 1, result.stderr
    assert report.startswith(MARKER) and "This check fails" in report
    verdict = report.index("**workspace is worse than main")
    assert verdict < report.index("| run | accuracy | 95% interval | errors |")
    assert "| `main` | 0.9" in report and "only `main` right on 60 images" in report
    assert "train.lr" in report and "0.01" in report  # the params diff
    assert "metrics/eval.json" in report and "accuracy" in report  # the metrics diff
    assert "significantly worse" in result.stderr


@pytest.mark.slow
def test_a_neutral_branch_passes(repo):
    repo, env = repo
    branch(repo, env, "neutral", 0.002, neutral(baseline()))
    result, report = pr_report(repo, env)
    assert result.returncode == 0, result.stderr
    assert "**no significant difference" in report and "This check fails" not in report
    assert "train.lr" in report and "0.002" in report
    assert "No figures" in report  # nothing was reproduced here


def test_markdown_puts_the_verdict_first():
    a = baseline()
    text = format_markdown(compare(a, worse(a)))
    assert text.startswith("**B is worse than A (p = ")
    assert "| `A` | 0.9" in text and "| 3 | " in text  # the accuracy table and the class that changed


def test_long_dvc_tables_are_folded_and_empty_ones_say_so():
    header = "| Path | Param | main | workspace |\n|---|---|---|---|"
    assert collapsed(header, "params") == "No params changed."
    short = header + "\n| params.yaml | train.lr | 0.001 | 0.01 |"
    assert collapsed(short, "params") == short
    long = header + "\n| metrics/eval.json | x | 1 | 2 |" * 11
    assert collapsed(long, "metrics").startswith("<details><summary>11 metrics changed")


def workflow_steps() -> list[dict]:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert "pull_request" in workflow[True]  # YAML 1.1 reads the key `on` as True
    (job,) = workflow["jobs"].values()
    return job["steps"]


def test_workflow_is_a_thin_caller_of_pr_report():
    steps = workflow_steps()
    scripts = [step.get("run", "") for step in steps]
    order = [next(i for i, s in enumerate(scripts) if needle in s)
             for needle in ("pip install -c constraints.txt -e .", "dvc repro", "mnistpipe pr-report")]
    assert order == sorted(order)
    report = next(s for s in scripts if "mnistpipe pr-report" in s)
    assert "--fail-if-worse" in report and "--output pr-report.md" in report
    post = next(step for step in steps if "gh api" in step.get("run", ""))
    assert post["env"]["MARKER"] == MARKER and "pr-report.md" in post["run"] and "always()" in post["if"]
    assert steps[-1]["if"] == "steps.report.outputs.status != '0'" and "exit 1" in steps[-1]["run"]
    assert all("@" in step["uses"] for step in steps if "uses" in step)  # actions pinned to a version
