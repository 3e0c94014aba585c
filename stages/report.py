"""report: figures and reports/report.md from the data, model, metrics and plots."""

import json
import sys

import torch
from matplotlib.figure import Figure

from mnistpipe import paths, report
from mnistpipe.atomic import atomic_dir
from mnistpipe.checkpoint import load_model
from mnistpipe.data.prepared import SPLITS, load_meta, load_split
from mnistpipe.errors import exit_on_user_error
from mnistpipe.evaluate import confusion_matrix
from mnistpipe.models import count_parameters, layer_table
from mnistpipe.params import load_params


def draw(params, splits, counts, cm, evaluation, wrong) -> dict[str, Figure]:
    """The report's figures, by file name in reports/figures/."""
    samples = report.sample_indices(len(splits["train"]), params.report.sample_grid ** 2, params.seed)
    figures = {
        "samples": report.samples_figure(splits["train"], samples, params.report.sample_grid),
        "class_counts": report.class_counts_figure(counts),
        "curves": report.curves_figure(report.read_csv(paths.HISTORY)),
        "confusion": report.confusion_figure(cm),
        "per_class": report.per_class_figure(cm),
        "reliability": report.reliability_figure(report.read_csv(paths.RELIABILITY),
                                                 {"raw": evaluation["ece_raw"], "calibrated": evaluation["ece"]}),
    }
    if wrong:
        figures["wrong"] = report.wrong_figure(splits["test"], wrong)
    return figures


@exit_on_user_error
def main() -> None:
    params = load_params()
    cfg = params.report
    meta = load_meta(paths.PREPARED)
    splits = {name: load_split(paths.PREPARED, name) for name in SPLITS}
    model, ckpt = load_model(paths.MODEL)
    predictions = report.read_csv(paths.PREDICTIONS)
    actual = torch.tensor([int(r["actual"]) for r in predictions])
    predicted = torch.tensor([int(r["predicted"]) for r in predictions])
    cm = confusion_matrix(actual, predicted, meta.num_classes).numpy()
    evaluation = json.loads(paths.EVAL_METRICS.read_text())
    counts = report.class_counts({name: s.labels for name, s in splits.items()}, meta.num_classes)
    wrong = report.confidently_wrong(predictions, cfg.n_wrong)
    figures = draw(params, splits, counts, cm, evaluation, wrong)
    page = report.markdown({
        "eval": evaluation,
        "per_class": report.read_csv(paths.PER_CLASS),
        "train": json.loads(paths.TRAIN_METRICS.read_text()),
        "seeds": json.loads(paths.SEEDS_METRICS.read_text()),
        "spec": ckpt["spec"], "sizes": meta.sizes, "counts": counts, "n_wrong": len(wrong),
        "parameters": count_parameters(model),
        "layers": layer_table(model, tuple(ckpt["spec"]["image_shape"])),
        "mean": meta.mean, "std": meta.std,
    })

    with atomic_dir(paths.REPORTS) as out:
        (out / "figures").mkdir()
        for name, fig in figures.items():
            report.save(fig, out / "figures" / f"{name}.png", cfg.dpi)
        (out / "report.md").write_text(page)
    print(f"report: {paths.REPORTS / 'report.md'} ({len(figures)} figures in {paths.REPORTS / 'figures'}); "
          f"test accuracy {evaluation['accuracy']:.4f}, {evaluation['errors']} errors, ECE {evaluation['ece']:.2%}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
