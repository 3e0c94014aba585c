"""`mnistpipe sweep-plot`: each param a sweep changed against the test accuracy, as a PNG and a page.

The numbers come from `dvc exp show --json` and each run's commit (read by experiments.py),
so the plot shows what DVC recorded. `panels` computes what is drawn (tested on canned
documents and against a real sweep); `draw` only draws it. One panel per changed param: a line per combination of
the other changed params, error bars of ± one standard deviation over training seeds where
multiseed ran (metrics/seeds.json), the baseline commit as a star and a dashed line. Learning
rates and other positive params spanning 100x or more get a log axis; lists (model.hidden)
and strings are categories. Plain `matplotlib.figure.Figure`, no pyplot, as in report.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .experiments import Baseline, Experiment, changed_params, format_param, load_baselines

METRIC = "accuracy"


@dataclass(frozen=True)
class Point:
    name: str  # the experiment (or baseline)
    x: Any  # the param's value
    y: float  # test accuracy
    yerr: float | None  # std over training seeds, where multiseed ran
    group: str  # the other changed params' values, e.g. "model.hidden=[16]"


@dataclass(frozen=True)
class Panel:
    param: str
    points: list[Point]  # the experiments, in dvc exp show's order
    baseline: Point
    log_x: bool
    categories: list[str] | None  # x labels in order, where the values are not numbers


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def sweep_params(base: Baseline) -> list[str]:
    """The params any experiment changed from its baseline, in params.yaml's order."""
    changed = set().union(*(changed_params(exp, base.run) for exp in base.experiments))
    order = list(base.run.params) + [k for exp in base.experiments for k in exp.params]
    return sorted(changed, key=order.index)


def _point(exp: Experiment, param: str, others: list[str]) -> Point:
    group = " ".join(f"{k}={format_param(exp.params.get(k))}" for k in others)
    return Point(exp.name, exp.params.get(param), exp.metric(METRIC), exp.seed_std(), group)


def _axis(values: list[Any], param: str) -> tuple[bool, list[str] | None]:
    """(log x?, category labels or None) for a param's values."""
    if not all(is_number(v) for v in values):
        labels = list(dict.fromkeys(format_param(v) for v in values))
        try:  # numeric order where the values compare (lists of widths do), else first seen
            order = sorted(dict.fromkeys(json.dumps(v) for v in values), key=json.loads)
            labels = [format_param(json.loads(v)) for v in order]
        except TypeError:
            pass
        return False, labels
    positive = all(v > 0 for v in values)
    spread = positive and max(values) / min(values) >= 100
    return positive and (param.rpartition(".")[2] == "lr" or spread), None


def panels(base: Baseline) -> list[Panel]:
    """What the figure draws: one panel per changed param, from the finished experiments."""
    runs = [exp for exp in base.experiments if exp.metric(METRIC) is not None]
    if not runs:
        raise UserError("no finished experiments of this commit to plot; run a sweep first, e.g. "
                        "`dvc exp run --queue -S 'train.lr=0.0003,0.003'` then `dvc queue start`")
    if base.run.metric(METRIC) is None:
        raise UserError(f"the baseline {base.run.name} has no {METRIC} in metrics/eval.json; "
                        "commit the pipeline's results (dvc repro, then git commit) before the sweep")
    params = sweep_params(Baseline(base.run, runs))
    if not params:
        raise UserError("the experiments change no param of params.yaml; nothing to plot against")
    out = []
    for param in params:
        others = [k for k in params if k != param]
        points = [_point(exp, param, others) for exp in runs]
        baseline = _point(base.run, param, others)
        log_x, categories = _axis([p.x for p in points] + [baseline.x], param)
        out.append(Panel(param, points, baseline, log_x, categories))
    return out


def current_baseline(baselines: list[Baseline]) -> Baseline:
    """The current commit, as `dvc exp show` (without -A) lists it first."""
    if not baselines:
        raise UserError("dvc exp show lists no commit with results; commit the pipeline's results first")
    return baselines[0]


def _x(panel: Panel, value: Any) -> Any:
    return panel.categories.index(format_param(value)) if panel.categories is not None else value


def draw_panel(ax, panel: Panel) -> None:
    groups: dict[str, list[Point]] = {}
    for point in panel.points:
        groups.setdefault(point.group, []).append(point)
    for group, points in groups.items():
        points = sorted(points, key=lambda p: _x(panel, p.x))
        yerr = [p.yerr or 0.0 for p in points] if any(p.yerr is not None for p in points) else None
        ax.errorbar([_x(panel, p.x) for p in points], [p.y for p in points], yerr=yerr, marker="o",
                    capsize=3, label=group or "experiments", gid=f"points {group}")
    base = panel.baseline
    ax.axhline(base.y, color="0.4", linestyle="--", linewidth=1)
    ax.errorbar([_x(panel, base.x)], [base.y], yerr=None if base.yerr is None else [base.yerr], marker="*",
                markersize=14, color="black", linestyle="none", label=f"baseline {base.name}", gid="baseline")
    if panel.log_x:
        ax.set_xscale("log")
    if panel.categories is not None:
        ax.set_xticks(range(len(panel.categories)), panel.categories)
        ax.set_xlim(-0.5, len(panel.categories) - 0.5)
    ax.set_xlabel(panel.param + (" (log scale)" if panel.log_x else ""))
    ax.set_ylabel("test accuracy")
    ax.set_title(f"test accuracy vs {panel.param}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside, never over points


def draw(panel_list: list[Panel]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7 * len(panel_list), 4.2), layout="constrained")
    for ax, panel in zip(fig.subplots(1, len(panel_list), squeeze=False)[0], panel_list):
        draw_panel(ax, panel)
    return fig


def table_rows(base: Baseline, params: list[str]) -> list[list[str]]:
    """The page's table: the baseline, then each experiment: its params, accuracy, interval, seeds."""
    rows = []
    for exp in [base.run, *base.experiments]:
        if exp.metric(METRIC) is None:
            continue
        ci, std = exp.ci95(), exp.seed_std()
        seeds = exp.metrics.get("metrics/seeds.json", {}).get("n", 1)
        rows.append([f"{exp.name} (baseline)" if exp is base.run else exp.name,
                     *[format_param(exp.params.get(p)) for p in params], f"{exp.metric(METRIC):.4f}",
                     "-" if ci is None else f"{ci[0]:.4f}–{ci[1]:.4f}",
                     "-" if std is None else f"± {std:.4f} ({seeds} seeds)"])
    return rows


def page(base: Baseline, panel_list: list[Panel], png_name: str) -> str:
    from .compare import markdown_table

    params = [p.param for p in panel_list]
    header = ["experiment", *params, "test accuracy", "95% interval", "over seeds"]
    lines = [f"# Sweep: test accuracy against {', '.join(params)}", "",
             f"{len(panel_list[0].points)} experiments of {base.run.name} ({base.run.rev[:7]}), as "
             "`dvc exp show --json` records them. Each panel draws one param against the test accuracy, "
             "a line for each value of the other changed params; the star and the dashed line are the "
             "baseline commit. Error bars, where multiseed ran: ± one standard deviation of test accuracy "
             "over the training seeds (metrics/seeds.json). The 95% interval is the Wilson interval "
             "of one run's test accuracy.", "", f"![test accuracy against {', '.join(params)}]({png_name})", "",
             markdown_table([dict(zip(header, row)) for row in table_rows(base, params)])]
    return "\n".join(lines) + "\n"


def write_sweep(output: Path, dpi: int = 100, baselines: list[Baseline] | None = None) -> tuple[Path, Path]:
    """Draw the current commit's sweep into OUTPUT/sweep.png and OUTPUT/sweep.md; their paths."""
    from .atomic import atomic_path, write_text

    base = current_baseline(load_baselines() if baselines is None else baselines)
    panel_list = panels(base)
    png, md = output / "sweep.png", output / "sweep.md"
    with atomic_path(png) as tmp:
        # No "Software: matplotlib x.y" stamp, as report.save: the same figure gives the same bytes.
        draw(panel_list).savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    write_text(md, page(base, panel_list, png.name))
    return png, md


def cmd_sweep_plot(args) -> int:
    png, md = write_sweep(Path(args.output), args.dpi)
    print(f"wrote {png} and {md}")
    return 0


def add_parser(sub) -> None:
    plot = sub.add_parser("sweep-plot", help="draw each param a dvc exp sweep changed against test accuracy")
    plot.add_argument("--output", default="sweep", metavar="DIR",
                      help="folder for sweep.png and sweep.md (default: %(default)s)")
    plot.add_argument("--dpi", type=int, default=100, help="PNG resolution (default: %(default)s)")
    plot.set_defaults(func=cmd_sweep_plot)
