"""`mnistpipe sweep-plot`: what is drawn (canned `dvc exp show --json` documents), the PNG and
page it writes, and on a real queued 2x2 sweep that the figure holds DVC's numbers (slow)."""

from __future__ import annotations

import json
import sys

import pytest

from mnistpipe.errors import UserError
from mnistpipe.experiments import read_show
from mnistpipe.sweep import current_baseline, draw, panels, write_sweep

from dvc_helpers import run
from sweep_project import baselines, entry, raw_runs, shown, sweep_project

BASE = entry("main", "a" * 40, lr=0.001, hidden=(8,), accuracy=0.90, std=0.004)
GRID = [entry(f"e{i}", f"{i}" * 40, lr=lr, hidden=hidden, accuracy=acc, std=std)
        for i, (lr, hidden, acc, std) in enumerate([(0.0001, (8,), 0.80, 0.010), (0.01, (8,), 0.92, 0.002),
                                                    (0.0001, (16,), 0.85, 0.006), (0.01, (16,), 0.95, 0.001)],
                                                   start=1)]


def drawn(fig) -> list[dict]:
    """Per axes: the points of every line (x as drawn, y), the error bars (x, half-length), the
    x scale, label and tick labels; read from the matplotlib objects, not from the panels."""
    out = []
    for ax in fig.axes:
        points = {(x, round(y, 9)) for line in ax.lines if line.get_marker() in ("o", "*")
                  for x, y in zip(line.get_xdata(), line.get_ydata())}
        bars = {(seg[0][0], round((seg[1][1] - seg[0][1]) / 2, 9))
                for coll in ax.collections for seg in coll.get_segments()}
        out.append({"points": points, "bars": bars, "scale": ax.get_xscale(), "xlabel": ax.get_xlabel(),
                    "ticks": [t.get_text() for t in ax.get_xticklabels()]})
    return out


def expected(rows: dict[str, dict], param: str, categories: list[str] | None) -> tuple[set, dict]:
    def x(row):
        return categories.index(json.dumps(row[param])) if categories else row[param]
    return ({(x(r), round(r["accuracy"], 9)) for r in rows.values()},
            {(x(r), round(r["std"], 9)) for r in rows.values() if r["std"] is not None})


def canned_rows(entries: list[dict]) -> dict[str, dict]:
    return {e["name"]: {"lr": e["data"]["params"]["params.yaml"]["data"]["train"]["lr"],
                        "hidden": e["data"]["params"]["params.yaml"]["data"]["model"]["hidden"],
                        "accuracy": e["data"]["metrics"]["metrics/eval.json"]["data"]["accuracy"],
                        "std": e["data"]["metrics"]["metrics/seeds.json"]["data"].get("test_acc_std")}
            for e in entries}


def check_figure(runs: list, rows: dict[str, dict]) -> None:
    """The figure of `runs` (experiments.Baseline's) draws every run in `rows` (the baseline
    included) where it belongs."""
    panel_list = panels(current_baseline(runs))
    hidden, lr = drawn(draw(panel_list))
    assert [p.param for p in panel_list] == ["model.hidden", "train.lr"]
    assert lr["scale"] == "log" and lr["xlabel"] == "train.lr (log scale)" and hidden["scale"] == "linear"
    categories = sorted({json.dumps(r["hidden"]) for r in rows.values()}, key=json.loads)
    assert hidden["ticks"] == categories
    assert (lr["points"], lr["bars"]) == expected(rows, "lr", None)
    assert (hidden["points"], hidden["bars"]) == expected(rows, "hidden", categories)


def test_each_changed_param_is_drawn_with_seed_spread_and_the_baseline():
    runs = baselines(BASE, GRID)
    check_figure(runs, canned_rows([BASE, *GRID]))
    lr_panel = panels(current_baseline(runs))[1]
    assert lr_panel.baseline.name == "main" and lr_panel.baseline.x == 0.001
    assert {p.group for p in lr_panel.points} == {"model.hidden=[8]", "model.hidden=[16]"}


def test_writes_a_png_without_software_stamp_and_a_page_with_every_run(tmp_path):
    png, md = write_sweep(tmp_path / "out", dpi=40, baselines=baselines(BASE, GRID))
    assert png.read_bytes().startswith(b"\x89PNG") and b"Software" not in png.read_bytes()
    page = md.read_text()
    assert "![test accuracy against model.hidden, train.lr](sweep.png)" in page
    assert "| main (baseline) | [8] | 0.001 | 0.9000 | 0.8970–0.9030 | ± 0.0040 (3 seeds) |" in page
    assert all(f"| e{i} |" in page for i in range(1, 5))


def test_nothing_to_plot_is_said_plainly():
    with pytest.raises(UserError, match="no finished experiments"):
        panels(current_baseline(baselines(BASE, [entry("q", "q" * 40, accuracy=None)])))
    with pytest.raises(UserError, match="change no param"):
        panels(current_baseline(baselines(BASE, [entry("same", "s" * 40, lr=0.001, hidden=(8,))])))


@pytest.mark.slow
def test_a_queued_2x2_sweep_draws_exactly_what_dvc_exp_show_records(tmp_path_factory, tmp_path):
    repo, env = sweep_project(tmp_path_factory)
    result = run([sys.executable, "-m", "mnistpipe.cli", "sweep-plot", "--output", str(tmp_path / "sweep")],
                 repo, env, check=False)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "sweep/sweep.png").stat().st_size > 0
    page = (tmp_path / "sweep/sweep.md").read_text()
    doc = shown(repo, env)
    rows = raw_runs(doc)
    assert len(rows) == 4 and all(f"| {name} |" in page for name in rows)
    base = next(b for b in doc if b["rev"] != "workspace")["data"]
    params, metrics = base["params"]["params.yaml"]["data"], base["metrics"]
    rows["main"] = {"lr": params["train"]["lr"], "hidden": params["model"]["hidden"],
                    "accuracy": metrics["metrics/eval.json"]["data"]["accuracy"],
                    "std": metrics["metrics/seeds.json"]["data"]["test_acc_std"]}
    check_figure(read_show(doc), rows)
