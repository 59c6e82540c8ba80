"""``cnnzoo compare --train-budget 10m --data cifar10``: which classic net to train in the time this machine has.

Each net trains for the same wall-clock budget of training steps on this machine. Budget-to-iterations is decided
once per net by a short timed probe (the trainer's own set-up and step on the real data, ``--probe`` seconds after a
warm-up), stored in ``OUT/<model>/probe.json``; a rerun reads it back, so the runs are reproducible and a stopped
one resumes to the same length. The learning rate decays linearly to zero over exactly those iterations (Li, Yumer
and Ramanan 2020, "Budgeted training": a schedule annealed to the budget beats a full schedule cut short), with no
validation until the end; the run is then tested once. The table shows what the budget bought (test top-1) beside
the costs (MACs, training memory from the probe) and how long the training steps really took (``train_seconds``
from the run's report; the final evaluation is outside the budget).

Each net's run is a trainer run directory, ``OUT/<model>/run``, reused when finished and resumed when stopped
(:mod:`cnnzoo.analysis.study.runs`), refused when it holds another configuration.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import statistics
import time
from pathlib import Path
from typing import Any

from cnnzoo.analysis import tables
from cnnzoo.atomic import write_atomic, write_figure
from cnnzoo.errors import CnnzooError

FIELDS = [
    "model",
    "params",
    "macs",
    "batch_size",
    "seconds_per_step",
    "iterations",
    "epochs",
    "train_seconds",
    "train_mem_mb",
    "accuracy",
    "run",
    "note",
]
WARMUP_STEPS = 3
MIN_PROBE_STEPS = 5


def parse_budget(text: str) -> float:
    """``"10m"`` -> 600.0; ``"90s"``, ``"1h"``, ``"1h30m"``, ``"45"`` (seconds); anything else a CnnzooError."""
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text or "")
    if not parts or not any(parts.groups()):
        raise CnnzooError(f"--train-budget must be a duration like 10m, 90s or 1h30m; got {text!r}")
    h, m, s = (float(g) if g else 0.0 for g in parts.groups())
    seconds = 3600 * h + 60 * m + s
    if seconds <= 0:
        raise CnnzooError(f"--train-budget must be longer than zero; got {text!r}")
    return seconds


def iterations_for(budget_s: float, seconds_per_step: float) -> int:
    """Optimizer steps that fit in the budget at the probe's pace (at least one)."""
    if seconds_per_step <= 0 or not math.isfinite(seconds_per_step):
        raise CnnzooError(f"the probe measured {seconds_per_step!r} s per step; cannot size the budget")
    return max(1, math.floor(budget_s / seconds_per_step))


def probe_key(cfg) -> dict[str, Any]:
    """What decides the pace of a step: a stored probe is reused only when all of it is the same."""
    return {k: getattr(cfg, k) for k in ("model", "data", "batch_size", "device", "recipe", "image_size", "threads")}


def probe(cfg, seconds: float, log=print) -> dict[str, Any]:
    """Time the trainer's step on the real data for about ``seconds`` (after a warm-up), through
    :func:`cnnzoo.train.estimate.time_steps`: the median seconds per step and the number timed. A step's time
    includes loading its batch, as the run's own clock (its ``train_seconds``, which the budget is spent in) does."""
    from cnnzoo.train.distributed import init_distributed
    from cnnzoo.train.engine import backend_settings
    from cnnzoo.train.estimate import time_steps
    from cnnzoo.train.run import build_run

    dist, device = init_distributed(cfg)
    with backend_settings(cfg, device):
        run = build_run(cfg, dist, device, log=lambda *a, **k: None)
        batches = _epochs(run.data.train)
        times = time_steps(
            run.net, run.optimizer, run.ctx, batches, warmup=WARMUP_STEPS, steps=MIN_PROBE_STEPS, seconds=seconds
        ).timed
        return {
            "seconds_per_step": statistics.median(times),
            "spread": _spread(times),
            "steps_timed": len(times),
            "steps_per_epoch": run.steps_per_epoch,
            "input_shape": [run.data.in_channels, run.data.image_size, run.data.image_size],
            "num_classes": run.data.num_classes,
        }


def step_memory_mb(cfg, shape: tuple[int, int, int] | None = None, num_classes: int = 10) -> float:
    """MiB one training step of ``cfg``'s net adds at its peak above the weights and the optimizer's state, at the
    run's batch size on random images of ``shape`` (the data's, as the probe saw it; default the net's registered
    input size): the sweep's measure
    (:func:`~cnnzoo.analysis.compare.sweep.peak_added_mb`), which counts allocations, so nets measured one after
    another in one process do not hide behind the first one's peak (a process's peak resident set only grows)."""
    import torch

    from cnnzoo.analysis.compare.sweep import peak_added_mb
    from cnnzoo.models import create_model, get_model_info
    from cnnzoo.train.engine import backend_settings, resolve_device, setup_training, train_step

    device = resolve_device(cfg.device)
    shape = tuple(shape or get_model_info(cfg.model).input_size)
    with backend_settings(cfg, device):
        torch.manual_seed(0)
        model = create_model(cfg.model, num_classes=num_classes, in_channels=shape[0])
        net, optimizer, ctx = setup_training(model, cfg, device)
        x = torch.randn(cfg.batch_size, *shape, device=device)
        y = torch.randint(0, num_classes, (cfg.batch_size,), device=device)
        train_step(net, optimizer, x, y, ctx)  # the optimizer's state exists before the measured step, as in a run
        return peak_added_mb(lambda: train_step(net, optimizer, x, y, ctx), device)


def _epochs(train):
    """The batches of ``train``'s epoch 0, then 1, 2, ...: as many as the probe takes."""
    for epoch in itertools.count():
        yield from train.epoch(epoch)


def _spread(values: list[float]) -> float | None:
    from cnnzoo.analysis.compare.timing import spread

    return spread(values)


# The first tenth of the budget ramps the lr up from zero (Goyal et al. 2017's gradual warm-up): without it
# vgg16_cifar's loss went from 2.3 to 6.1 in its first 10 steps at lr 0.1 and the net never left chance (10 min on
# the 2-core CPU: test top-1 12.0 %); with it the loss is below chance by step 60. docs/benchmarks.md has both runs.
BUDGET_WARMUP = 0.1


def budget_config(model: str, args: dict[str, Any], iterations: int = 1):
    """The run's configuration: the recipe with ``iterations`` steps, a linear warm-up over the first
    :data:`BUDGET_WARMUP` of them, then linear decay to zero (Li et al. 2020's budget-aware schedule), validated once
    at the end. A batch size other than the recipe's scales its learning rate linearly (Goyal et al. 2017)."""
    from cnnzoo.train.config import build_config

    base = build_config(model, args["data"], recipe=args["recipe"], data_dir=args.get("data_dir"))
    over: dict[str, Any] = {"device": args["device"]}
    if args.get("batch_size") and args["batch_size"] != base.batch_size:
        over.update(batch_size=args["batch_size"], lr=base.lr * args["batch_size"] / base.batch_size)
    return build_config(
        model,
        args["data"],
        recipe=args["recipe"],
        data_dir=args.get("data_dir"),
        iterations=iterations,
        schedule="linear",
        min_lr=0.0,
        warmup_epochs=0.0,
        warmup_steps=round(BUDGET_WARMUP * iterations),
        eval_every=10**6,  # validate after the last epoch only: the budget is for training
        early_stop=0,
        **over,
    )


def fixed_probe(model: str, folder: Path, args: dict[str, Any], budget_s: float, log=print) -> dict[str, Any]:
    """The net's probe, from ``folder/probe.json`` when it was measured under the same conditions, else measured
    now and stored; with ``iterations`` for this budget."""
    cfg = budget_config(model, args)
    key = json.loads(json.dumps(probe_key(cfg)))
    path = folder / "probe.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            log(f"  {model}: probe from {path} ({stored['seconds_per_step']:.3g} s per step)")
            return dict(stored, iterations=iterations_for(budget_s, stored["seconds_per_step"]))
        log(f"  {model}: {path} was measured under other conditions; probing again")
    log(f"  {model}: probing the step for {args['probe']:g} s ...")
    found = dict(probe(cfg, args["probe"], log), key=key, measured=time.strftime("%Y-%m-%d %H:%M:%S"))
    write_atomic(path, json.dumps(found, indent=2) + "\n")
    return dict(found, iterations=iterations_for(budget_s, found["seconds_per_step"]))


def run_budget(models: list[str], *, budget_s: float, out: str | Path, args: dict[str, Any], log=print) -> list[dict]:
    """Probe, train and test every net for the budget; write budget.csv/json/md/png into ``out``; return the rows."""
    from cnnzoo.analysis.compare.common import CompareInterrupted
    from cnnzoo.analysis.compare.timing import duration
    from cnnzoo.analysis.study.runs import train_run

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    each = budget_s + args["probe"] + 60  # training, the probe, and about a minute for set-up and the one test
    log(
        f"estimate: about {duration(len(models) * each)} for {len(models)} nets ({budget_s / 60:.3g} min of training, "
        f"a {args['probe']:g} s probe, set-up and one test each; less where probes and runs are already done)"
    )
    plans = _plan_runs(models, out, args, budget_s, log)
    rows = [_budget_row(name, found, run) for name, found, run in plans]
    meta = {
        "budget_s": budget_s,
        "data": args["data"],
        "recipe": args["recipe"],
        "device": args["device"],
        "schedule": f"a linear warm-up over the first {BUDGET_WARMUP:.0%} of the iterations, then linear decay to zero "
        "(Li et al. 2020)",
        "label": args.get("label"),
    }
    _write(rows, out, meta, chart=False)
    for i, (row, (name, _found, run)) in enumerate(zip(rows, plans, strict=True), 1):
        log(f"[{i}/{len(rows)}] {name}: {row['iterations']} steps ({row['epochs']:.2f} epochs) into {run.run_dir} ...")
        report = train_run(run)
        if report.get("interrupted"):
            row["note"] = f"stopped at step {report.get('step')}: rerun the same command to resume"
            _write(rows, out, meta, chart=True)
            raise CompareInterrupted(f"interrupted while training {name}: rerun the same command to resume")
        row.update(accuracy=report["test"]["top1"], train_seconds=report.get("train_seconds"))
        log(f"[{i}/{len(rows)}] {name}: test top-1 {100 * row['accuracy']:.2f}% in {row['train_seconds']:.0f} s")
        _write(rows, out, meta, chart=False)
    _write(rows, out, meta, chart=True)
    return rows


def _plan_runs(models: list[str], out: Path, args: dict[str, Any], budget_s: float, log=print) -> list[tuple]:
    """(name, probe, Run) of every net: every probe first and every run folder checked, so a refused folder stops
    before any training."""
    from cnnzoo.analysis.study.runs import Run, check_reuse

    plans = []
    for i, name in enumerate(models, 1):
        log(f"[{i}/{len(models)}] {name}")
        found = fixed_probe(name, out / name, args, budget_s, log)
        cfg = budget_config(name, args, found["iterations"])
        plans.append((name, found, Run(cfg, out / name / "run")))
    check_reuse([p[2] for p in plans], overwrite=bool(args.get("overwrite")))
    return plans


def _budget_row(name: str, found: dict[str, Any], run) -> dict:
    """A net's row before it trains: its costs, the probe's pace and the length the budget buys."""
    from cnnzoo.analysis.profile import profile_model

    prof = profile_model(name, num_classes=None, input_shape=None)
    return {
        "model": name,
        "params": prof["params"],
        "macs": prof["macs"],
        "batch_size": run.config.batch_size,
        "seconds_per_step": found["seconds_per_step"],
        "iterations": found["iterations"],
        "epochs": found["iterations"] / found["steps_per_epoch"],
        "train_mem_mb": step_memory_mb(run.config, found.get("input_shape"), found.get("num_classes", 10)),
        "run": str(run.run_dir),
        "note": "",
    }


def _write(rows: list[dict], out: Path, meta: dict, *, chart: bool) -> None:
    write_atomic(out / "budget.csv", tables.to_csv(rows, FIELDS))
    write_atomic(
        out / "budget.json",
        json.dumps({"meta": meta, "rows": [{k: r.get(k) for k in FIELDS} for r in rows]}, indent=2) + "\n",
    )
    write_atomic(out / "budget.md", budget_markdown(rows, meta))
    if chart:
        write_figure(budget_figure(rows, meta), out / "budget.png", dpi=90)


def _columns() -> list[tables.Column]:
    c = tables.Column

    def f(key, spec, scale=None):
        return lambda r: "" if r.get(key) is None else format(r[key] * scale if scale else r[key], spec)

    return [
        c("model", "model", justify="left"),
        c("params", "params", f("params", ",")),
        c("macs", "GMACs", f("macs", ".3f", 1e-9)),
        c("batch_size", "batch", f("batch_size", "d")),
        c("seconds_per_step", "s/step (probe)", f("seconds_per_step", ".3g")),
        c("iterations", "steps", f("iterations", ",")),
        c("epochs", "epochs", f("epochs", ".2f")),
        c("train_seconds", "train s", f("train_seconds", ",.0f")),
        c("train_mem_mb", "train MiB", f("train_mem_mb", ",.0f")),
        c("accuracy", "top-1 % at budget", f("accuracy", ".2f", 100.0)),
        c("note", "note", wrap=True, justify="left"),
    ]


def budget_markdown(rows: list[dict], meta: dict) -> str:
    """The table with how it was made."""
    data = meta.get("label") or meta["data"]
    intro = (
        f"Equal training budget of {meta['budget_s'] / 60:.3g} min per net on {meta['device']}, {data}, recipe "
        f"{meta['recipe']} with {meta['schedule']}; steps fixed by a timed probe of the trainer's step; tested once "
        "on the whole test split. train s = the training steps' time as the run's report measured it.\n\n"
    )
    return intro + tables.to_markdown(rows, _columns())


def budget_figure(rows: list[dict], meta: dict):
    """Accuracy at the budget against MACs and against training memory."""
    from matplotlib.figure import Figure

    from cnnzoo.analysis.compare.chart import model_colors, plain_log_axis

    fig = Figure(figsize=(13, 5.6), layout="constrained")
    colors = model_colors([r["model"] for r in rows])
    done = [r for r in rows if r.get("accuracy") is not None]
    for ax, key, xlabel in zip(
        fig.subplots(1, 2),
        ("macs", "train_mem_mb"),
        ("GMACs per image (log scale)", "training step memory (MiB above the weights, log scale)"),
        strict=True,
    ):
        for r in done:
            x = r[key] / 1e9 if key == "macs" else r[key]
            ax.scatter(x, 100 * r["accuracy"], s=120, color=colors[r["model"]], edgecolors="k", alpha=0.7)
            ax.annotate(
                f"{r['model']}\n{r['epochs']:.2f} epochs",
                (x, 100 * r["accuracy"]),
                fontsize=8,
                xytext=(0, 9),
                textcoords="offset points",
                ha="center",
            )
        ax.set(xscale="log", xlabel=xlabel, ylabel="test top-1 at the budget (%)")
        if done:
            plain_log_axis(ax.xaxis)
        ax.grid(alpha=0.3, which="both")
        ax.margins(x=0.2, y=0.15)
    data = meta.get("label") or meta["data"]
    fig.suptitle(
        f"What {meta['budget_s'] / 60:.3g} min of training buys on {meta['device']}: {data}, {meta['recipe']} recipe\n"
        f"over the steps that fit: {meta['schedule']}",
        fontsize=10,
    )
    return fig


def cmd_budget(args: argparse.Namespace) -> int:
    """``cnnzoo compare --train-budget``."""
    import sys

    from cnnzoo.analysis.compare.common import DEFAULT_32, _log

    if not args.data:
        raise CnnzooError("--train-budget needs --data (e.g. --data cifar10)")
    budget_s = parse_budget(args.train_budget)
    if args.probe <= 0:
        raise CnnzooError("--probe must be a number of seconds > 0")
    if args.batch_size is not None and args.batch_size < 1:
        raise CnnzooError("--batch-size must be >= 1")
    models = args.models or DEFAULT_32
    out = Path(args.out or "runs/budget")
    settings = {
        "data": args.data,
        "data_dir": args.data_dir,
        "recipe": args.recipe,
        "device": args.device,
        "batch_size": args.batch_size,
        "probe": args.probe,
        "label": args.label,
        "overwrite": args.overwrite,
    }
    rows = run_budget(models, budget_s=budget_s, out=out, args=settings, log=_log)
    if args.format in ("csv", "json"):
        tables.emit(rows, _columns(), args.format, fields=FIELDS)
    else:
        sys.stdout.write(budget_markdown(rows, {"budget_s": budget_s, **settings, "schedule": "linear decay to zero"}))
    _log(f"wrote {out / 'budget.csv'}, budget.json, budget.md, budget.png")
    return 0
