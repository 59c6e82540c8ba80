"""``study degradation``: plain and residual nets of each depth trained with one recipe (He et al. 2016, Figure 6).

Training error (dashed) and validation error (bold) against iterations, and the final test errors beside Table 6.
Departure: the curves plot *validation* error per epoch where Figure 6 plots test error per iteration: the test split
is looked at once per run, at the end, by the trainer (He et al. tuned on a 45k/5k split too, then reported test).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from cnnzoo.analysis.study.plan import execute
from cnnzoo.analysis.study.plots import plot_degradation
from cnnzoo.analysis.study.runs import Run, plan_runs
from cnnzoo.analysis.study.tables import (
    PAPER_TABLE6,
    about_columns,
    about_line,
    about_study,
    write_csv,
    write_degradation_md,
)

PLAIN_DEPTHS = (20, 32, 44, 56, 110)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_degradation(
    depths: list[int],
    *,
    data: str,
    recipe: str,
    seeds: list[int],
    out: str | Path,
    plain_seeds: list[int] | None = None,
    data_dir: str | None = None,
    overrides: dict | None = None,
    jobs: int = 1,
    label: str | None = None,
    overwrite: bool = False,
    stop_after: int | None = None,
    log=print,
) -> list[dict]:
    """Train plain and residual nets of each depth (the residual ones for every seed of ``seeds``, the plain ones for
    every seed of ``plain_seeds``, default the same); write degradation.csv (final errors),
    degradation_curves.csv (per epoch), degradation.md (beside Table 6) and degradation.png (Figure 6 style).

    ``overwrite`` retrains runs of another configuration found in ``out`` (else they stop the study with one line);
    ``stop_after`` stops each run after that many steps, as Ctrl-C would (a test hook for interrupt and resume).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = overrides or {}
    models = [f"{k}{d}" for k in ("plain", "resnet") for d in depths]
    runs = degradation_runs(models, seeds, plain_seeds, out, data=data, recipe=recipe, data_dir=data_dir, **overrides)
    plan = execute("degradation", runs, jobs=jobs, overwrite=overwrite, stop_after=stop_after, log=log)
    about = about_study(runs, plan.train_images, plan.val_images)
    rows, curves = [], []
    for model in models:
        mine = [r for r in runs if r.config.model == model]
        rows.append(final_row(model, mine) | about_columns(about))
        curves += curve_rows(model, mine)
    write_csv(out / "degradation.csv", rows, list(rows[0]))
    write_csv(out / "degradation_curves.csv", curves, list(curves[0]))
    write_degradation_md(out / "degradation.md", rows, label=label or data, about=about)
    plot_degradation(curves, out / "degradation.png", label or data, footer=about_line(about))
    return rows


def degradation_runs(
    models: list[str], seeds: list[int], plain_seeds: list[int] | None, out: Path, **options
) -> list[Run]:
    """The study's runs, seed by seed (the first seed's curves of every model come first, so a study stopped early
    has whole comparisons), residual nets first: residual nets for every seed of ``seeds``, plain nets for every
    seed of ``plain_seeds`` (default: ``seeds``). ``options``: :func:`plan_runs`' keywords and config overrides."""
    plain_seeds = seeds if plain_seeds is None else plain_seeds
    data, recipe, data_dir = options.pop("data"), options.pop("recipe"), options.pop("data_dir", None)
    runs = []
    for seed in dict.fromkeys([*seeds, *plain_seeds]):  # residual nets first: their comparison needs the seeds
        mine = [m for m in models if seed in (plain_seeds if m.startswith("plain") else seeds)]
        mine.sort(key=lambda m: m.startswith("plain"))
        runs += plan_runs(mine, [seed], out, data=data, recipe=recipe, data_dir=data_dir, overrides=options)
    return runs


def _split(model: str) -> tuple[str, int]:
    kind = "plain" if model.startswith("plain") else "resnet"
    return kind, int(model[len(kind) :])


def final_row(model: str, runs: list[Run]) -> dict:
    """A row of degradation.csv: the final training error and test error over the seeds of ``model``."""
    kind, depth = _split(model)
    reports, hists = [r.report() for r in runs], [r.history() for r in runs]
    test_err, test_std = mean_std([100 * (1 - r["test"]["top1"]) for r in reports])
    train_err, _ = mean_std([100 * (1 - h[-1]["train_top1"]) for h in hists])
    return {
        "model": model,
        "kind": kind,
        "depth": depth,
        "seeds": len(runs),
        "final_train_error": train_err,
        "test_error": test_err,
        "test_error_std": test_std,
        "paper_test_error": PAPER_TABLE6.get(depth) if kind == "resnet" else None,
        "steps": hists[0][-1]["step"],
    }


def curve_rows(model: str, runs: list[Run]) -> list[dict]:
    """Rows of degradation_curves.csv: training and validation error (%) of every epoch of every seed."""
    kind, depth = _split(model)
    return [
        {
            "model": model,
            "kind": kind,
            "depth": depth,
            "seed": run.config.seed,
            "epoch": h["epoch"],
            "step": h["step"],
            "train_error": 100 * (1 - h["train_top1"]),
            "val_error": None if h.get("val_top1") is None else 100 * (1 - h["val_top1"]),
        }
        for run in runs
        for h in run.history()
    ]
