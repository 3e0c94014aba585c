"""Evaluation metrics on small cases computed by hand."""

from __future__ import annotations

import pytest
import torch

from mnistpipe.evaluate import classification_metrics, confusion_matrix


def logits_for(predicted: list[int], num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(predicted), num_classes).float() * 5


def test_confusion_matrix_rows_are_actual_columns_predicted():
    cm = confusion_matrix(torch.tensor([0, 0, 1]), torch.tensor([1, 1, 1]), 2)
    assert cm.tolist() == [[0, 2], [0, 1]]


def test_macro_f1_averages_classes_not_images():
    # class 0: 3 right, 1 missed, 1 false alarm -> F1 0.75; class 1: 1 right, 1 missed,
    # 1 false alarm -> F1 0.5. Macro F1 0.625, while accuracy (micro F1) is 4/6.
    actual = torch.tensor([0, 0, 0, 0, 1, 1])
    metrics, per_class = classification_metrics(logits_for([0, 0, 0, 1, 1, 0], 2), actual)
    assert metrics["macro_f1"] == pytest.approx(0.625)
    assert metrics["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert [round(c["f1"], 6) for c in per_class] == [0.75, 0.5]


def test_precision_and_recall_are_not_swapped():
    # Every image predicted as 1: class 1 has recall 1 and precision 1/3, class 0 neither.
    metrics, per_class = classification_metrics(logits_for([1, 1, 1], 2), torch.tensor([0, 0, 1]))
    assert (per_class[1]["precision"], per_class[1]["recall"]) == (pytest.approx(1 / 3, abs=1e-6), 1.0)
    assert (per_class[0]["precision"], per_class[0]["recall"], per_class[0]["support"]) == (0.0, 0.0, 2)
    assert metrics["errors"] == 2
