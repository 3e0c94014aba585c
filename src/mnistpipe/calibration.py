"""Calibrated probabilities: temperature scaling (Guo et al., 2017) and how to measure it.

A network trained to low loss is overconfident: its softmax says 1.000 for digits it
gets wrong. Dividing the logits by one temperature T > 1, fitted on the validation
split, spreads the probabilities without changing any prediction (the argmax stays).
Expected calibration error (ECE) measures the gap: the test images are binned by
confidence, and each bin's |accuracy - mean confidence| is weighted by its size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BINS = 15  # equal-width confidence bins, as in Guo et al.
LOG_T_RANGE = (math.log(0.05), math.log(20.0))


def probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Calibrated class probabilities: softmax(logits / T). The one place T is applied."""
    return (logits / temperature).softmax(1)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T that minimizes the negative log-likelihood of softmax(logits / T).

    A bounded Brent search over log T on a float64 loss: one parameter needs no gradient
    machinery, and the result is the same on every machine (rounded to 6 digits).
    """
    from scipy.optimize import minimize_scalar  # here: predict imports this module, and needs no scipy

    logits, labels = logits.detach().double().cpu(), labels.cpu()
    nll = lambda log_t: float(F.cross_entropy(logits / math.exp(log_t), labels))  # noqa: E731
    best = minimize_scalar(nll, bounds=LOG_T_RANGE, method="bounded", options={"xatol": 1e-6})
    return round(math.exp(best.x), 6)


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> list[dict[str, float]]:
    """Per confidence bin: its range, image count, mean confidence and accuracy."""
    confidence, predicted = probs.max(1)
    correct = (predicted == labels).double()
    index = (confidence.double() * bins).long().clamp(max=bins - 1)  # confidence 1.0 -> last bin
    count = torch.bincount(index, minlength=bins).double()
    conf_sum = torch.bincount(index, weights=confidence.double(), minlength=bins)
    correct_sum = torch.bincount(index, weights=correct, minlength=bins)
    return [{"low": b / bins, "high": (b + 1) / bins, "count": int(count[b]),
             "confidence": float(conf_sum[b] / count[b]) if count[b] else float("nan"),
             "accuracy": float(correct_sum[b] / count[b]) if count[b] else float("nan")}
            for b in range(bins)]


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> float:
    rows = reliability(probs, labels, bins)
    n = sum(r["count"] for r in rows)
    return sum(r["count"] / n * abs(r["accuracy"] - r["confidence"]) for r in rows if r["count"])


def reliability_table(probs: dict[str, torch.Tensor], labels: torch.Tensor) -> list[dict[str, object]]:
    """One row per bin with each named set of probabilities' count, confidence and accuracy
    (empty for an empty bin): the data of the report's reliability diagram."""
    tables = {name: reliability(p, labels) for name, p in probs.items()}
    rows = []
    for b in range(BINS):
        row: dict[str, object] = {"low": round(b / BINS, 6), "high": round((b + 1) / BINS, 6)}
        for name, table in tables.items():
            r = table[b]
            row |= {f"count_{name}": r["count"],
                    f"confidence_{name}": round(r["confidence"], 6) if r["count"] else "",
                    f"accuracy_{name}": round(r["accuracy"], 6) if r["count"] else ""}
        rows.append(row)
    return rows
