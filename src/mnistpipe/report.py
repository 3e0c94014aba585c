"""The report: PNG figures and a markdown page that shows them.

Each figure has a pure function that computes what it shows (tested on its own) and one
that draws it. Figures are plain `matplotlib.figure.Figure` objects: `savefig` picks the
Agg renderer for PNG by itself, so nothing here imports pyplot or sets a global backend.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .data.prepared import Split
from .evaluate import SeedAccuracies
from .models import ModelSpec, describe

# Legends go beside the axes, never over bars or lines, whatever the data.
OUTSIDE_RIGHT = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def save(fig: Figure, path: Path, dpi: int) -> None:
    # No "Software: matplotlib x.y" stamp: the same figure gives the same bytes.
    fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata={"Software": None})


# ---------------------------------------------------------------- what the figures show

def sample_indices(size: int, count: int, seed: int) -> list[int]:
    """`count` distinct random indices below `size`, the same for the same seed."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:count].tolist()


def class_counts(labels: dict[str, torch.Tensor], num_classes: int) -> dict[str, list[int]]:
    """Images per class for each split: {split: [count of class 0, 1, ...]}."""
    return {name: torch.bincount(y, minlength=num_classes).tolist() for name, y in labels.items()}


def class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Accuracy (recall) of each actual class; rows of `cm` are actual classes."""
    return cm.diagonal() / np.maximum(cm.sum(axis=1), 1)


def confidently_wrong(predictions: list[dict[str, str]], n: int) -> list[dict[str, str]]:
    """The n most confidently wrong predictions: calibrated probability descending, ties by index."""
    wrong = [r for r in predictions if int(r["actual"]) != int(r["predicted"])]
    return sorted(wrong, key=lambda r: (-float(r["confidence"]), int(r["index"])))[:n]


# ---------------------------------------------------------------- drawing

def _image_grid(count: int, cols: int, cell: tuple[float, float]) -> tuple[Figure, list]:
    """A figure with room for `count` images in rows of `cols`; no frames or ticks."""
    rows = -(-count // cols)
    fig = Figure(figsize=(cell[0] * cols, cell[1] * rows))
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes:
        ax.axis("off")
    return fig, axes


def samples_figure(split: Split, indices: list[int], cols: int) -> Figure:
    """Training digits with their labels, as in the tutorial."""
    fig, axes = _image_grid(len(indices), cols, (1.6, 1.7))
    for ax, i in zip(axes, indices):
        ax.imshow(split.images[i].numpy(), cmap="gray")
        ax.set_title(f"label {int(split.labels[i])}", fontsize=9)
    return fig


def class_counts_figure(counts: dict[str, list[int]]) -> Figure:
    num_classes = len(next(iter(counts.values())))
    fig = Figure(figsize=(8, 3.2))
    ax = fig.subplots()
    width = 0.8 / len(counts)
    for k, (name, c) in enumerate(counts.items()):
        ax.bar(np.arange(num_classes) + k * width - 0.4 + width / 2, c, width, label=f"{name} ({sum(c):,})")
    ax.set(xticks=range(num_classes), xlabel="class", ylabel="images", title="Images per class and split")
    ax.legend(**OUTSIDE_RIGHT)
    return fig


def curves_figure(history: list[dict[str, str]]) -> Figure:
    epochs = [int(r["epoch"]) for r in history]
    fig = Figure(figsize=(10, 3.6))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for split in ("train", "val"):
        ax_loss.plot(epochs, [float(r[f"{split}_loss"]) for r in history], marker="o", label=split)
        ax_acc.plot(epochs, [float(r[f"{split}_acc"]) for r in history], marker="o", label=split)
    ax_loss.set(title="Cross-entropy loss", xlabel="epoch", ylabel="loss")
    ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # no epoch 1.5, even for one epoch
        ax.grid(alpha=0.3)
    ax_acc.legend(**OUTSIDE_RIGHT)  # same colours in both panels: one legend
    return fig


def confusion_figure(cm: np.ndarray) -> Figure:
    """Rows: actual class, columns: predicted class (as dvc.yaml's confusion plot)."""
    n = len(cm)
    fig = Figure(figsize=(6.4, 5.6))
    ax = fig.subplots()
    # Log colour scale: the diagonal (~1000) would otherwise hide the errors (~1-20).
    shade = np.log10(cm + 1)
    im = ax.imshow(shade, cmap="Blues")
    for a, p in zip(*np.nonzero(cm)):
        ax.text(p, a, str(cm[a, p]), ha="center", va="center", fontsize=7,
                color="white" if shade[a, p] > 0.6 * shade.max() else "black")  # readable on dark cells
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted class", ylabel="actual class",
           title="Confusion matrix (test set; colour: log count)")
    fig.colorbar(im, ax=ax, label="log10(count + 1)")
    return fig


def per_class_figure(cm: np.ndarray) -> Figure:
    """Accuracy (recall) for each actual class, against the overall accuracy."""
    acc = class_accuracy(cm)
    overall = cm.diagonal().sum() / max(cm.sum(), 1)
    fig = Figure(figsize=(7, 3.2))
    ax = fig.subplots()
    bars = ax.bar(range(len(cm)), acc, color="tab:blue")
    ax.bar_label(bars, labels=[f"{a:.3f}" for a in acc], fontsize=7, padding=2)
    ax.axhline(overall, color="tab:red", lw=1, ls="--", label=f"overall {overall:.4f}")
    low = max(0.0, float(acc.min()) - 0.02)
    # Headroom above 1.0 so a perfect class's value label stays inside the axes.
    ax.set(xticks=range(len(cm)), xlabel="actual class", ylabel="accuracy",
           ylim=(low, 1.0 + 0.08 * (1.0 - low)), title="Test accuracy per class")
    ax.legend(**OUTSIDE_RIGHT)
    return fig


def reliability_figure(rows: list[dict[str, str]], ece: dict[str, float]) -> Figure:
    """Accuracy against confidence per bin, before and after temperature scaling (a
    calibrated model's bars reach the diagonal), over how many test images each bin holds."""
    fig = Figure(figsize=(9, 5.4))
    axes = fig.subplots(2, 2, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = float(rows[0]["high"]) - float(rows[0]["low"])
    for col, name in enumerate(("raw", "calibrated")):
        filled = [r for r in rows if int(r[f"count_{name}"])]
        low = [float(r["low"]) for r in filled]
        top, bottom = axes[0, col], axes[1, col]
        top.bar(low, [float(r[f"accuracy_{name}"]) for r in filled], width, align="edge",
                edgecolor="black", label="accuracy")
        top.plot([x + width / 2 for x in low], [float(r[f"confidence_{name}"]) for r in filled], "o",
                 color="tab:red", markersize=4, label="mean confidence")
        top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        top.set(xlim=(0, 1), ylim=(0, 1), title=f"{'softmax' if name == 'raw' else 'temperature-scaled'}: "
                                                 f"ECE {ece[name]:.2%}")
        bottom.bar(low, [int(r[f"count_{name}"]) for r in filled], width, align="edge", color="gray")
        bottom.set(yscale="log", xlabel="confidence (top class)")
    axes[0, 0].set_ylabel("accuracy")
    axes[1, 0].set_ylabel("test images")
    axes[0, 1].legend(**OUTSIDE_RIGHT)
    return fig


def wrong_figure(test: Split, wrong: list[dict[str, str]]) -> Figure:
    """Test digits from `confidently_wrong`, in its order, with their calibrated probability."""
    fig, axes = _image_grid(len(wrong), min(8, len(wrong)), (1.5, 1.8))
    for ax, r in zip(axes, wrong):
        ax.imshow(test.images[int(r["index"])].numpy(), cmap="gray")
        ax.set_title(f"true {r['actual']}, pred {r['predicted']}\np={float(r['confidence']):.3f}", fontsize=8)
    return fig


# ---------------------------------------------------------------- the page

@dataclass(frozen=True)
class PageFacts:
    """What the report page shows, gathered from the pipeline's files by the report stage."""
    spec: ModelSpec
    evaluation: dict[str, Any]  # metrics/eval.json and metrics/eval_detail.json, as the evaluate stage wrote them
    training: dict[str, Any]  # metrics/train.json
    seeds: SeedAccuracies  # metrics/seeds.json
    per_class: list[dict[str, str]]  # plots/per_class.csv's rows
    sizes: dict[str, int]  # images per split
    counts: dict[str, list[int]]  # images per class, per split
    n_wrong: int  # confidently wrong test digits shown
    parameters: int
    layers: list[tuple[str, str, int]]  # models.layer_table
    mean: float  # normalization constants
    std: float


def _summary(page: PageFacts) -> list[str]:
    sizes = page.sizes
    return ["# mnistpipe report", "",
            f"Model **{describe(page.spec)}**, trained {page.training['epochs']} epochs on {sizes['train']:,} images "
            f"(validation {sizes['val']:,}), evaluated on {sizes['test']:,} test images.", ""]


def _results(page: PageFacts) -> list[str]:
    ev, tr = page.evaluation, page.training
    return ["## Results", "", "| metric | value |", "|---|---|",
            f"| test accuracy | {ev['accuracy']:.4f} (95% interval {ev['accuracy_ci95_low']:.4f}–"
            f"{ev['accuracy_ci95_high']:.4f}) |",
            f"| test loss | {ev['loss']:.4f} |",
            f"| test macro F1 | {ev['macro_f1']:.4f} |",
            f"| test errors | {ev['errors']} of {page.sizes['test']:,} |",
            f"| final validation accuracy | {tr['val_acc']:.4f} |",
            f"| final training accuracy | {tr['train_acc']:.4f} |", ""]


def _seeds(page: PageFacts) -> list[str]:
    seeds = page.seeds.to_json()
    if seeds["n"] <= 1:
        return []
    per_seed = ", ".join(f"{k}: {v:.4f}" for k, v in seeds["test_acc"].items())
    return [f"Over {seeds['n']} training seeds, test accuracy is **{seeds['test_acc_mean']:.4f} "
            f"± {seeds['test_acc_std']:.4f}** (mean ± sample std; {per_seed}).", ""]


def _per_class(page: PageFacts) -> list[str]:
    lines = ["## Training curves", "", "![training curves](figures/curves.png)", "",
             "## Per class", "", "![accuracy per class](figures/per_class.png)", "",
             "![confusion matrix](figures/confusion.png)", "",
             "| class | precision | recall | F1 |", "|---|---|---|---|"]
    lines += [f"| {m['class']} | {float(m['precision']):.4f} | {float(m['recall']):.4f} | {float(m['f1']):.4f} |"
              for m in page.per_class]
    return lines + [""]


def _calibration(page: PageFacts) -> list[str]:
    ev = page.evaluation
    return ["## Calibration", "",
            f"Probabilities are temperature-scaled (T = {page.training['temperature']:.3f}, fitted on the validation "
            f"split): expected calibration error on the test set {ev['ece_raw']:.2%} before, "
            f"{ev['ece']:.2%} after (15 bins).", "", "![reliability diagram](figures/reliability.png)", ""]


def _wrong(page: PageFacts) -> list[str]:
    shown = "![confidently wrong](figures/wrong.png)" if page.n_wrong else "No test digit was misclassified."
    return ["## Most confidently wrong test digits", "", shown, ""]


def _model(page: PageFacts) -> list[str]:
    lines = ["## Model", "", f"{describe(page.spec)}: **{page.parameters:,} trainable parameters**.", "",
             "| layer | output shape | parameters |", "|---|---|---|"]
    lines += [f"| {name} | {shape} | {n:,} |" for name, shape, n in page.layers]
    return lines + [""]


def _data(page: PageFacts) -> list[str]:
    counts = page.counts
    lines = ["## Data", "", "![sample digits](figures/samples.png)", "",
             "![class counts](figures/class_counts.png)", "",
             "| class | " + " | ".join(counts) + " |", "|---" * (len(counts) + 1) + "|"]
    for c in range(len(next(iter(counts.values())))):
        lines.append(f"| {c} | " + " | ".join(f"{v[c]:,}" for v in counts.values()) + " |")
    return lines + ["", f"Normalization: mean {page.mean:.4f}, std {page.std:.4f}.", ""]


SECTIONS = (_summary, _results, _seeds, _per_class, _calibration, _wrong, _model, _data)


def markdown(page: PageFacts) -> str:
    """The report page."""
    return "\n".join(line for section in SECTIONS for line in section(page))
