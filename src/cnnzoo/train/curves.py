"""``cnnzoo curves RUN [RUN ...] --out FILE.png``: the training and validation curves of several runs on one chart.

What a learner wants right after training resnet20 and plain20 (d2l draws it live; without this it takes
TensorBoard): loss and top-1 accuracy of every run overlaid, one colour per run (validation solid, training dashed),
each run labelled by its model and its name (``--label`` given to ``train``, else the run folder's name), against
epochs or optimizer steps. Reads only ``cnnzoo-run.json``, ``config.toml`` and ``metrics.jsonl``: no torch.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from cnnzoo.errors import CnnzooError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MARKER = "cnnzoo-run.json"  # what makes a folder a run directory (cnnzoo.train.run.MARKER)


@dataclass
class RunSeries:
    """One run's per-epoch curves: ``label`` (model and run name), x values and the metrics of each epoch line
    (``None`` where an epoch was not validated). Accuracies are fractions."""

    label: str
    model: str
    data: str
    x: list[int]
    train_loss: list[float | None]
    val_loss: list[float | None]
    train_top1: list[float | None]
    val_top1: list[float | None]


def read_series(run_dir: str | Path, *, x: str = "epoch") -> RunSeries:
    """The curves of the run in ``run_dir`` against ``x`` ("epoch" or "step"); a one-line :class:`CnnzooError` for
    anything that is not a cnnzoo run directory with at least one finished epoch."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CnnzooError(f"{run_dir}: no such run directory")
    if not (run_dir / MARKER).is_file():
        seeds = sorted(p.name for p in run_dir.glob("seed-*") if (p / MARKER).is_file())
        hint = (
            f" (it holds the runs {', '.join(seeds[:3])}{', ...' if len(seeds) > 3 else ''}: name them)"
            if seeds
            else ""
        )
        raise CnnzooError(f"{run_dir}: not a cnnzoo run directory (no {MARKER}){hint}")
    try:
        config = tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        history = [json.loads(line) for line in lines if line.strip()]
    except FileNotFoundError as e:
        raise CnnzooError(f"{run_dir}: no {Path(e.filename).name} (a run that never finished an epoch?)") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CnnzooError(f"{run_dir}: cannot read its config.toml / metrics.jsonl ({e})") from None
    if not history:
        raise CnnzooError(f"{run_dir}: no finished epoch yet (metrics.jsonl is empty)")
    model = str(config.get("model", "?"))
    name = config.get("label") or run_dir.resolve().name
    if name == model:  # a folder named after its model says nothing more
        name = str(run_dir)

    def column(key: str) -> list[float | None]:
        values = [r.get(key) for r in history]
        return [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in values]

    return RunSeries(
        label=f"{model} · {name}",
        model=model,
        data=str(config.get("data", "?")),
        x=[int(r[x]) for r in history],
        train_loss=column("train_loss"),
        val_loss=column("val_loss"),
        train_top1=column("train_top1"),
        val_top1=column("val_top1"),
    )


def runs_figure(series: list[RunSeries], *, x: str = "epoch", title: str | None = None):
    """Two panels, loss and top-1 accuracy (percent), every run in its own colour: validation solid with markers,
    training dashed. Returns the ``Figure``; its first axes' legend holds one entry per run."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    from cnnzoo.train.plots import loss_axis

    fig = Figure(figsize=(11, 4.8), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    colours = [f"C{i % 10}" for i in range(len(series))]
    losses: list[float] = []
    for s, colour in zip(series, colours, strict=True):
        for ax, key, scale in (
            (loss_ax, "train_loss", 1),
            (loss_ax, "val_loss", 1),
            (acc_ax, "train_top1", 100),
            (acc_ax, "val_top1", 100),
        ):
            values = getattr(s, key)
            pairs = [(xv, scale * v) for xv, v in zip(s.x, values, strict=True) if v is not None]
            if not pairs:
                continue
            xs, ys = zip(*pairs, strict=True)
            val = key.startswith("val")
            marker = "o" if val and len(xs) <= 40 else None
            ax.plot(xs, ys, "-" if val else "--", color=colour, marker=marker, ms=3, lw=1.6 if val else 1.1)
            if ax is loss_ax:
                losses.extend(ys)
    loss_axis(loss_ax, losses)
    loss_ax.set(xlabel=x, title="Loss")
    acc_ax.set(xlabel=x, ylabel="top-1 accuracy (%)", title="Top-1 accuracy")
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    runs = [Line2D([], [], color=c, lw=2, label=s.label) for s, c in zip(series, colours, strict=True)]
    styles = [
        Line2D([], [], color="0.3", ls="-", marker="o", ms=3, label="validation"),
        Line2D([], [], color="0.3", ls="--", label="training"),
    ]
    loss_ax.legend(handles=runs, fontsize=8, title="run", title_fontsize=8)
    acc_ax.legend(handles=styles, fontsize=8, loc="lower right")
    datas = sorted({s.data for s in series})
    fig.suptitle(title or f"{len(series)} run{'s' if len(series) != 1 else ''} on {', '.join(datas)}")
    return fig


def plot_runs(run_dirs: list[str | Path], out: str | Path, *, x: str = "epoch", title: str | None = None):
    """Read every run (all checked before anything is drawn), draw :func:`runs_figure` and write it to ``out``
    atomically. Returns the figure."""
    from cnnzoo.atomic import write_figure

    if x not in ("epoch", "step"):
        raise CnnzooError(f"x must be epoch or step, got {x!r}")
    series = [read_series(d, x=x) for d in run_dirs]
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise CnnzooError(f"--out {out}: the chart is a PNG; name a .png file")
    if out.is_dir():
        raise CnnzooError(f"--out {out}: is a folder; name a .png file")
    if not out.parent.is_dir():
        raise CnnzooError(f"--out {out}: the folder {out.parent} does not exist")
    fig = runs_figure(series, x=x, title=title)
    write_figure(fig, out)
    return fig


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``cnnzoo curves``."""
    p = sub.add_parser(
        "curves",
        help="training and validation curves of several runs on one chart (PNG)",
        description="Loss and top-1 accuracy of each RUN overlaid, one colour per run (validation solid, training "
        "dashed), labelled by model and run name (train --label, else the folder's name).",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (cnnzoo train --out)")
    p.add_argument("--out", default="curves.png", help="the PNG to write (default: curves.png in the current folder)")
    p.add_argument("--x", choices=("epoch", "step"), default="epoch", help="x axis: epochs or optimizer steps")
    p.add_argument("--title", default=None, help="the chart's title (default: how many runs, on which data)")
    p.set_defaults(func=cmd_curves)


def cmd_curves(args: argparse.Namespace) -> int:
    plot_runs(args.runs, args.out, x=args.x, title=args.title)
    print(args.out)
    return 0
