"""Temperature scaling and expected calibration error, on cases whose answer is known."""

from __future__ import annotations

import pytest
import torch

from mnistpipe.calibration import expected_calibration_error, fit_temperature, reliability, reliability_table


def labels_drawn_from(logits: torch.Tensor, temperature: float, seed: int = 0) -> torch.Tensor:
    """Labels sampled from softmax(logits / temperature): for them, that temperature is right."""
    probs = (logits / temperature).softmax(1)
    return torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed)).squeeze(1)


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_recovers_the_temperature_the_labels_were_drawn_with(true_t):
    logits = torch.randn(20000, 10, generator=torch.Generator().manual_seed(1)) * 4
    fitted = fit_temperature(logits, labels_drawn_from(logits, true_t))
    assert fitted == pytest.approx(true_t, rel=0.05)


def test_temperature_never_changes_a_prediction():
    logits = torch.randn(1000, 10, generator=torch.Generator().manual_seed(2)) * 6
    t = fit_temperature(logits, labels_drawn_from(logits, 3.0))
    assert torch.equal((logits / t).argmax(1), logits.argmax(1))


def test_ece_of_a_constant_overconfident_model():
    # Always 90% sure of class 0, right on 60% of images: ECE is |0.6 - 0.9| = 0.3.
    probs = torch.tensor([[0.9, 0.1]]).repeat(10, 1)
    labels = torch.tensor([0] * 6 + [1] * 4)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.3)


def test_ece_is_near_zero_when_labels_follow_the_probabilities():
    logits = torch.randn(50000, 10, generator=torch.Generator().manual_seed(3)) * 3
    probs = logits.softmax(1)
    assert expected_calibration_error(probs, labels_drawn_from(logits, 1.0)) < 0.01


def test_reliability_bins_cover_every_image_and_confidence_one_lands_in_the_last_bin():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.7, 0.3]])
    rows = reliability(probs, torch.tensor([0, 1, 0]))
    assert sum(r["count"] for r in rows) == 3 and rows[-1]["count"] == 1
    table = reliability_table({"raw": probs}, torch.tensor([0, 1, 0]))
    assert table[0]["confidence_raw"] == "" and table[-1]["accuracy_raw"] == 1.0
