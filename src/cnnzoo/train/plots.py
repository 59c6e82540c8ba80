"""The run directory's figures: ``curves.png`` (loss and accuracy against epochs) and ``confusion.png``.

Drawn with matplotlib's object-oriented API (``matplotlib.figure.Figure``), so no GUI backend is ever needed; the
``*_figure`` functions return the figure (tests inspect it), the ``plot_*`` functions save it. Accuracies are
fractions in the files and percent on the axes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cnnzoo.atomic import write_figure


def training_objective(cfg: Any) -> str:
    """What the training loss measures, from the config's ``label_smoothing``, ``mixup`` and ``cutmix``.

    "cross-entropy" when plain; otherwise e.g. "cross-entropy, label smoothing 0.1, mixup/cutmix targets": the
    training curve is then not comparable to the validation loss, which is always plain cross-entropy.
    """
    parts = ["cross-entropy"]
    if getattr(cfg, "label_smoothing", 0) > 0:
        parts.append(f"label smoothing {cfg.label_smoothing:g}")
    mixes = [name for name in ("mixup", "cutmix") if getattr(cfg, name, 0) > 0]
    if mixes:
        parts.append(f"{'/'.join(mixes)} targets")
    return ", ".join(parts)


LOG_SPAN = 3.0  # a loss axis is logarithmic only when its values span at least this factor


def loss_axis(ax, values: list[float], label: str = "cross-entropy loss") -> None:
    """Scale and label a loss axis so its ticks read: logarithmic (labelled ``0.5``, ``1``, ``2``, not ``2x10^0``)
    when the losses span a factor of ``LOG_SPAN`` or more, where a log axis shows both the early fall and the late
    creep; linear over a smaller range, where a log axis would leave one or two unreadable ticks."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    finite = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    if len(finite) < 2 or max(finite) / min(finite) < LOG_SPAN:
        ax.set_ylabel(label)
        return
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    plain = ScalarFormatter()
    plain.set_scientific(False)
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel(f"{label} (log scale)")


def _best_epoch(history: list[dict]) -> int | None:
    """The first epoch with the highest validation top-1 (the trainer's own rule), None without validation."""
    scored = [(r["val_top1"], -r["epoch"]) for r in history if r.get("val_top1") is not None]
    scored = [s for s in scored if not math.isnan(s[0])]
    return -max(scored)[1] if scored else None


def curves_figure(
    history: list[dict],
    *,
    model: str = "",
    data: str = "",
    run: str = "",
    objective: str = "cross-entropy",
    best_epoch: int | None = None,
):
    """Two panels against epochs: train/val loss, and train/val (and EMA val) top-1 accuracy in percent.

    The title names ``model``, ``data`` and ``run``; ``best_epoch`` (default: the first epoch with the best
    validation top-1) is marked on both panels; ``objective`` labels the training loss when it is not plain
    cross-entropy (see :func:`training_objective`).
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 4.4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)

    def curve(ax, key: str, scale: float, style: str, label: str) -> None:
        values = [r.get(key) for r in history]
        if any(v is not None for v in values):  # no validation split: no validation curves
            ax.plot(epochs, [math.nan if v is None else scale * v for v in values], style, label=label)

    plain = objective == "cross-entropy"
    curve(loss_ax, "train_loss", 1, "o-", "train" if plain else f"train ({objective})")
    curve(loss_ax, "val_loss", 1, "o-", "validation" if plain else "validation (cross-entropy)")
    losses = [r.get(k) for r in history for k in ("train_loss", "val_loss")]
    loss_axis(loss_ax, losses, "cross-entropy loss" if plain else "loss")
    loss_ax.set(xlabel="epoch", title="Loss" if plain else "Loss (training objective vs validation)")
    curve(acc_ax, "train_top1", 100, "o-", "train")
    curve(acc_ax, "val_top1", 100, "o-", "validation")
    curve(acc_ax, "ema_val_top1", 100, "o--", "validation (EMA)")
    acc_ax.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="Accuracy")
    best = _best_epoch(history) if best_epoch is None else best_epoch
    for ax in (loss_ax, acc_ax):
        if best is not None and best > 0:
            ax.axvline(best, color="0.4", ls="--", lw=1, label=f"best epoch ({best})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    where = " on ".join(p for p in (model, data) if p)
    fig.suptitle(", ".join(p for p in (where, f"run {run}" if run else "") if p) or "Training curves")
    return fig


def plot_curves(
    history: list[dict],
    path: str | Path,
    *,
    model: str = "",
    data: str = "",
    run: str = "",
    objective: str = "cross-entropy",
    best_epoch: int | None = None,
) -> None:
    """Save :func:`curves_figure` to ``path`` (``curves.png``), atomically."""
    fig = curves_figure(history, model=model, data=data, run=run, objective=objective, best_epoch=best_epoch)
    write_figure(fig, path)


def confusion_figure(confusion: list[list[int]], classes: list[str], *, title: str = ""):
    """The confusion matrix (rows: true class, columns: predicted), counts in the cells, as a ``Figure``.

    Column labels are rotated when the longest name is wider than a cell (CIFAR's "automobile" already is at ten
    classes), vertical beyond twenty classes.
    """
    import numpy as np
    from matplotlib import rcParams
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    k = len(classes)
    side = min(16.0, max(5.0, 0.45 * k + 2))
    fig = Figure(figsize=(side, side), layout="constrained")
    ax = fig.subplots()
    # A tick label is about 0.6 em per character; a cell is about 0.75 of the side over k (the rest: labels, bar).
    label_inches = max((len(str(c)) for c in classes), default=0) * 0.6 * rcParams["font.size"] / 72
    rotation = 90 if k > 20 else 45 if label_inches > 0.75 * side / max(k, 1) else 0
    ConfusionMatrixDisplay(np.asarray(confusion), display_labels=classes).plot(
        ax=ax, include_values=k <= 20, colorbar=k <= 20, xticks_rotation=rotation
    )
    if rotation == 45:  # anchored at the label's end, so each name ends under its own column
        for label in ax.get_xticklabels():
            label.set(ha="right", rotation_mode="anchor")
    ax.set_title(title or "Confusion matrix (test split)")
    return fig


def plot_confusion(confusion: list[list[int]], classes: list[str], path: str | Path, *, title: str = "") -> None:
    """Save :func:`confusion_figure` to ``path`` (``confusion.png``), atomically."""
    write_figure(confusion_figure(confusion, classes, title=title), path)
