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
from cnnzoo.errors import CnnzooError


def by_depth(family: str) -> dict[int, str]:
    """depth -> model of a registered ``family``: its ``<arch><depth>`` names (``resnet56``; not ``resnet18_cifar``,
    a style of another net), so a family added as one file is studied with no list to edit."""
    from cnnzoo.models import get_model_info, list_models

    infos = [get_model_info(n) for n in list_models(family=family)]
    if not infos:
        raise CnnzooError(f"no registered family {family!r}; `cnnzoo models` lists the families")
    return {i.depth: i.name for i in sorted(infos, key=lambda i: i.depth or 0) if i.name == f"{i.arch}{i.depth}"}


def degradation_pairs(family: str = "resnet_cifar") -> dict[int, tuple[str, str]]:
    """depth -> (plain net, residual net): the residual ``family``'s nets and, at the same depth, the plain twins of
    the same input size (family ``plain``, plus ``_cifar`` when ``family`` has it)."""
    if family.removesuffix("_cifar").split("_")[-1] == "plain":
        raise CnnzooError(f"--family names the residual nets (e.g. resnet_cifar); got the plain family {family!r}")
    residual = by_depth(family)
    plain = by_depth("plain_cifar" if family.endswith("_cifar") else "plain")
    pairs = {d: (plain[d], residual[d]) for d in residual if d in plain}
    if not pairs:
        raise CnnzooError(f"family {family!r} has no depth in common with the plain nets")
    return pairs


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
    family: str = "resnet_cifar",
    data_dir: str | None = None,
    overrides: dict | None = None,
    jobs: int = 1,
    label: str | None = None,
    overwrite: bool = False,
    stop_after: int | None = None,
    log=print,
) -> list[dict]:
    """Train plain and residual nets (of ``family``, paired by :func:`degradation_pairs`) of each depth: the residual
    ones for every seed of ``seeds``, the plain ones for every seed of ``plain_seeds`` (default the same); write
    degradation.csv (final errors),
    degradation_curves.csv (per epoch), degradation.md (beside Table 6) and degradation.png (Figure 6 style).

    ``overwrite`` retrains runs of another configuration found in ``out`` (else they stop the study with one line);
    ``stop_after`` stops each run after that many steps, as Ctrl-C would (a test hook for interrupt and resume).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = overrides or {}
    pairs = degradation_pairs(family)
    bad = [d for d in depths if d not in pairs]
    if bad:
        raise CnnzooError(f"{family} depths with a plain twin are {', '.join(map(str, pairs))}; got {bad}")
    plain, residual = [pairs[d][0] for d in depths], [pairs[d][1] for d in depths]
    models = plain + residual  # the table's order: the plain nets first, then the residual ones
    runs = degradation_runs(
        residual, plain, seeds, plain_seeds, out, data=data, recipe=recipe, data_dir=data_dir, **overrides
    )
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
    residual: list[str], plain: list[str], seeds: list[int], plain_seeds: list[int] | None, out: Path, **options
) -> list[Run]:
    """The study's runs, seed by seed (the first seed's curves of every model come first, so a study stopped early
    has whole comparisons), residual nets first (their comparison is the one that needs the seeds): the ``residual``
    nets for every seed of ``seeds``, the ``plain`` ones for every seed of ``plain_seeds`` (default: ``seeds``).
    ``options``: :func:`plan_runs`' keywords and config overrides."""
    plain_seeds = seeds if plain_seeds is None else plain_seeds
    data, recipe, data_dir = options.pop("data"), options.pop("recipe"), options.pop("data_dir", None)
    runs = []
    for seed in dict.fromkeys([*seeds, *plain_seeds]):
        mine = [m for m in residual if seed in seeds] + [m for m in plain if seed in plain_seeds]
        runs += plan_runs(mine, [seed], out, data=data, recipe=recipe, data_dir=data_dir, overrides=options)
    return runs


def _split(model: str) -> tuple[str, int]:
    """(kind, depth) of ``model`` from the registry: its architecture (``plain``, ``resnet``, ...) and depth."""
    from cnnzoo.models import get_model_info

    info = get_model_info(model)
    return info.arch, info.depth


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
