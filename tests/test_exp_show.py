"""`dvc exp show` as typed: the headline metrics, then the params sweeps change, come first,
so they are what a 120-column terminal shows. Checked on DVC's own output for a tiny project
with three experiments.

DVC prints one column per metric, param and file dep, in that order, and fits the table to the
terminal by collapsing columns from the right into `…`. Without a pager (`--no-pager`) it
squeezes all of them, about 80 here, into the terminal's width and cuts every one; with its
pager (the default, `less -S`) it draws the table whole and the terminal shows its left part.
"""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import REPO
from dvc_helpers import commit_all, dvc, make_repo, run

WIDTH = 120
HEADLINE = ("accuracy", "macro_f1", "ece")
# Three experiments, each changing one knob from the committed baseline; names as long as DVC's own.
EXPERIMENTS = {"lr-faster": ("train.lr", "0.003"), "wider-net": ("model.hidden", "[16]"),
               "two-epochs": ("train.epochs", "2")}


def test_only_the_headline_and_the_seed_spread_are_dvc_metrics():
    """Every key of every metrics file is a column of `dvc exp show`; the rest of the numbers are
    plain outputs in git."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    metrics = [next(iter(m)) for stage in stages.values() for m in stage.get("metrics", [])]
    assert metrics == ["metrics/eval.json", "metrics/seeds.json"]


@pytest.fixture(scope="module")
def shown(tmp_path_factory):
    """A committed tiny project and its three experiments: (repo, env). The baseline learns little
    (lr 1e-5, one epoch), so that every run's metrics differ and --only-changed keeps them."""
    repo, env = make_repo(tmp_path_factory.mktemp("exp-show"), train={"epochs": 1, "lr": 1e-5})
    dvc(repo, env, "repro")
    commit_all(repo, env, "baseline")
    for name, (param, value) in EXPERIMENTS.items():
        dvc(repo, env, "exp", "run", "-n", name, "-S", f"{param}={value}")
        run(["git", "checkout", "--", "."], repo, env)  # back to the baseline: each changes one knob
        dvc(repo, env, "checkout", "--force")
    return repo, {**env, "COLUMNS": str(WIDTH)}


def has(line: str, text: str) -> bool:
    """`text` appears whole in the line, as a cell of its own: not cut short by `…`."""
    return re.search(rf"(?<!\S){re.escape(text)}(?!\S)", line) is not None


def metric(row: str, header: str, name: str) -> str:
    """The row's cell under metric `name` (right-aligned: it ends where the header does)."""
    return row[:header.index(f" {name} ") + 1 + len(name)].split()[-1]


def param(row: str, header: str, name: str) -> str:
    """The row's cell under param `name` (left-aligned: it starts where the header does)."""
    return re.split(r"\s{2,}", row[header.index(f" {name} ") + 1:])[0]


def rows(table: list[str]) -> dict[str, str]:
    """Each experiment's row, by name, and the baseline's (the branch main)."""
    found = {name: next(line for line in table if f"[{name}]" in line) for name in EXPERIMENTS}
    return found | {"main": next(line for line in table if line.split()[:1] == ["main"])}


def changed_values(repo) -> dict[str, dict[str, str]]:
    """Each row's value of each changed knob, as DVC prints it: the baseline's, but for the one
    its experiment set."""
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    base = {knob: str(raw[knob.split(".")[0]][knob.split(".")[1]]) for knob, _ in EXPERIMENTS.values()}
    return {"main": base} | {name: base | {knob: value} for name, (knob, value) in EXPERIMENTS.items()}


def check_headline(row: str, header: str) -> None:
    """The row shows every headline metric whole: a number, not cut short to `0.97…`."""
    for name in HEADLINE:
        assert re.fullmatch(r"\d\.\d+", metric(row, header, name)), f"{name}:\n{header}\n{row}"


@pytest.mark.slow
def test_only_changed_fits_120_columns_with_headline_and_changed_params(shown):
    repo, env = shown
    table = dvc(repo, env, "exp", "show", "--no-pager", "--only-changed").stdout.splitlines()
    assert max(map(len, table)) <= WIDTH, "\n".join(table)
    header = next(line for line in table if "Experiment" in line)
    changed = [name for name, _ in EXPERIMENTS.values()]
    assert all(has(header, name) for name in (*HEADLINE, *changed)), "\n".join(table)
    expected = changed_values(repo)
    for name, row in rows(table).items():
        check_headline(row, header)
        assert {knob: param(row, header, knob) for knob in changed} == expected[name], f"{header}\n{row}"


@pytest.mark.slow
def test_plain_exp_show_opens_on_names_and_headline(shown):
    """What the pager's first screen shows: each line's first 120 columns; the arrow keys scroll
    to the rest of the table, drawn whole. (DVC_PAGER=cat: DVC draws the table for its pager as
    for `less -S`, and cat shows what it drew.)"""
    repo, env = shown
    drawn = dvc(repo, {**env, "DVC_PAGER": "cat"}, "exp", "show").stdout.splitlines()
    whole = next(line for line in drawn if "Experiment" in line)
    changed = [name for name, _ in EXPERIMENTS.values()]
    assert all(has(whole, name) for name in changed), whole
    expected = changed_values(repo)
    for name, row in rows(drawn).items():
        assert {knob: param(row, whole, knob) for knob in changed} == expected[name], f"{whole}\n{row}"
    screen = [line[:WIDTH] for line in drawn]
    header = next(line for line in screen if "Experiment" in line)
    first = (*HEADLINE, "model.arch", "model.hidden")
    assert all(has(header, name) for name in first), header
    order = [header.index(f" {name} ") for name in first]
    assert order == sorted(order), header  # the headline, then the knobs sweeps change
    for name, row in rows(screen).items():
        assert name == "main" or has(row, f"[{name}]"), row
        check_headline(row, header)
    # Without the pager every column is squeezed into the terminal: it fits, and little else.
    squeezed = dvc(repo, env, "exp", "show", "--no-pager").stdout.splitlines()
    assert max(map(len, squeezed)) <= WIDTH


@pytest.mark.slow
def test_metrics_show_fits_120_columns(shown):
    repo, env = shown
    table = dvc(repo, env, "metrics", "show").stdout.splitlines()
    assert max(map(len, table)) <= WIDTH, "\n".join(table)
    assert all(has(table[0], name) for name in HEADLINE), table[0]
