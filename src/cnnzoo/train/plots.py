"""The run directory's figures: ``curves.png`` (loss and accuracy against epochs) and ``confusion.png``.

Drawn with matplotlib's object-oriented API (``matplotlib.figure.Figure``), so no GUI backend is ever needed.
Accuracies are fractions in the files and percent on the axes.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from cnnzoo.atomic import write_atomic


def plot_curves(history: list[dict], path: str | Path) -> None:
    """Two panels against epochs: train/val loss, and train/val (and EMA val) top-1 accuracy in percent."""
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)

    def curve(ax, key: str, scale: float, style: str, label: str) -> None:
        values = [r.get(key) for r in history]
        if any(v is not None for v in values):  # no validation split: no validation curves
            ax.plot(epochs, [math.nan if v is None else scale * v for v in values], style, label=label)

    curve(loss_ax, "train_loss", 1, "o-", "train")
    curve(loss_ax, "val_loss", 1, "o-", "validation")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss (log scale)", title="Loss", yscale="log")
    curve(acc_ax, "train_top1", 100, "o-", "train")
    curve(acc_ax, "val_top1", 100, "o-", "validation")
    curve(acc_ax, "ema_val_top1", 100, "o--", "validation (EMA)")
    acc_ax.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="Accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def plot_confusion(confusion: list[list[int]], classes: list[str], path: str | Path, *, title: str = "") -> None:
    """The confusion matrix of the test split (rows: true class, columns: predicted), counts in the cells."""
    import numpy as np
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    k = len(classes)
    side = min(16.0, max(5.0, 0.45 * k + 2))
    fig = Figure(figsize=(side, side), layout="constrained")
    ax = fig.subplots()
    ConfusionMatrixDisplay(np.asarray(confusion), display_labels=classes).plot(
        ax=ax, include_values=k <= 20, colorbar=k <= 20, xticks_rotation="vertical" if k > 10 else "horizontal"
    )
    ax.set_title(title or "Confusion matrix (test split)")
    _save(fig, path)


def _save(fig, path: str | Path) -> None:
    """``fig`` as a PNG at ``path``, written atomically (a run directory never holds half a figure)."""
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    write_atomic(path, png.getvalue())
