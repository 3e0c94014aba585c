"""The evaluate stage: test-set accuracy, loss, per-class precision/recall/F1 and every
prediction (with its calibrated probability); calibration error before and after
temperature scaling; plus the test accuracy of each seed's model as mean ± std."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from .. import paths
from ..atomic import output_set
from ..calibration import expected_calibration_error, probabilities, reliability_table
from ..checkpoint import load_model
from ..data.prepared import load_split
from ..device import choose_device, device_name, synchronize
from ..evaluate import HEADLINE, SeedAccuracies, classification_metrics, loss_and_accuracy, split_logits
from ..machine import machine_facts
from ..params import Params


def test_logits(path: Path, test, device, batch_size: int) -> tuple[torch.Tensor, float]:
    """The model's test logits and its calibration temperature."""
    model, info = load_model(path)
    return split_logits(model, test, info.mean, info.std, device, batch_size), info.temperature


def seed_accuracies(main_seed: int, main_accuracy: float, test, device, batch_size: int) -> SeedAccuracies:
    """Test accuracy per training seed: the main model's and each extra one's (models/seeds/seed<N>.pt)."""
    acc = {str(main_seed): main_accuracy}
    acc |= {str(seed): round(loss_and_accuracy(test_logits(path, test, device, batch_size)[0],
                                               test.labels.to(device))[1], 6)
            for seed, path in paths.seed_models().items()}
    return SeedAccuracies(acc)


def run(params: Params) -> None:
    """The evaluate stage: metrics, per-class table, reliability, every prediction, seeds."""
    device = choose_device(params.evaluate.device, "evaluate.device")
    test = load_split(paths.PREPARED, "test")

    t0 = time.perf_counter()
    logits, temperature = test_logits(paths.MODEL, test, device, params.evaluate.batch_size)
    synchronize(device)
    seconds = time.perf_counter() - t0

    metrics, per_class = classification_metrics(logits, test.labels)
    logits = logits.float().cpu()
    raw, calibrated = (probabilities(logits, t) for t in (1.0, temperature))
    metrics |= {"ece_raw": round(expected_calibration_error(raw, test.labels), 6),
                "ece": round(expected_calibration_error(calibrated, test.labels), 6)}
    confidence, predicted = calibrated.max(1)
    seeds = seed_accuracies(params.seed, metrics["accuracy"], test, device, params.evaluate.batch_size)
    # One set: a failure anywhere (a full disk) leaves every file of the last run as it was,
    # so metrics/ and plots/ never mix two runs.
    with output_set() as out:
        out.write_json(paths.EVAL_METRICS, {key: metrics[key] for key in HEADLINE})
        out.write_json(paths.EVAL_DETAIL, {key: value for key, value in metrics.items() if key not in HEADLINE})
        out.write_csv(paths.PER_CLASS, per_class)
        out.write_csv(paths.RELIABILITY, reliability_table({"raw": raw, "calibrated": calibrated}, test.labels))
        out.write_json(paths.SEEDS_METRICS, seeds.to_json())
        out.write_csv(paths.PREDICTIONS, [
            {"index": i, "actual": a, "predicted": p, "confidence": f"{c:.6f}"}
            for i, (a, p, c) in enumerate(zip(test.labels.tolist(), predicted.tolist(), confidence.tolist()))
        ])
        out.write_json(paths.EVAL_LOG, {"device": device.type, "device_name": device_name(device),
                                        **machine_facts(params.numerics), "images": len(test),
                                        "seconds": round(seconds, 4)})
    print(f"test accuracy {metrics['accuracy']:.4f}  loss {metrics['loss']:.4f}  "
          f"macro F1 {metrics['macro_f1']:.4f}  ({len(test)} images, {seconds:.3f}s on {device.type})",
          file=sys.stderr)
