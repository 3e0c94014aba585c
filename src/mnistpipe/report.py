"""The report: PNG figures (matplotlib, Agg) and a markdown page that shows them."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .data.prepared import Split  # noqa: E402
from .models import describe  # noqa: E402


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _save(fig, path: Path, dpi: int) -> None:
    # No "Software: matplotlib x.y" stamp: the same figure gives the same bytes.
    fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def sample_grid(split: Split, n: int, seed: int, path: Path, dpi: int) -> None:
    """n x n random training digits with their labels, as in the tutorial."""
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[: n * n]
    fig, axes = plt.subplots(n, n, figsize=(1.6 * n, 1.7 * n), squeeze=False)
    for ax, i in zip(axes.flat, idx.tolist()):
        ax.imshow(split.images[i].numpy(), cmap="gray")
        ax.set_title(f"label {int(split.labels[i])}", fontsize=9)
        ax.axis("off")
    _save(fig, path, dpi)


def class_counts(splits: dict[str, Split], num_classes: int, path: Path, dpi: int) -> dict[str, list[int]]:
    counts = {name: torch.bincount(s.labels, minlength=num_classes).tolist() for name, s in splits.items()}
    fig, ax = plt.subplots(figsize=(8, 3.2))
    width = 0.8 / len(counts)
    for k, (name, c) in enumerate(counts.items()):
        ax.bar(np.arange(num_classes) + k * width - 0.4 + width / 2, c, width, label=f"{name} ({sum(c)})")
    ax.set_xticks(range(num_classes))
    ax.set_xlabel("class")
    ax.set_ylabel("images")
    ax.set_title("Images per class and split")
    ax.legend()
    _save(fig, path, dpi)
    return counts


def curves(history: list[dict[str, str]], path: Path, dpi: int) -> None:
    epochs = [int(r["epoch"]) for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    for split in ("train", "val"):
        ax_loss.plot(epochs, [float(r[f"{split}_loss"]) for r in history], marker="o", label=split)
        ax_acc.plot(epochs, [float(r[f"{split}_acc"]) for r in history], marker="o", label=split)
    ax_loss.set(title="Cross-entropy loss", xlabel="epoch", ylabel="loss")
    ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path, dpi)


def confusion_heatmap(cm: np.ndarray, path: Path, dpi: int) -> None:
    n = len(cm)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    # Log colour scale: the diagonal (~1000) would otherwise hide the errors (~1-20).
    im = ax.imshow(np.log10(cm + 1), cmap="Blues")
    for a in range(n):
        for p in range(n):
            if cm[a, p]:
                ax.text(p, a, str(cm[a, p]), ha="center", va="center", fontsize=7,
                        color="white" if a == p else "black")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="actual",
           title="Confusion matrix (test set; colour: log count)")
    fig.colorbar(im, ax=ax, label="log10(count + 1)")
    _save(fig, path, dpi)


def per_class_accuracy(cm: np.ndarray, path: Path, dpi: int) -> None:
    """Accuracy (recall) for each true class, against the overall accuracy."""
    n = len(cm)
    acc = cm.diagonal() / np.maximum(cm.sum(1), 1)
    overall = cm.diagonal().sum() / max(cm.sum(), 1)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bars = ax.bar(range(n), acc, color="tab:blue")
    ax.bar_label(bars, labels=[f"{a:.3f}" for a in acc], fontsize=7, padding=2)
    ax.axhline(overall, color="tab:red", lw=1, ls="--", label=f"overall {overall:.4f}")
    low = max(0.0, float(acc.min()) - 0.02)
    ax.set(xticks=range(n), xlabel="true class", ylabel="accuracy", ylim=(low, 1.0),
           title="Test accuracy per class")
    ax.legend(loc="lower right")
    _save(fig, path, dpi)


def reliability_diagram(rows: list[dict[str, str]], ece: dict[str, float], path: Path, dpi: int) -> None:
    """Accuracy against confidence per bin, before and after temperature scaling (a
    calibrated model's bars reach the diagonal), over how many test images each bin holds."""
    fig, axes = plt.subplots(2, 2, figsize=(9, 5.4), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = float(rows[0]["high"]) - float(rows[0]["low"])
    for col, name in enumerate(("raw", "calibrated")):
        filled = [r for r in rows if int(r[f"count_{name}"])]
        low = [float(r["low"]) for r in filled]
        top, bottom = axes[0, col], axes[1, col]
        top.bar(low, [float(r[f"accuracy_{name}"]) for r in filled], width, align="edge",
                edgecolor="black", label="accuracy")
        top.plot([x + width / 2 for x in low], [float(r[f"confidence_{name}"]) for r in filled], "o",
                 color="tab:red", markersize=4, label="mean confidence")
        top.plot([0, 1], [0, 1], "k--", linewidth=1)
        top.set(xlim=(0, 1), ylim=(0, 1), title=f"{'softmax' if name == 'raw' else 'temperature-scaled'}: "
                                                 f"ECE {ece[name]:.2%}")
        bottom.bar(low, [int(r[f"count_{name}"]) for r in filled], width, align="edge", color="gray")
        bottom.set(yscale="log", xlabel="confidence (top class)")
    axes[0, 0].set_ylabel("accuracy")
    axes[1, 0].set_ylabel("test images")
    axes[0, 0].legend(loc="upper left")
    _save(fig, path, dpi)


def wrong_gallery(test: Split, predictions: list[dict[str, str]], n: int, path: Path, dpi: int) -> int:
    """The n most confidently wrong test digits, by calibrated probability; returns how many."""
    wrong = [r for r in predictions if r["actual"] != r["predicted"]]
    wrong.sort(key=lambda r: (-float(r["confidence"]), int(r["index"])))
    wrong = wrong[:n]
    if not wrong:
        return 0
    cols = min(8, len(wrong))
    rows = -(-len(wrong) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, r in zip(axes.flat, wrong):
        ax.imshow(test.images[int(r["index"])].numpy(), cmap="gray")
        ax.set_title(f"true {r['actual']}, pred {r['predicted']}\np={float(r['confidence']):.3f}", fontsize=8)
    _save(fig, path, dpi)
    return len(wrong)


def markdown(ctx: dict[str, Any]) -> str:
    """The report page; `ctx` holds numbers and tables gathered by the report stage."""
    ev, tr, spec = ctx["eval"], ctx["train"], ctx["spec"]
    lines = [
        "# mnistpipe report", "",
        f"Model **{describe(spec)}**, trained {tr['epoch']} epochs on {ctx['sizes']['train']:,} images "
        f"(validation {ctx['sizes']['val']:,}), evaluated on {ctx['sizes']['test']:,} test images.", "",
        "## Results", "",
        "| metric | value |", "|---|---|",
        f"| test accuracy | {ev['accuracy']:.4f} (95% interval {ev['accuracy_ci95_low']:.4f}–"
        f"{ev['accuracy_ci95_high']:.4f}) |",
        f"| test loss | {ev['loss']:.4f} |",
        f"| test macro F1 | {ev['macro_f1']:.4f} |",
        f"| test errors | {ev['errors']} of {ctx['sizes']['test']:,} |",
        f"| final validation accuracy | {tr['val_acc']:.4f} |",
        f"| final training accuracy | {tr['train_acc']:.4f} |", "",
    ]
    seeds = ctx.get("seeds") or {}
    if seeds.get("n", 0) > 1:
        per_seed = ", ".join(f"{k}: {v:.4f}" for k, v in seeds["test_acc"].items())
        lines += [f"Over {seeds['n']} training seeds, test accuracy is **{seeds['test_acc_mean']:.4f} "
                  f"± {seeds['test_acc_std']:.4f}** (mean ± sample std; {per_seed}).", ""]
    lines += ["## Training curves", "", "![training curves](figures/curves.png)", "",
              "## Per class", "", "![accuracy per class](figures/per_class.png)", "",
              "![confusion matrix](figures/confusion.png)", "",
              "| class | precision | recall | F1 |", "|---|---|---|---|"]
    lines += [f"| {m['class']} | {float(m['precision']):.4f} | {float(m['recall']):.4f} | {float(m['f1']):.4f} |"
              for m in ctx["per_class"]]
    lines += ["", "## Calibration", "",
              f"Probabilities are temperature-scaled (T = {tr['temperature']:.3f}, fitted on the validation "
              f"split): expected calibration error on the test set {ev['ece_raw']:.2%} before, "
              f"{ev['ece']:.2%} after (15 bins).", "", "![reliability diagram](figures/reliability.png)", ""]
    lines += ["## Most confidently wrong test digits", ""]
    lines += ["![confidently wrong](figures/wrong.png)" if ctx["n_wrong"] else "No test digit was misclassified.", ""]
    lines += ["## Model", "", f"{describe(spec)}: **{ctx['parameters']:,} trainable parameters**.", "",
              "| layer | output shape | parameters |", "|---|---|---|"]
    lines += [f"| {name} | {shape} | {n:,} |" for name, shape, n in ctx["layers"]]
    lines += ["", "## Data", "", "![sample digits](figures/samples.png)", "",
              "![class counts](figures/class_counts.png)", "",
              "| class | " + " | ".join(ctx["counts"]) + " |", "|---" * (len(ctx["counts"]) + 1) + "|"]
    for c in range(len(next(iter(ctx["counts"].values())))):
        lines.append(f"| {c} | " + " | ".join(f"{v[c]:,}" for v in ctx["counts"].values()) + " |")
    lines += ["", f"Normalization: mean {ctx['mean']:.4f}, std {ctx['std']:.4f}.", ""]
    return "\n".join(lines)

