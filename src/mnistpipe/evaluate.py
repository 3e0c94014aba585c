"""Evaluation: logits in large batches, accuracy, loss, per-class precision/recall/F1."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits for normalized inputs `x` (on the model's device), in eval mode."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


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
