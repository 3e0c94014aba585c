"""The report's pure functions (what each figure shows) and the figures' layout: legends
beside the data, integer epochs, one confusion orientation shared with dvc.yaml, same bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg

from mnistpipe import report
from mnistpipe.data.prepared import Split

from conftest import REPO


def prediction(index: int, actual: int, predicted: int, confidence: float) -> dict[str, str]:
    """One row of plots/predictions.csv, as read back (all strings)."""
    return {"index": str(index), "actual": str(actual), "predicted": str(predicted),
            "confidence": f"{confidence:.6f}"}


# ---------------------------------------------------------------- pure functions

def test_class_counts_per_split_and_class():
    labels = {"train": torch.tensor([0, 2, 2, 1, 2]), "val": torch.tensor([1]),
              "test": torch.tensor([], dtype=torch.int64)}
    counts = report.class_counts(labels, num_classes=4)
    assert counts == {"train": [1, 1, 3, 0], "val": [0, 1, 0, 0], "test": [0, 0, 0, 0]}
    assert list(counts) == ["train", "val", "test"]  # the report's column order


def test_class_accuracy_is_per_actual_class():
    cm = np.array([[8, 2, 0],   # rows: actual, columns: predicted
                   [0, 5, 0],
                   [0, 0, 0]])  # a class absent from the test set: 0, not nan
    assert report.class_accuracy(cm).tolist() == [0.8, 1.0, 0.0]


def test_confidently_wrong_by_probability_then_index():
    rows = [
        prediction(0, 1, 1, 0.999),  # right: never shown
        prediction(1, 3, 5, 0.70),
        prediction(10, 4, 9, 0.90),
        prediction(9, 7, 2, 0.90),   # tie with index 10: the lower index first (as numbers, not text)
        prediction(5, 0, 6, 0.95),
        prediction(7, 8, 3, 0.60),
    ]
    assert [r["index"] for r in report.confidently_wrong(rows, 10)] == ["5", "9", "10", "1", "7"]
    assert [r["index"] for r in report.confidently_wrong(rows, 2)] == ["5", "9"]
    assert report.confidently_wrong(rows[:1], 4) == []


def test_sample_indices_seeded_and_distinct():
    a = report.sample_indices(1000, 9, seed=42)
    assert a == report.sample_indices(1000, 9, seed=42)
    assert a != report.sample_indices(1000, 9, seed=43)
    assert len(set(a)) == 9 and all(0 <= i < 1000 for i in a)


# ---------------------------------------------------------------- figure layout

def _boxes(fig, artists):
    """Where the artists are drawn, in pixels."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    return [a.get_window_extent(renderer) for a in artists]


def _legend_clear_of_axes(fig):
    """The legend lies wholly outside the axes, so no bar or line can be under it."""
    ax = fig.axes[0]
    legend = next(a.get_legend() for a in fig.axes if a.get_legend())
    legend_box, ax_box = _boxes(fig, [legend, ax])
    assert legend_box.x0 >= ax_box.x1 or legend_box.y0 >= ax_box.y1, (legend_box, ax_box)


def test_class_counts_legend_beside_bars():
    counts = {"train": [5400, 6200, 5500], "val": [500, 560, 510], "test": [980, 1135, 1032]}
    _legend_clear_of_axes(report.class_counts_figure(counts))


def test_per_class_legend_and_labels_inside():
    cm = np.diag([980, 1135, 1032]) + np.array([[0, 0, 0], [0, 0, 0], [30, 0, 0]])  # classes 0-1 perfect
    fig = report.per_class_figure(cm)
    _legend_clear_of_axes(fig)
    ax = fig.axes[0]
    (ax_box,) = _boxes(fig, [ax])
    for label in _boxes(fig, ax.texts):  # "1.000" above a full bar stays in the axes
        assert ax_box.y0 <= label.y0 and label.y1 <= ax_box.y1, (label, ax_box)


@pytest.mark.parametrize("epochs", [1, 2, 5])
def test_curves_epoch_ticks_are_integers(epochs):
    history = [{"epoch": str(e), "train_loss": str(1 / e), "val_loss": str(1.1 / e),
                "train_acc": str(1 - 0.1 / e), "val_acc": str(1 - 0.12 / e)} for e in range(1, epochs + 1)]
    fig = report.curves_figure(history)
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    _legend_clear_of_axes(fig)


@pytest.fixture(scope="module")
def dvc_plots() -> list[dict]:
    """dvc.yaml's plot definitions."""
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]


def test_confusion_rows_actual_columns_predicted_as_dvc_plot(dvc_plots):
    cm = np.array([[5, 1], [0, 7]])  # one 0 predicted as 1
    fig = report.confusion_figure(cm)
    ax = fig.axes[0]
    assert np.array_equal(ax.images[0].get_array(), np.log10(cm + 1))  # row = y = actual
    one = next(t for t in ax.texts if t.get_text() == "1")
    assert one.get_position() == (1, 0)  # x: predicted 1, y: actual 0
    # dvc.yaml's confusion plot has the same orientation and the same axis titles.
    plot = next(p for entry in dvc_plots for p in entry.values() if p.get("template") == "confusion")
    assert plot["x"] == "predicted" and list(plot["y"].values()) == ["actual"]
    assert (plot["x_label"], plot["y_label"]) == (ax.get_xlabel(), ax.get_ylabel()) == ("predicted class",
                                                                                       "actual class")


def test_dvc_plots_have_titles_and_axis_labels(dvc_plots):
    for entry in dvc_plots:
        (props,) = entry.values()
        assert props.get("title") and props.get("x_label") and props.get("y_label"), entry


def test_figures_byte_stable_without_software_stamp(tmp_path):
    test = Split(images=torch.arange(4 * 28 * 28, dtype=torch.uint8).reshape(4, 28, 28),
                 labels=torch.tensor([0, 1, 2, 3]))
    wrong = report.confidently_wrong([prediction(i, i, (i + 1) % 4, 0.5 + i / 10) for i in range(4)], 4)
    outputs = []
    for k in range(2):
        path = tmp_path / f"wrong{k}.png"
        report.save(report.wrong_figure(test, wrong), path, dpi=40)
        outputs.append(path.read_bytes())
    assert outputs[0] == outputs[1]
    assert b"matplotlib" not in outputs[0]
