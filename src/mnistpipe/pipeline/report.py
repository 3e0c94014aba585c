"""The report stage: figures and reports/report.md from the data, model, metrics and plots."""

from __future__ import annotations

import json
import sys

import torch
from matplotlib.figure import Figure

from .. import paths, report
from ..atomic import atomic_dir
from ..checkpoint import load_model
from ..data.prepared import SPLITS, Split, load_meta, load_split
from ..errors import UserError, naming
from ..evaluate import SeedAccuracies, confusion_matrix
from ..models import count_parameters, layer_table
from ..params import Params


def read_csv(path) -> list[dict[str, str]]:
    with naming(path):  # an undecodable file is reported by name
        return report.read_csv(path)


def read_text(path) -> str:
    with naming(path):
        return path.read_text()


def read_json(path):
    text = read_text(path)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); rerun the stage that writes it (dvc repro)") from None


def read_predictions() -> tuple[list[dict[str, str]], torch.Tensor, torch.Tensor]:
    """plots/predictions.csv's rows, and its actual and predicted labels, or a UserError if it
    is not what the evaluate stage writes."""
    rows = read_csv(paths.PREDICTIONS)
    try:
        [float(r["confidence"]) for r in rows]
        return (rows, torch.tensor([int(r["actual"]) for r in rows]),
                torch.tensor([int(r["predicted"]) for r in rows]))
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{paths.PREDICTIONS} is not what the evaluate stage writes; rerun it "
                        "(dvc repro evaluate)") from None


def draw(params: Params, splits: dict[str, Split], counts, cm, evaluation: dict, wrong: list) -> dict[str, Figure]:
    """The report's figures, by file name in reports/figures/."""
    samples = report.sample_indices(len(splits["train"]), params.report.sample_grid ** 2, params.seed)
    figures = {
        "samples": report.samples_figure(splits["train"], samples, params.report.sample_grid),
        "class_counts": report.class_counts_figure(counts),
        "curves": report.curves_figure(read_csv(paths.HISTORY)),
        "confusion": report.confusion_figure(cm),
        "per_class": report.per_class_figure(cm),
        "reliability": report.reliability_figure(read_csv(paths.RELIABILITY),
                                                 {"raw": evaluation["ece_raw"], "calibrated": evaluation["ece"]}),
    }
    if wrong:
        figures["wrong"] = report.wrong_figure(splits["test"], wrong)
    return figures


def run(params: Params) -> None:
    """The report stage: every figure, then the page, written into reports/ as one."""
    meta = load_meta(paths.PREPARED)
    splits = {name: load_split(paths.PREPARED, name) for name in SPLITS}
    model, info = load_model(paths.MODEL)
    predictions, actual, predicted = read_predictions()
    cm = confusion_matrix(actual, predicted, meta.num_classes).numpy()
    evaluation = read_json(paths.EVAL_METRICS) | read_json(paths.EVAL_DETAIL)  # the stage's numbers, both files
    counts = report.class_counts({name: s.labels for name, s in splits.items()}, meta.num_classes)
    wrong = report.confidently_wrong(predictions, params.report.n_wrong)
    figures = draw(params, splits, counts, cm, evaluation, wrong)
    page = report.markdown(report.PageFacts(
        info.spec, evaluation, read_json(paths.TRAIN_METRICS),
        SeedAccuracies.from_json(read_text(paths.SEEDS_METRICS), str(paths.SEEDS_METRICS)),
        read_csv(paths.PER_CLASS), meta.sizes, counts, len(wrong), count_parameters(model),
        layer_table(model, info.spec.image_shape), meta.mean, meta.std))

    with atomic_dir(paths.REPORTS) as out:
        (out / "figures").mkdir()
        for name, fig in figures.items():
            with naming(out / "figures" / f"{name}.png"):
                report.save(fig, out / "figures" / f"{name}.png", params.report.dpi)
        with naming(out / "report.md"):
            (out / "report.md").write_text(page)
    print(f"report: {paths.REPORTS / 'report.md'} ({len(figures)} figures in {paths.REPORTS / 'figures'}); "
          f"test accuracy {evaluation['accuracy']:.4f}, {evaluation['errors']} errors, ECE {evaluation['ece']:.2%}",
          file=sys.stderr)
