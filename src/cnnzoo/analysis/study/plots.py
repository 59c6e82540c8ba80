"""The study's charts, each drawn from the rows of its CSV alone (numbers may be strings), so a figure can be redrawn
without retraining. Counts (layers, blocks, iterations, depths) get whole-number ticks."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from cnnzoo.analysis.study.tables import num
from cnnzoo.atomic import write_figure

WHOLE = {"integer": True, "min_n_ticks": 1}


def _mean(values: list[float | None]) -> float:
    present = [v for v in values if v is not None]  # a run without a validation split has no val_error
    return statistics.fmean(present) if present else math.nan


def _thousands(x: float, _pos: object) -> str:
    return f"{x / 1000:g}k" if x >= 1000 else f"{x:g}"


def plot_gradients(rows: list[dict], path: str | Path, label: str) -> None:
    """Per-layer gradients on log scales, one column per phase; ``rows`` as in gradients.csv (means over batches and
    seeds). Top: the scale-free ||dL/dW||*||W|| of each conv (what batch norm cannot rescale); middle: the raw
    ||dL/dW||, which batch norm makes fall as 1/||W|| while the weights grow; bottom: ||dL/dx|| into each block, and
    the share that came through the shortcut."""
    from matplotlib.figure import Figure

    rows = [dict(r, index=int(r["index"]), residual=int(r["residual"])) for r in rows]
    models = list(dict.fromkeys(r["model"] for r in rows))
    phases = list(dict.fromkeys(r["phase"] for r in rows))
    residual = {r["model"]: bool(r["residual"]) for r in rows}
    samples = max(int(r["samples"]) for r in rows)
    fig = Figure(figsize=(6 * len(phases), 11), layout="constrained")
    axes = fig.subplots(3, len(phases), squeeze=False)
    colors = {m: f"C{i}" for i, m in enumerate(models)}
    for j, phase in enumerate(phases):
        column = (axes[0][j], axes[1][j], axes[2][j])
        for m in models:
            _plot_gradient_lines(column, rows, m, phase, residual[m], colors[m])
        _label_gradient_column(column, phase)
    fig.suptitle(
        f"Gradients through depth on {label}: mean over {samples} measurements (batches x seeds)\n"
        "plain nets dashed, residual nets solid; read the top and bottom rows, which batch norm cannot rescale",
        fontsize=11,
    )
    write_figure(fig, path, dpi=90)


def _pick(rows: list[dict], model: str, phase: str, kind: str) -> list[dict]:
    """The rows of one model, phase and kind of measurement, in layer order."""
    return sorted(
        (r for r in rows if (r["model"], r["phase"], r["kind"]) == (model, phase, kind)), key=lambda r: r["index"]
    )


def _plot_gradient_lines(column: tuple, rows: list[dict], m: str, phase: str, residual: bool, color: str) -> None:
    """One model's lines in one phase's column (top, middle, bottom): solid for a residual net, dashed for a plain
    one; the shortcut's share dotted."""
    top, mid, bottom = column
    style = "-" if residual else "--"
    conv = _pick(rows, m, phase, "conv")
    x = [r["index"] for r in conv]
    top.plot(x, [num(r["scale_free"]) for r in conv], style, color=color, label=m)
    mid.plot(x, [num(r["norm"]) for r in conv], style, color=color, label=m, alpha=0.8)
    into = _pick(rows, m, phase, "block_input")
    bottom.plot(
        [r["index"] for r in into],
        [num(r["norm"]) for r in into],
        style,
        marker="o",
        markersize=3,
        color=color,
        label=f"{m}: total",
    )
    if residual:
        via = _pick(rows, m, phase, "shortcut")
        bottom.plot(
            [r["index"] for r in via],
            [num(r["norm"]) for r in via],
            ":",
            marker="^",
            markersize=3,
            color=color,
            label=f"{m}: via the shortcut",
        )


def _label_gradient_column(column: tuple, phase: str) -> None:
    """Scales, axis labels, titles, whole-number ticks, grid and legend of one phase's column."""
    from matplotlib.ticker import MaxNLocator

    top, mid, bottom = column
    top.set(
        yscale="log",
        xlabel="conv layer (1 = next to the input)",
        ylabel="||dL/dW|| x ||W|| (log)",
        title=f"Scale-free conv gradient, {phase}",
    )
    mid.set(
        yscale="log",
        xlabel="conv layer (1 = next to the input)",
        ylabel="||dL/dW|| (log)",
        title=f"Raw conv gradient (BN scales it by 1/||W||), {phase}",
    )
    bottom.set(
        yscale="log",
        xlabel="block (1 = next to the input)",
        ylabel="||dL/dx|| into the block (log)",
        title=f"Back-propagated signal into each block, {phase}",
    )
    for ax in column:
        ax.xaxis.set_major_locator(MaxNLocator(**WHOLE))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)


def _panels(kinds_depths: set[tuple[str, int]]) -> list[tuple[str, list[tuple[str, int]]]]:
    """Figure 6's panels: plain nets left, ResNets right, and depth 110 (both kinds) in a panel of its own."""
    shallow = sorted(d for _, d in kinds_depths if d < 110)
    panels = [
        ("plain networks", [("plain", d) for d in dict.fromkeys(shallow) if ("plain", d) in kinds_depths]),
        ("ResNets", [(k, d) for k, d in sorted(kinds_depths, key=lambda kd: kd[1]) if k != "plain" and d < 110]),
        ("110 layers", [(k, d) for k, d in sorted(kinds_depths) if d >= 110]),
    ]
    return [(title, members) for title, members in panels if members]


def plot_degradation(curves: list[dict], path: str | Path, label: str, footer: str = "") -> None:
    """He et al. Figure 6 in style: training error dashed, validation (held-out) error bold, against iterations;
    plain nets left, ResNets right, 110 layers in a panel of its own; the mean over seeds. ``curves`` as in
    degradation_curves.csv; ``footer``: how the numbers were made (:func:`~cnnzoo.analysis.study.tables.about_line`),
    printed under the panels."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    by_model: dict[tuple[str, int], dict[int, list[dict]]] = {}
    for r in curves:
        by_model.setdefault((r["kind"], int(r["depth"])), {}).setdefault(int(r["step"]), []).append(r)
    depths = sorted({d for _, d in by_model})
    color = {d: f"C{i}" for i, d in enumerate(depths)}
    n_seeds = max(len(rs) for per_step in by_model.values() for rs in per_step.values())
    panels = _panels(set(by_model))
    fig = Figure(figsize=(max(10, 5 * len(panels)), 5), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (title, members) in zip(axes, panels, strict=True):
        for kind, d in members:
            per_step = by_model[(kind, d)]
            steps = sorted(per_step)
            mean = {k: [_mean([num(r[k]) for r in per_step[s]]) for s in steps] for k in ("train_error", "val_error")}
            c = ("C7" if kind == "plain" else "C3") if title == "110 layers" else color[d]  # one depth, two kinds
            ax.plot(steps, mean["train_error"], "--", color=c, linewidth=1)
            ax.plot(steps, mean["val_error"], "-", color=c, linewidth=2.2, label=f"{kind}-{d}")
        ax.set(title=title, xlabel="iterations", ylabel="error (%)")
        ax.xaxis.set_major_locator(MaxNLocator(**WHOLE))
        ax.xaxis.set_major_formatter(FuncFormatter(_thousands))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    seeds = f", mean over up to {n_seeds} seeds" if n_seeds > 1 else ""
    fig.suptitle(
        f"Degradation on {label} (He et al. 2016, Fig. 6 style{seeds})\n"
        "dashed: training error; bold: validation error (held out; test error once, in degradation.md)",
        fontsize=10,
    )
    if footer:
        fig.supxlabel(footer, fontsize=7, color="0.3")
    write_figure(fig, path, dpi=90)


def plot_depth(
    rows: list[dict], pick: dict, path: str | Path, *, title: str, shared: int = 0, footer: str = ""
) -> None:
    """Validation and test accuracy, training time and parameters against depth (``rows`` as in depth.csv), the
    suggested depth starred on the validation curve (the one it was chosen from). ``shared``: runs that trained at
    once on one device (their times are then not comparable)."""
    from matplotlib.figure import Figure

    rows = [dict(r, depth=int(r["depth"])) for r in rows]
    xs = [r["depth"] for r in rows]
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    ax_acc, ax_time, ax_params = fig.subplots(1, 3)
    ax_acc.errorbar(
        xs,
        [num(r["val_top1"]) for r in rows],
        yerr=[num(r["val_top1_std"]) for r in rows],
        marker="o",
        linewidth=2,
        label="validation (chooses)",
    )
    ax_acc.plot(xs, [num(r["test_top1"]) for r in rows], "--", marker=".", color="C7", label="test (reported only)")
    ax_acc.plot(
        [pick["depth"]], [num(pick["val_top1"])], "*", color="C3", markersize=16, label=f"suggested: {pick['model']}"
    )
    ax_acc.set(xlabel="depth (layers)", ylabel="top-1 (%)", title="Accuracy")
    ax_acc.legend(fontsize=8)
    ax_time.plot(xs, [num(r["train_seconds"]) for r in rows], marker="o", color="C1")
    note = f"\n({shared} runs shared the device: not comparable)" if shared > 1 else ""
    ax_time.set(xlabel="depth (layers)", ylabel="training time (s)", title=f"Training time{note}")
    ax_time.set_ylim(bottom=0)  # from zero: a zoomed axis turns a few percent of timing noise into a slope
    ax_params.plot(xs, [num(r["params"]) / 1e6 for r in rows], marker="o", color="C2")
    ax_params.set(xlabel="depth (layers)", ylabel="parameters (millions)", title="Parameters (as trained)")
    for ax in (ax_acc, ax_time, ax_params):
        ax.set_xticks(xs)  # the depths themselves: whole numbers, no in-between ticks
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    if footer:  # how the numbers were made (tables.about_line)
        fig.supxlabel(footer, fontsize=7, color="0.3")
    write_figure(fig, path, dpi=90)
