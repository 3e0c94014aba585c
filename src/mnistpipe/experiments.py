"""DVC experiments as data, and `mnistpipe best`: which one wins, and is it beyond noise?

`dvc exp show --json` lists baselines (the workspace, then commits), each with its
experiments; every run carries its params.yaml and DVC metrics (evaluate's headline,
metrics/eval.json, and metrics/seeds.json). `read_show` turns that document into
`Experiment`s (flat params and metrics), so choosing the best and drawing a sweep are pure
functions of it, tested on canned documents. The one DVC call is `exp_show_json`; queued,
running and failed experiments have no metrics and are skipped.

The rest of a run's numbers (the accuracy's interval, loss, ...: metrics/eval_detail.json,
metrics/train.json) are in git but not DVC metrics, which keeps `dvc exp show` narrow; every
run is a commit, so `with_recorded` reads them from it (`git show REV:PATH`).

The best run is judged against the commit it came from with compare's paired test
(McNemar on the test images' predictions), so "better" means beyond run-to-run noise.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import paths
from .errors import UserError

PARAMS_FILE = str(paths.PARAMS)
EVAL_FILE = str(paths.EVAL_METRICS)
DETAIL_FILE = str(paths.EVAL_DETAIL)
SEEDS_FILE = str(paths.SEEDS_METRICS)
EVALUATE_FILES = (EVAL_FILE, DETAIL_FILE)  # where a bare metric name is looked up, in order
RECORDED = (DETAIL_FILE, str(paths.TRAIN_METRICS))  # read from each run's commit, not from DVC
# Metrics where smaller is better; everything else (accuracy, macro_f1, ...) is higher-is-better.
LOWER_IS_BETTER = {"loss", "ece", "ece_raw", "errors", "train_loss", "val_loss"}


@dataclass(frozen=True)
class Experiment:
    """One run as `dvc exp show --json` lists it: an experiment, or a baseline commit."""
    name: str  # the experiment's name, or the baseline's branch (else its short rev)
    rev: str  # the commit
    baseline: str  # name of the commit it came from (itself, for a baseline)
    params: dict[str, Any]  # params.yaml, flattened: {"train.lr": 0.001, "model.hidden": [128, 64]}
    metrics: dict[str, dict[str, Any]]  # by file: {"metrics/eval.json": {"accuracy": 0.97, ...}}

    def metric(self, key: str) -> float | None:
        """`key` of metrics/eval.json or eval_detail.json, or `FILE:KEY` of another file; None where absent."""
        file, _, name = key.rpartition(":")
        values = [self.metrics.get(f, {}).get(name) for f in ([file] if file else EVALUATE_FILES)]
        value = next((v for v in values if v is not None), None)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def numbers(self, file: str = "") -> list[str]:
        """The keys with numbers in `file` (by default evaluate's two files), sorted."""
        return sorted({k for f in ([file] if file else EVALUATE_FILES) for k, v in self.metrics.get(f, {}).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)})

    def ci95(self) -> tuple[float, float] | None:
        """The test accuracy's 95% Wilson interval that evaluate records (eval_detail.json), where present."""
        low, high = self.metric("accuracy_ci95_low"), self.metric("accuracy_ci95_high")
        return None if low is None or high is None else (low, high)

    def seed_std(self) -> float | None:
        """The spread of test accuracy over training seeds (metrics/seeds.json), with 2+ seeds."""
        seeds = self.metrics.get(SEEDS_FILE, {})
        return float(seeds["test_acc_std"]) if seeds.get("n", 1) > 1 and "test_acc_std" in seeds else None


@dataclass(frozen=True)
class Baseline:
    """A commit and the experiments that came from it, as run: params and metrics present."""
    run: Experiment
    experiments: list[Experiment] = field(default_factory=list)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1}; lists stay values (model.hidden)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _run(entry: dict[str, Any], name: str, baseline: str) -> Experiment | None:
    """An entry of the JSON (a baseline or an experiment's rev); None if it has no results."""
    data = entry.get("data") or {}
    metrics = {file: (m or {}).get("data") or {} for file, m in (data.get("metrics") or {}).items()}
    params = ((data.get("params") or {}).get(PARAMS_FILE) or {}).get("data")
    if not params or not metrics.get(EVAL_FILE):
        return None
    return Experiment(name, data.get("rev") or entry["rev"], baseline, flatten(params), metrics)


def read_show(shown: list[dict[str, Any]]) -> list[Baseline]:
    """The commits of a `dvc exp show --json` document (not the workspace), each with its finished
    experiments; a commit without results of its own is kept only if its experiments have some."""
    baselines = []
    for entry in shown:
        if entry.get("rev") == "workspace":
            continue
        name = entry.get("name") or entry["rev"][:7]
        exps = []
        for exp in entry.get("experiments") or []:
            for rev in exp.get("revs") or []:
                run = _run(rev, rev.get("name") or exp.get("name") or rev["rev"][:7], name)
                if run:
                    exps.append(run)
        own = _run(entry, name, name)
        if own or exps:
            baselines.append(Baseline(own or Experiment(name, entry["rev"], name, {}, {}), exps))
    return baselines


def with_recorded(baselines: list[Baseline], read: Callable[[str, str], dict | None]) -> list[Baseline]:
    """`baselines` with each run's RECORDED files added to its metrics, as `read(rev, path)`
    gives them (None: not in that commit, e.g. one from before the file existed)."""
    def add(exp: Experiment) -> Experiment:
        found = {path: data for path in RECORDED if (data := read(exp.rev, path)) is not None}
        return dataclasses.replace(exp, metrics={**found, **exp.metrics})
    return [Baseline(add(b.run), [add(exp) for exp in b.experiments]) for b in baselines]


def git_reader(cwd: str | None = None) -> Callable[[str, str], dict | None]:
    """read(rev, path): the JSON object at PATH in commit REV of the git repository in `cwd`, or None."""
    def read(rev: str, path: str) -> dict | None:
        done = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=cwd, capture_output=True, text=True)
        try:
            data = json.loads(done.stdout) if done.returncode == 0 else None
        except ValueError:
            return None
        return data if isinstance(data, dict) else None
    return read


def load_baselines(all_commits: bool = False, cwd: str | None = None) -> list[Baseline]:
    """The commits `dvc exp show` lists and their finished experiments, with every run's numbers."""
    return with_recorded(read_show(exp_show_json(all_commits, cwd)), git_reader(cwd))


def exp_show_json(all_commits: bool = False, cwd: str | None = None) -> list[dict[str, Any]]:
    """`dvc exp show --json` of the project in `cwd` (the current directory by default)."""
    cmd = [sys.executable, "-m", "dvc", "exp", "show", "--json", *(["-A"] if all_commits else [])]
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise UserError(f"cannot run DVC ({exc}); install the project with its dependencies") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserError(f"`dvc exp show --json` failed: {last}; run mnistpipe in the project's git+DVC "
                        "clone, after at least one commit")
    return json.loads(done.stdout)


def higher_is_better(metric: str) -> bool:
    return metric.rpartition(":")[2] not in LOWER_IS_BETTER


def changed_params(run: Experiment, baseline: Experiment) -> dict[str, Any]:
    """The params of `run` that differ from its baseline's."""
    return {k: v for k, v in run.params.items() if baseline.params.get(k) != v}


# ---------------------------------------------------------------- `mnistpipe best`

@dataclass(frozen=True)
class Choice:
    """The experiments ranked by one metric, best first; `tied` names every run equal to the best."""
    metric: str
    higher_is_better: bool
    ranking: list[Experiment]
    tied: list[str]
    baselines: dict[str, Experiment]  # by name

    @property
    def best(self) -> Experiment:
        return self.ranking[0]


def choose(baselines: list[Baseline], metric: str = "accuracy") -> Choice:
    """Rank the finished experiments by `metric`; among equals, dvc exp show's order (newest first)."""
    runs = [exp for b in baselines for exp in b.experiments]
    if not runs:
        raise UserError("no finished experiments here; run some first, e.g. "
                        "`dvc exp run --queue -S 'train.lr=0.0003,0.003'` then `dvc queue start` "
                        "(or pass -A for the experiments of every commit)")
    candidates = [exp for exp in runs if exp.metric(metric) is not None]
    if not candidates:
        file, _, key = metric.rpartition(":")
        known = ", ".join(runs[0].numbers(file))
        raise UserError(f"--metric {metric}: no experiment records {key!r} in {file or ' or '.join(EVALUATE_FILES)}; "
                        f"choose one of: {known or 'none there'} (or FILE:KEY for another metrics file)")
    higher = higher_is_better(metric)
    ranking = sorted(candidates, key=lambda exp: -exp.metric(metric) if higher else exp.metric(metric))
    tied = [exp.name for exp in ranking if exp.metric(metric) == ranking[0].metric(metric)]
    return Choice(metric, higher, ranking, tied if len(tied) > 1 else [],
                  {b.run.name: b.run for b in baselines})


@dataclass(frozen=True)
class Verdict:
    """The best run against its baseline: compare's paired test on the test images."""
    baseline: str
    accuracy_difference: float  # best - baseline
    mcnemar_p: float
    significantly_better: bool
    significantly_worse: bool
    text: str


def judge(choice: Choice, alpha: float = 0.05, load=None) -> Verdict:
    """Is the best run beyond noise from the commit it came from? `load(rev, name)` gives a
    compare.Run (the default reads predictions.csv at that revision)."""
    from .compare import compare, p_text

    load = load or _load_run
    best, base = choice.best, choice.baselines[choice.best.baseline]
    with warnings.catch_warnings():  # the seed test's scipy warning on equal seeds: unused here
        warnings.simplefilter("ignore", RuntimeWarning)
        result = compare(load(base.rev, base.name), load(best.name, best.name), alpha)
    better = result.mcnemar.p < alpha and result.difference > 0
    test = f"test accuracy {result.difference:+.4f}, McNemar {p_text(result.mcnemar.p)} on {result.n} test images"
    if better:
        text = f"{best.name} is significantly better than its baseline {base.name} ({test})"
    elif result.b_worse:
        text = f"no experiment beats {base.name}: the best, {best.name}, is significantly worse ({test})"
    else:
        text = (f"nothing is significantly better than {base.name}: the best, {best.name}, is within "
                f"run-to-run noise of it ({test}, alpha {alpha})")
    return Verdict(base.name, result.difference, result.mcnemar.p, better, result.b_worse, text)


def _load_run(rev: str, name: str):
    import dataclasses

    from .compare import load_run

    return dataclasses.replace(load_run(rev), name=name)


def format_param(value: Any) -> str:
    """A param as params.yaml would show it: 0.003, 1e-05, [128, 64], mlp."""
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def format_metric(value: float | None) -> str:
    """A metric for a table: 0.9767, 233, 0.00045; '-' where absent."""
    if value is None:
        return "-"
    if value.is_integer() and abs(value) >= 1:
        return str(int(value))
    return f"{value:.4f}" if abs(value) >= 0.01 else f"{value:.3g}"


def ranking_rows(choice: Choice) -> list[dict[str, Any]]:
    """Each ranked run: name, baseline, the metric, its accuracy interval, what it changed."""
    rows = []
    for exp in choice.ranking:
        changed = changed_params(exp, choice.baselines[exp.baseline])
        rows.append({"name": exp.name, "baseline": exp.baseline, "value": exp.metric(choice.metric),
                     "ci95": exp.ci95(), "changed": changed})
    return rows


def best_json(choice: Choice, verdict: Verdict, applied: bool) -> dict[str, Any]:
    best = choice.best
    return {"metric": choice.metric, "higher_is_better": choice.higher_is_better, "best": best.name,
            "value": best.metric(choice.metric), "accuracy_ci95": best.ci95(), "tied": choice.tied,
            "baseline": verdict.baseline, "baseline_value": choice.baselines[best.baseline].metric(choice.metric),
            "accuracy_difference": verdict.accuracy_difference, "mcnemar_p": verdict.mcnemar_p,
            "significantly_better": verdict.significantly_better,
            "significantly_worse": verdict.significantly_worse, "verdict": verdict.text, "applied": applied,
            "ranking": ranking_rows(choice)}


def format_best(choice: Choice, verdict: Verdict) -> str:
    """The ranking as a table (best first, then its baseline), the tie if any, and the verdict."""
    base = choice.baselines[choice.best.baseline]
    table = [("", "experiment", choice.metric, "95% interval (accuracy)", "changed params")]
    for i, row in enumerate(ranking_rows(choice)):
        table.append(("*" if i == 0 else "", row["name"], format_metric(row["value"]), _interval(row["ci95"]),
                      " ".join(f"{k}={format_param(v)}" for k, v in row["changed"].items()) or "(none)"))
    table.append(("", f"{base.name} (baseline)", format_metric(base.metric(choice.metric)), _interval(base.ci95()), ""))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = [f"best by {choice.metric} ({'higher' if choice.higher_is_better else 'lower'} is better) "
             f"among {len(choice.ranking)} experiments:", ""]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table]
    lines.append("")
    if choice.tied:
        lines.append(f"tie: {', '.join(choice.tied)} have the same {choice.metric} "
                     f"({format_metric(choice.best.metric(choice.metric))}); the test below is for {choice.best.name}")
    lines.append(verdict.text)
    return "\n".join(lines)


def _interval(ci: tuple[float, float] | None) -> str:
    return "-" if ci is None else f"{ci[0]:.4f}–{ci[1]:.4f}"


def apply(choice: Choice, cwd: str | None = None) -> None:
    """`dvc exp apply` the best run: its params, metrics and outputs into the workspace."""
    if choice.tied:
        raise UserError(f"--apply: {', '.join(choice.tied)} tie on {choice.metric}; choose with another "
                        f"--metric, or apply one yourself: dvc exp apply {choice.tied[0]}")
    cmd = [sys.executable, "-m", "dvc", "exp", "apply", choice.best.name]
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserError(f"`dvc exp apply {choice.best.name}` failed: {last}")


def cmd_best(args) -> int:
    choice = choose(load_baselines(args.all_commits), args.metric)
    verdict = judge(choice, args.alpha)
    if args.apply:
        apply(choice)
    if args.json:
        print(json.dumps(best_json(choice, verdict, args.apply), indent=2))
    else:
        print(format_best(choice, verdict))
        if args.apply:
            print(f"applied {choice.best.name}: the workspace now holds its params, metrics and outputs")
    return 0


def add_parser(sub) -> None:
    best = sub.add_parser("best", help="the best dvc experiment by a metric, and is it beyond noise?")
    best.add_argument("--metric", default="accuracy",
                      help="a key of metrics/eval.json or metrics/eval_detail.json (accuracy, macro_f1, loss, "
                           "ece, ...) or FILE:KEY, e.g. metrics/train.json:val_acc "
                           f"(lower is better for {', '.join(sorted(LOWER_IS_BETTER))}) (default: %(default)s)")
    best.add_argument("-A", "--all-commits", action="store_true",
                      help="experiments of every commit (default: of the current commit)")
    best.add_argument("--alpha", type=float, default=0.05, help="significance level (default: %(default)s)")
    best.add_argument("--apply", action="store_true", help="dvc exp apply the best one (refused on a tie)")
    best.add_argument("--json", action="store_true", help="print one JSON document")
    best.set_defaults(func=cmd_best)
