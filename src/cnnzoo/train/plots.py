"""The run directory's figures: ``curves.png`` (loss and accuracy against epochs) and ``confusion.png``.

Drawn with matplotlib's object-oriented API (``matplotlib.figure.Figure``), so no GUI backend is ever needed.
Accuracies are fractions in the files and percent on the axes.
"""

from __future__ import annotations

from pathlib import Path


def plot_curves(history: list[dict], path: str | Path) -> None:
    """Two panels against epochs: train/val loss, and train/val (and EMA val) top-1 accuracy in percent."""
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    loss_ax.plot(epochs, [r["val_loss"] for r in history], "o-", label="validation")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss (log scale)", title="Loss", yscale="log")
    acc_ax.plot(epochs, [100 * r["train_top1"] for r in history], "o-", label="train")
    acc_ax.plot(epochs, [100 * r["val_top1"] for r in history], "o-", label="validation")
    if history and "ema_val_top1" in history[0]:
        acc_ax.plot(epochs, [100 * r["ema_val_top1"] for r in history], "o--", label="validation (EMA)")
    acc_ax.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="Accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=100)


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
    fig.savefig(path, dpi=100)
