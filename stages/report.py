"""report: figures and reports/report.md from the data, model, metrics and plots."""

import json

import torch

from mnistpipe import paths, report
from mnistpipe.atomic import atomic_dir
from mnistpipe.checkpoint import load_model
from mnistpipe.data.prepared import SPLITS, load_meta, load_split
from mnistpipe.errors import exit_on_user_error
from mnistpipe.evaluate import confusion_matrix
from mnistpipe.models import count_parameters, layer_table
from mnistpipe.params import load_params



@exit_on_user_error
def main() -> None:
    params = load_params()
    cfg = params.report
    meta = load_meta(paths.PREPARED)
    splits = {name: load_split(paths.PREPARED, name) for name in SPLITS}
    model, ckpt = load_model(paths.MODEL)
    history = report.read_csv(paths.HISTORY)
    predictions = report.read_csv(paths.PREDICTIONS)
    actual = torch.tensor([int(r["actual"]) for r in predictions])
    predicted = torch.tensor([int(r["predicted"]) for r in predictions])
    cm = confusion_matrix(actual, predicted, meta.num_classes).numpy()
    parameters, layers = count_parameters(model), layer_table(model, tuple(ckpt["spec"]["image_shape"]))

    with atomic_dir(paths.REPORTS) as out:
        figures = out / "figures"
        figures.mkdir()
        report.sample_grid(splits["train"], cfg.sample_grid, params.seed, figures / "samples.png", cfg.dpi)
        counts = report.class_counts(splits, meta.num_classes, figures / "class_counts.png", cfg.dpi)
        report.curves(history, figures / "curves.png", cfg.dpi)
        report.confusion_heatmap(cm, figures / "confusion.png", cfg.dpi)
        report.per_class_accuracy(cm, figures / "per_class.png", cfg.dpi)
        evaluation = json.loads(paths.EVAL_METRICS.read_text())
        report.reliability_diagram(report.read_csv(paths.RELIABILITY),
                                   {"raw": evaluation["ece_raw"], "calibrated": evaluation["ece"]},
                                   figures / "reliability.png", cfg.dpi)
        n_wrong = report.wrong_gallery(splits["test"], predictions, cfg.n_wrong, figures / "wrong.png", cfg.dpi)
        (out / "report.md").write_text(report.markdown({
            "eval": evaluation,
            "per_class": report.read_csv(paths.PER_CLASS),
            "train": json.loads(paths.TRAIN_METRICS.read_text()),
            "seeds": json.loads(paths.SEEDS_METRICS.read_text()),
            "spec": ckpt["spec"], "sizes": meta.sizes, "counts": counts, "n_wrong": n_wrong,
            "parameters": parameters, "layers": layers, "mean": meta.mean, "std": meta.std,
        }))


if __name__ == "__main__":
    main()
