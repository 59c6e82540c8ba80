"""The overview chart: accuracy against computation, memory and measured training speed, one panel each.

Canziani et al. 2016 draw accuracy against operations with memory beside it; here memory is a panel of its own (the
peak of one training step at the run's batch size), so no reader has to decode a point's area into megabytes.
Timings flagged as untrustworthy (``timing_flag``) are drawn with a red edge and their spread as an error bar.
"""

from __future__ import annotations

import math
from typing import Any

from cnnzoo.analysis.compare.timing import SPREAD_LIMIT

FLAG_COLOR = "#d62728"


def accuracy_limits(accuracies: list[float]) -> tuple[float, float]:
    """Y-limits (percent) that frame ``accuracies`` (percent) with room for the labels, never outside [0, 100]."""
    if not accuracies:
        return 0.0, 100.0
    lo, hi = min(accuracies), max(accuracies)
    pad = max(3.0, 0.25 * (hi - lo))  # room for a label above the top point and below the lowest
    return max(0.0, lo - pad), min(100.0, hi + pad)


def model_colors(models: list[str]) -> dict[str, tuple]:
    """One colour per model (several runs of one model share it): tab10, or tab20 beyond ten models."""
    from matplotlib import colormaps

    names = list(dict.fromkeys(models))
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def plain_log_axis(axis: Any) -> None:
    """Log-scale ticks at 1, 2 and 5 of each decade, labelled as plain numbers (0.05, not 5x10^-2)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.10g}"))
    axis.set_minor_formatter(NullFormatter())


PANELS = (
    ("macs", "GMACs per image (multiply-accumulates, log scale)", "computation"),
    ("train_mem_mb", "peak memory of one training step (MiB above the weights, log scale)", "memory"),
    ("train_img_s", "training throughput (images/s, log scale)", "measured training speed"),
)


def _x(row: dict, key: str) -> float | None:
    v = row.get(key)
    if not v or (key != "macs" and not row.get("macs")):
        return None
    return v / 1e9 if key == "macs" else v


def overview_figure(rows: list[dict], device: str, *, label: str | None = None):
    """Accuracy against GMACs (area ~ parameters), training memory and training throughput, as a ``Figure``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(18, 6.2), layout="constrained")
    axes = fig.subplots(1, 3)
    biggest = max((r["params"] or 1 for r in rows), default=1)
    colors = model_colors([r["model"] for r in rows])
    ylim = accuracy_limits([100 * r["accuracy"] for r in rows if r.get("accuracy") is not None])
    labels: list[tuple[Any, list]] = []
    for ax, (key, xlabel, what) in zip(axes, PANELS, strict=True):
        labels.append((ax, _panel(ax, rows, key, colors, biggest)))
        ax.set(xlabel=xlabel if key != "train_img_s" else f"training throughput on {device} (images/s, log scale)")
        ax.set(xscale="log", ylabel="top-1 accuracy (%)", title=f"Accuracy vs {what}")
        if any(_x(r, key) for r in rows):
            plain_log_axis(ax.xaxis)
        ax.grid(alpha=0.3, which="both")
        ax.margins(x=0.18)
        ax.set_ylim(ylim)  # from the data, not from zero: the differences between the nets stay visible
    shape = rows[0]["input"] if rows else ""
    axes[0].set_title(f"Accuracy vs computation at {shape} (point area = parameters)")
    _place_labels(fig, labels)
    data = f" on {label}" if label else ""
    fig.suptitle(
        f"The classic CNNs{data}: what accuracy costs, measured on {device}\n" + "; ".join(_legend(rows)), fontsize=10
    )
    return fig


def _panel(ax: Any, rows: list[dict], key: str, colors: dict[str, tuple], biggest: float) -> list:
    """Draw every row that has a ``key`` on one panel; return its point labels (for :func:`_place_labels`)."""
    ax_labels = []
    for r in rows:
        x = _x(r, key)
        if x is None:
            continue
        if r.get("accuracy") is None:
            _cost_only(ax, r, x, colors[r["model"]])
        else:
            ax_labels.append(_point(ax, r, x, key, colors[r["model"]], biggest))
    return ax_labels


def _cost_only(ax: Any, row: dict, x: float, color: tuple) -> None:
    """Cost known, accuracy not: a dotted line at its cost, named at the foot."""
    ax.axvline(x, color=color, ls=":", lw=1.5)
    ax.annotate(
        row["model"],
        (x, 0.02),
        xycoords=ax.get_xaxis_transform(),
        xytext=(-2, 0),
        textcoords="offset points",
        rotation=90,
        fontsize=8,
        ha="right",
        va="bottom",
    )


def _point(ax: Any, r: dict, x: float, key: str, color: tuple, biggest: float) -> tuple:
    """One net's marker (area ~ parameters; a circle when measured, a square when published; a red edge and its
    interquartile band when its timing is flagged) and its label: (label, gap, point, marker radius in points)."""
    flagged = key == "train_img_s" and bool(r.get("timing_flag"))
    acc, size = 100 * r["accuracy"], 40 + 1200 * r["params"] / biggest
    measured = (r.get("accuracy_source") or "").startswith("measured")
    ax.scatter(
        x,
        acc,
        s=size,
        color=color,
        alpha=0.55,
        marker="o" if measured else "s",
        edgecolors=FLAG_COLOR if flagged else "k",
        linewidths=2.5 if flagged else 1.0,
    )
    spread = r.get("train_img_s_spread") if key == "train_img_s" else None
    if spread and spread > SPREAD_LIMIT:  # too wide to trust: its interquartile band, as wide as it is
        ax.errorbar(x, acc, xerr=[[x * spread / 2], [x * spread / 2]], color=FLAG_COLOR, capsize=3, lw=1)
    name = f"{r['model']} ({r['run']})" if r.get("run") else r["model"]
    text = f"{name}\n{r['params'] / 1e6:.1f}M params" + ("\ntiming flagged" if flagged else "")
    gap = math.sqrt(size) / 2 + 3  # marker radius in points, plus a margin
    ann = ax.annotate(
        text,
        (x, acc),
        fontsize=8,
        ha="center",
        va="bottom",
        xytext=(0, gap),
        textcoords="offset points",
        annotation_clip=False,
        color=FLAG_COLOR if flagged else "black",
    )
    return ann, gap, (x, acc), math.sqrt(size) / 2


def _legend(rows: list[dict]) -> list[str]:
    """What the markers, lines and red edges on the chart mean, for the kinds it shows."""
    sources = sorted({r["accuracy_source"] for r in rows if r.get("accuracy_source")})
    kinds = []
    if any(s.startswith("measured") for s in sources):
        kinds.append("circles: " + "; ".join(s for s in sources if s.startswith("measured")))
    if any(s.startswith("published ImageNet") for s in sources):
        kinds.append("squares: published ImageNet top-1 (torchvision weights)")
    if any(s.startswith("published CIFAR-10") for s in sources):
        kinds.append("squares: published CIFAR-10 accuracy of an equivalent implementation (sources in compare.md)")
    if any(r.get("accuracy") is None and r.get("macs") for r in rows):
        kinds.append("dotted lines: cost only, accuracy unknown (pass --runs RUN_DIR)")
    if any(r.get("timing_flag") for r in rows):
        kinds.append(
            "red edge: timing not trustworthy (see the table's timing column), red bar: its interquartile band"
        )
    return kinds


def _place_labels(fig: Any, labels: list[tuple[Any, list]]) -> None:
    """Move each point's label (above, below, right, left of its marker, then further out) to the first place where
    it overlaps no label already placed in its panel (plain20 and resnet56 sit on top of each other otherwise)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.transforms import Bbox

    canvas = FigureCanvasAgg(fig)
    fig.draw_without_rendering()  # the constrained layout settles the axes first
    renderer = canvas.get_renderer()
    for ax, anns in labels:
        placed = []  # the markers first: a label covers no point either
        for _ann, _gap, (x, y), radius in anns:
            cx, cy = ax.transData.transform((x, y))
            r = radius * fig.dpi / 72
            placed.append(Bbox.from_extents(cx - r, cy - r, cx + r, cy + r))
        for ann, gap, _xy, _radius in anns:
            spots = [
                ((0, gap), "center", "bottom"),
                ((0, -gap), "center", "top"),
                ((gap, 0), "left", "center"),
                ((-gap, 0), "right", "center"),
                ((gap, gap), "left", "bottom"),
                ((-gap, gap), "right", "bottom"),
                ((gap, -gap), "left", "top"),
                ((-gap, -gap), "right", "top"),
            ]
            spots += [((dx * 2.5, dy * 2.5), ha, va) for (dx, dy), ha, va in spots]
            best = None  # (overlap, spot): the least-covered spot when none is free
            for spot in spots:
                box = _try(ann, spot, renderer)
                covered = sum(_overlap(box, other) for other in placed)
                if best is None or covered < best[0]:
                    best = (covered, spot)
                if covered == 0:
                    break
            box = _try(ann, best[1], renderer)
            placed.append(box)


def _try(ann: Any, spot: tuple, renderer: Any) -> Any:
    """Put ``ann`` at ``spot`` (offset in points, alignment) and return its box in display pixels."""
    offset, ha, va = spot
    ann.xyann = offset
    ann.set(ha=ha, va=va)
    return ann.get_window_extent(renderer)


def _overlap(a: Any, b: Any) -> float:
    """Area (square pixels) that two boxes share."""
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(0.0, w) * max(0.0, h)
