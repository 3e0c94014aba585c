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
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from . import paths
from .errors import UserError
from .evaluate import wilson_interval

RESAMPLES = 10_000


@dataclass
class Run:
    name: str
    actual: np.ndarray  # test labels, in test-set order
    predicted: np.ndarray
    seed_accuracies: list[float]  # test accuracy of each extra training seed (may be empty)

    def __post_init__(self) -> None:
        self.correct = self.predicted == self.actual


def _read(path: str, rev: str | None) -> str | None:
    if rev is None:
        try:
            return open(path).read()
        except FileNotFoundError:
            return None
    import dvc.api
    from dvc.exceptions import PathMissingError
    from dvc.scm import RevError

    try:
        return dvc.api.read(path, rev=rev)
    except RevError as exc:
        raise UserError(f"{rev!r} is not a git revision, branch or experiment here ({exc})") from None
    except PathMissingError:
        return None


def load_run(rev: str | None) -> Run:
    name = rev or "workspace"
    text = _read(str(paths.PREDICTIONS), rev)
    if text is None:
        raise UserError(f"{name}: no {paths.PREDICTIONS}; run the evaluate stage there (dvc repro evaluate)")
    table = pd.read_csv(io.StringIO(text))
    seeds = json.loads(_read(str(paths.SEEDS_METRICS), rev) or "{}")
    return Run(name, table["actual"].to_numpy(), table["predicted"].to_numpy(),
               list((seeds.get("test_acc") or {}).values()))


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


def compare(a: Run, b: Run, alpha: float = 0.05) -> dict[str, Any]:
    if len(a.actual) != len(b.actual) or not np.array_equal(a.actual, b.actual):
        raise UserError(f"{a.name} and {b.name} were evaluated on different test sets; "
                        "a paired comparison needs the same images in the same order")
    n = len(a.actual)
    acc = {}
    for run in (a, b):
        k = int(run.correct.sum())
        acc[run.name] = {"accuracy": k / n, "ci95": list(wilson_interval(k, n)), "errors": n - k}
    diff = float(b.correct.mean() - a.correct.mean())
    only_a, only_b, p = mcnemar(a.correct, b.correct)
    classes = sorted(set(a.actual.tolist()))
    per_class = []
    for c in classes:
        mask = a.actual == c
        cb, cc, cp = mcnemar(a.correct[mask], b.correct[mask])
        per_class.append({"class": int(c), "n": int(mask.sum()), "accuracy_a": float(a.correct[mask].mean()),
                          "accuracy_b": float(b.correct[mask].mean()), "only_a_right": cb,
                          "only_b_right": cc, "p": cp})
    for row, adjusted in zip(per_class, holm([r["p"] for r in per_class])):
        row["p_holm"] = adjusted
    result: dict[str, Any] = {
        "a": a.name, "b": b.name, "n": n, "alpha": alpha, "accuracy": acc,
        "difference": diff, "difference_ci95": list(paired_bootstrap(a.correct, b.correct)),
        "mcnemar": {"only_a_right": only_a, "only_b_right": only_b, "p": p},
        "per_class_significant": [r for r in per_class if r["p_holm"] < alpha],
        "per_class": per_class,
    }
    if len(a.seed_accuracies) >= 2 and len(b.seed_accuracies) >= 2:
        welch = stats.ttest_ind(b.seed_accuracies, a.seed_accuracies, equal_var=False)
        result["seeds"] = {"mean_a": float(np.mean(a.seed_accuracies)), "n_a": len(a.seed_accuracies),
                           "mean_b": float(np.mean(b.seed_accuracies)), "n_b": len(b.seed_accuracies),
                           "welch_t": float(welch.statistic), "p": float(welch.pvalue)}
    result["b_worse"] = p < alpha and diff < 0
    if p < alpha:
        result["verdict"] = f"{b.name} is {'worse' if diff < 0 else 'better'} than {a.name} ({p_text(p)})"
    else:
        result["verdict"] = f"no significant difference ({p_text(p)}): within run-to-run noise"
    return result


def p_text(p: float) -> str:
    """'p = 0.0024'; a p-value below float range (it underflows to 0) is not zero."""
    return "p < 1e-300" if p < 1e-300 else f"p = {p:.2g}"


def format_table(r: dict[str, Any]) -> str:
    rows = [{"run": name, "accuracy": f"{v['accuracy']:.4f}",
             "95% interval": f"{v['ci95'][0]:.4f}–{v['ci95'][1]:.4f}", "errors": v["errors"]}
            for name, v in r["accuracy"].items()]
    mc = r["mcnemar"]
    lines = [pd.DataFrame(rows).to_string(index=False), "",
             f"difference {r['b']} - {r['a']}: {r['difference']:+.4f} "
             f"(95% paired bootstrap {r['difference_ci95'][0]:+.4f} to {r['difference_ci95'][1]:+.4f})",
             f"McNemar (exact): only {r['a']} right on {mc['only_a_right']} images, only {r['b']} right on "
             f"{mc['only_b_right']}; {p_text(mc['p'])}"]
    if "seeds" in r:
        s = r["seeds"]
        lines.append(f"over seeds: mean {s['mean_a']:.4f} (n={s['n_a']}) vs {s['mean_b']:.4f} (n={s['n_b']}); "
                     f"Welch {p_text(s['p'])}")
    if r["per_class_significant"]:
        table = pd.DataFrame(r["per_class_significant"])[["class", "accuracy_a", "accuracy_b", "p_holm"]]
        table["p_holm"] = table["p_holm"].map(lambda v: "<1e-300" if v < 1e-300 else f"{v:.2g}")
        lines += [f"classes that changed significantly (Holm-corrected, alpha {r['alpha']}):",
                  table.to_string(index=False, float_format=lambda v: f"{v:.4f}")]
    else:
        lines.append(f"no class changed significantly on its own (Holm-corrected, alpha {r['alpha']})")
    lines += ["", r["verdict"]]
    return "\n".join(lines)
