"""Evaluation: logits in large batches, accuracy, loss, per-class precision/recall/F1."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .data.prepared import Split, normalize
from .errors import UserError

# The evaluate stage's headline, its DVC metrics (metrics/eval.json): the columns `dvc exp show`
# leads with. Its other numbers (the accuracy's interval, loss, errors, ece_raw) go to
# metrics/eval_detail.json, a file in git but not a DVC metric, so the table stays narrow.
HEADLINE = ("accuracy", "macro_f1", "ece")


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits for normalized inputs `x` (on the model's device), in eval mode."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def split_logits(model: nn.Module, split: Split, mean: float, std: float, device: torch.device | str,
                 batch_size: int) -> torch.Tensor:
    """The model's logits on `split`, its images normalized with the training split's `mean` and `std`."""
    return predict_logits(model.to(device), normalize(split.images, mean, std, device), batch_size)


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    loss = F.cross_entropy(logits.float(), labels)
    acc = (logits.argmax(1) == labels).float().mean()
    return float(loss), float(acc)


def confusion_matrix(actual: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[actual, predicted] counts."""
    flat = actual.to(torch.int64) * num_classes + predicted.to(torch.int64)
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (sound near 0 and 1, unlike the normal one)."""
    from scipy.stats import binomtest

    if n == 0:
        return 0.0, 1.0
    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Flat metrics for dvc (overall numbers, accuracy with its 95% interval) and one row per
    class (precision, recall, F1, support), kept apart so `dvc exp show` stays narrow."""
    num_classes = logits.shape[1]
    logits, labels = logits.cpu(), labels.cpu()
    predicted = logits.argmax(1)
    cm = confusion_matrix(labels, predicted, num_classes).to(torch.float64)
    true_pos = cm.diag()
    precision = true_pos / cm.sum(0).clamp(min=1)
    recall = true_pos / cm.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    loss, acc = loss_and_accuracy(logits, labels)
    correct = int((predicted == labels).sum())
    low, high = wilson_interval(correct, len(labels))
    metrics = {
        "accuracy": round(acc, 6),
        "accuracy_ci95_low": round(low, 6),
        "accuracy_ci95_high": round(high, 6),
        "loss": round(loss, 6),
        "macro_f1": round(float(f1.mean()), 6),
        "errors": len(labels) - correct,
    }
    per_class = [{"class": c, "precision": round(float(precision[c]), 6), "recall": round(float(recall[c]), 6),
                  "f1": round(float(f1[c]), 6), "support": int(cm[c].sum())}
                 for c in range(num_classes)]
    return metrics, per_class


@dataclass(frozen=True)
class SeedAccuracies:
    """metrics/seeds.json: the test accuracy of each training seed's model, the main one's
    included, by seed; with one seed the file says only {"n": 1}."""
    test_acc: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        values = list(self.test_acc.values())
        if len(values) <= 1:
            return {"n": 1}
        return {"n": len(values), "test_acc_mean": round(statistics.mean(values), 6),
                "test_acc_std": round(statistics.stdev(values), 6),
                "test_acc_min": min(values), "test_acc_max": max(values), "test_acc": self.test_acc}

    @classmethod
    def from_json(cls, text: str, source: str) -> SeedAccuracies:
        """Parse what to_json wrote; anything else is a UserError naming `source`."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise UserError(f"{source}: not JSON ({exc}); rerun the evaluate stage (dvc repro evaluate)") from None
        if not isinstance(data, dict) or not isinstance(data.get("n"), int):
            raise UserError(f"{source}: expected an object with a whole number \"n\", as the evaluate stage "
                            "writes; rerun it (dvc repro evaluate)")
        accuracies = data.get("test_acc", {}) if data["n"] > 1 else {}
        if not isinstance(accuracies, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in accuracies.values()):
            raise UserError(f"{source}: \"test_acc\" must map each seed to an accuracy between 0 and 1; "
                            "rerun the evaluate stage (dvc repro evaluate)")
        return cls({str(k): float(v) for k, v in accuracies.items()})
