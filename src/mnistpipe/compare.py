"""Compare two runs on the same test images: is the difference beyond noise?

A side is a git revision, branch, tag or `dvc exp` name (read with dvc.api, no checkout),
or None for the workspace. Every statistic pairs the two runs image by image, which is
far more sensitive than comparing two accuracies: most images are right (or wrong) in
both, and only the images where the runs disagree carry information.

- accuracy of each side with its 95% Wilson interval;
- the paired difference B - A with a 95% paired bootstrap interval (resampling images);
- the exact McNemar test on the discordant images (b: only A right, c: only B right);
- per class, McNemar with Holm's correction for testing every class;
- with several training seeds on both sides (multiseed), Welch's t-test on their accuracies.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from . import paths
from .errors import UserError
from .evaluate import SeedAccuracies, wilson_interval

RESAMPLES = 10_000
FIX = "rerun the evaluate stage there (dvc repro evaluate)"


@dataclass
class Run:
    name: str
    actual: np.ndarray  # test labels, in test-set order
    predicted: np.ndarray
    seed_accuracies: list[float]  # test accuracy of each training seed's model (empty with one seed)

    def __post_init__(self) -> None:
        self.correct = self.predicted == self.actual


def _read(path: str, rev: str | None) -> str | None:
    """The text of `path` at `rev` (None: the workspace), or None where it does not exist."""
    try:
        if rev is None:
            with open(path, encoding="utf-8") as f:
                return f.read()
        return _read_at(path, rev)
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise UserError(f"{rev or 'workspace'}: {path} is not a text file; {FIX}") from None
    except OSError as exc:
        raise UserError(f"{rev or 'workspace'}: cannot read {path}: {exc.strerror or exc}") from None


def _read_at(path: str, rev: str) -> str | None:
    import dvc.api
    from dvc.exceptions import PathMissingError
    from dvc.scm import RevError, SCMError

    try:
        return dvc.api.read(path, rev=rev)
    except RevError as exc:
        raise UserError(f"{rev!r} is not a git revision, branch or experiment here ({exc})") from None
    except SCMError as exc:  # also DVC's NotDvcRepoError
        raise UserError(f"cannot read {path} at {rev!r}: {exc}; run compare inside the project's git clone") from None
    except PathMissingError:
        return None


def parse_predictions(text: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    """The `actual` and `predicted` columns of a predictions.csv, checked: a verdict must never
    come from a table that is not what the evaluate stage writes."""
    try:
        table = pd.read_csv(io.StringIO(text), dtype=str)  # cells as written, for the messages
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise UserError(f"{source}: not a readable CSV table ({str(exc).splitlines()[0]}); {FIX}") from None
    missing = [c for c in ("actual", "predicted") if c not in table.columns]
    if missing or table.empty:
        problem = f"no {' or '.join(repr(c) for c in missing)} column" if missing else "no rows"
        raise UserError(f"{source}: {problem}; {FIX}")
    for column in ("actual", "predicted"):
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna() | (values < 0) | (values != values.round())
        if bad.any():
            row = int(np.argmax(bad.to_numpy()))
            raise UserError(f"{source}: row {row + 1}: {column} is {table[column].iloc[row]!r}, not a class "
                            f"number (a whole number, at least 0); {FIX}")
    return table["actual"].to_numpy(np.int64), table["predicted"].to_numpy(np.int64)


def load_run(rev: str | None) -> Run:
    name = rev or "workspace"
    text = _read(str(paths.PREDICTIONS), rev)
    if text is None:
        raise UserError(f"{name}: no {paths.PREDICTIONS}; {FIX}")
    actual, predicted = parse_predictions(text, f"{name}: {paths.PREDICTIONS}")
    seeds_text = _read(str(paths.SEEDS_METRICS), rev)
    seeds = SeedAccuracies.from_json(seeds_text, f"{name}: {paths.SEEDS_METRICS}") if seeds_text else None
    return Run(name, actual, predicted, list(seeds.test_acc.values()) if seeds else [])


@dataclass(frozen=True)
class Accuracy:
    accuracy: float
    ci95: tuple[float, float]  # Wilson interval
    errors: int


@dataclass(frozen=True)
class McNemar:
    only_a_right: int
    only_b_right: int
    p: float


@dataclass(frozen=True)
class ClassChange:
    """One class's images: each side's accuracy and McNemar's test, raw and Holm-corrected."""
    label: int
    n: int
    accuracy_a: float
    accuracy_b: float
    only_a_right: int
    only_b_right: int
    p: float
    p_holm: float


@dataclass(frozen=True)
class SeedTest:
    """Welch's t-test on the two sides' per-seed accuracies."""
    mean_a: float
    n_a: int
    mean_b: float
    n_b: int
    welch_t: float
    p: float


@dataclass(frozen=True)
class Comparison:
    """What `compare` found; `mnistpipe compare --json` prints it as a dict."""
    a: str
    b: str
    n: int
    alpha: float
    accuracy: dict[str, Accuracy]  # by run name
    difference: float  # accuracy of b - accuracy of a
    difference_ci95: tuple[float, float]  # paired bootstrap
    mcnemar: McNemar
    per_class: list[ClassChange]
    seeds: SeedTest | None
    verdict: str
    b_worse: bool
    per_class_significant: list[ClassChange] = field(init=False)

    def __post_init__(self) -> None:
        significant = [c for c in self.per_class if c.p_holm < self.alpha]
        object.__setattr__(self, "per_class_significant", significant)


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> tuple[int, int, float]:
    """Exact McNemar: b = only A right, c = only B right; two-sided p under b ~ Bin(b+c, 1/2)."""
    b = int((a_correct & ~b_correct).sum())
    c = int((~a_correct & b_correct).sum())
    p = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)
    return b, c, p


def paired_bootstrap(a_correct: np.ndarray, b_correct: np.ndarray, resamples: int = RESAMPLES,
                     seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of mean(B) - mean(A) over images resampled with replacement.

    Each image's difference is -1, 0 or +1, so resampling n images is one multinomial draw
    of the three counts: exact, vectorized, and no n x resamples index matrix."""
    d = b_correct.astype(int) - a_correct.astype(int)
    n = len(d)
    probs = [np.mean(d == -1), np.mean(d == 0), np.mean(d == 1)]
    counts = np.random.default_rng(seed).multinomial(n, probs, size=resamples)
    diffs = (counts[:, 2] - counts[:, 0]) / n
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(low), float(high)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (controls the family-wise error rate)."""
    m = len(p_values)
    order = np.argsort(p_values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted.tolist()


def compare(a: Run, b: Run, alpha: float = 0.05) -> Comparison:
    if not 0 < alpha <= 0.5:
        raise UserError(f"--alpha {alpha}: the significance level must lie in (0, 0.5], e.g. 0.05")
    if len(a.actual) != len(b.actual) or not np.array_equal(a.actual, b.actual):
        raise UserError(f"{a.name} and {b.name} were evaluated on different test sets; "
                        "a paired comparison needs the same images in the same order")
    n = len(a.actual)
    accuracy = {run.name: Accuracy(int(run.correct.sum()) / n, wilson_interval(int(run.correct.sum()), n),
                                   n - int(run.correct.sum())) for run in (a, b)}
    diff = float(b.correct.mean() - a.correct.mean())
    test = McNemar(*mcnemar(a.correct, b.correct))
    if test.p < alpha:
        verdict = f"{b.name} is {'worse' if diff < 0 else 'better'} than {a.name} ({p_text(test.p)})"
    else:
        verdict = f"no significant difference ({p_text(test.p)}): within run-to-run noise"
    return Comparison(a.name, b.name, n, alpha, accuracy, diff, paired_bootstrap(a.correct, b.correct), test,
                      per_class_changes(a, b), seed_test(a, b), verdict, b_worse=test.p < alpha and diff < 0)


def per_class_changes(a: Run, b: Run) -> list[ClassChange]:
    """McNemar on each class's images, with Holm's correction for testing every class."""
    rows = []
    for c in sorted(set(a.actual.tolist())):
        mask = a.actual == c
        rows.append((int(c), int(mask.sum()), float(a.correct[mask].mean()), float(b.correct[mask].mean()),
                     *mcnemar(a.correct[mask], b.correct[mask])))
    return [ClassChange(*row, p_holm=adjusted) for row, adjusted in zip(rows, holm([r[-1] for r in rows]))]


def seed_test(a: Run, b: Run) -> SeedTest | None:
    """Welch's t-test when both sides have at least two training seeds."""
    if len(a.seed_accuracies) < 2 or len(b.seed_accuracies) < 2:
        return None
    welch = stats.ttest_ind(b.seed_accuracies, a.seed_accuracies, equal_var=False)
    return SeedTest(float(np.mean(a.seed_accuracies)), len(a.seed_accuracies), float(np.mean(b.seed_accuracies)),
                    len(b.seed_accuracies), float(welch.statistic), float(welch.pvalue))


def p_text(p: float) -> str:
    """'p = 0.0024'; a p-value below float range (it underflows to 0) is not zero."""
    return "p < 1e-300" if p < 1e-300 else f"p = {p:.2g}"


def _accuracy_rows(r: Comparison, show) -> list[dict]:
    return [{"run": show(name), "accuracy": f"{v.accuracy:.4f}", "95% interval": f"{v.ci95[0]:.4f}–{v.ci95[1]:.4f}",
             "errors": v.errors} for name, v in r.accuracy.items()]


def _findings(r: Comparison, show) -> list[str]:
    """The paired difference, McNemar's test and, with seeds on both sides, Welch's; run names by `show`."""
    mc = r.mcnemar
    lines = [f"difference {show(r.b)} - {show(r.a)}: {r.difference:+.4f} "
             f"(95% paired bootstrap {r.difference_ci95[0]:+.4f} to {r.difference_ci95[1]:+.4f})",
             f"McNemar (exact): only {show(r.a)} right on {mc.only_a_right} images, only {show(r.b)} right on "
             f"{mc.only_b_right}; {p_text(mc.p)}"]
    if r.seeds is not None:
        s = r.seeds
        lines.append(f"over seeds: mean {s.mean_a:.4f} (n={s.n_a}) vs {s.mean_b:.4f} (n={s.n_b}); "
                     f"Welch {p_text(s.p)}")
    return lines


def _p_short(p: float) -> str:
    return "<1e-300" if p < 1e-300 else f"{p:.2g}"


def format_table(r: Comparison) -> str:
    lines = [pd.DataFrame(_accuracy_rows(r, str)).to_string(index=False), "", *_findings(r, str)]
    if r.per_class_significant:
        table = pd.DataFrame([{"class": c.label, "accuracy_a": c.accuracy_a, "accuracy_b": c.accuracy_b,
                               "p_holm": _p_short(c.p_holm)} for c in r.per_class_significant])
        lines += [f"classes that changed significantly (Holm-corrected, alpha {r.alpha}):",
                  table.to_string(index=False, float_format=lambda v: f"{v:.4f}")]
    else:
        lines.append(f"no class changed significantly on its own (Holm-corrected, alpha {r.alpha})")
    lines += ["", r.verdict]
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    """A GitHub-flavoured markdown table of `rows` (dicts with the same keys, in column order)."""
    header = list(rows[0])
    cell = lambda v: str(v).replace("|", "\\|")  # noqa: E731 (a pipe in a run name would split the row)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(row[k]) for k in header) + " |" for row in rows]
    return "\n".join(lines)


def format_markdown(r: Comparison) -> str:
    """The comparison as markdown for a pull-request comment: the verdict first, then the table."""
    code = lambda name: f"`{name}`"  # noqa: E731
    lines = [f"**{r.verdict}**", "", markdown_table(_accuracy_rows(r, code)), "",
             *(f"- {line}" for line in _findings(r, code))]
    if r.per_class_significant:
        lines += ["", f"Classes that changed significantly (Holm-corrected, alpha {r.alpha}):", "",
                  markdown_table([{"class": c.label, f"`{r.a}` accuracy": f"{c.accuracy_a:.4f}",
                                   f"`{r.b}` accuracy": f"{c.accuracy_b:.4f}", "p (Holm)": _p_short(c.p_holm)}
                                  for c in r.per_class_significant])]
    else:
        lines.append(f"- no class changed significantly on its own (Holm-corrected, alpha {r.alpha})")
    return "\n".join(lines)
