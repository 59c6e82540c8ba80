"""``cnnzoo.train(...)``: from a model name and a dataset to a trained, tested, resumable run directory.

Kept cheap to import (``cnnzoo/__init__.py`` imports :func:`train` eagerly): the trainer itself is imported on call.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from cnnzoo.atomic import write_atomic
from cnnzoo.errors import CnnzooError, is_utf8, shown
from cnnzoo.train.config import RESUME_OVERRIDES, build_config, config_from_dict


def _quiet(*args: Any, **kwargs: Any) -> None:
    """The log of a quiet run: prints nothing."""


def train(
    model: str | None = None,
    data: str | None = None,
    *,
    recipe: str | None = None,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    seeds: list[int] | None = None,
    stop_after: int | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Train ``model`` on ``data`` and return the run's report (the contents of ``report.json``).

    Args:
        model: a registered model name (``cnnzoo models`` lists them); not needed with ``resume``.
        data: a dataset name (``digits``, ``cifar10``, ...) or an image folder (default ``digits``; with ``resume``,
            the run's own data: another is refused).
        recipe: a shipped recipe name (``cnnzoo recipes``) or a path to a ``.toml`` file.
        out: the run directory (default ``runs/<model>-<data>-<timestamp>``).
        resume: a run directory to continue from its ``last.pt`` (whose stored config is the run's; any
            ``overrides`` may change only ``RESUME_OVERRIDES``, e.g. more ``epochs``). Refused when the data
            differs from what the run was trained on, or the directory's files disagree with each other.
        seeds: train once per seed into ``out/seed-<K>``; the result then holds every report and the mean and
            (sample) standard deviation of test top-1 and loss, also written to ``out/seeds.json``.
        stop_after: stop as on Ctrl-C once this many optimizer steps are done (resumable).
        overwrite: replace a previous run in ``out``, once the new run's data, model and config are built (default:
            refuse, so no run is lost by accident). ``out`` is always new, empty or a cnnzoo run directory.
        quiet: print nothing.
        **overrides: :class:`cnnzoo.train.config.TrainConfig` fields (``epochs=3, lr=0.05, ema=0.999, ...``),
            which win over the recipe.

    Returns:
        The report: ``test`` (loss, top1, top5, per_class), ``best_epoch``, ``best_val_top1``, ``run_dir``, ...
        For a stopped run: ``{"interrupted": True, "signal": ..., "run_dir": ..., "step": ...}`` (``signal``: the
        number of the signal that stopped it, None for ``stop_after``).
    """
    from cnnzoo.train.run import run_training
    from cnnzoo.train.rundir import check_seeds_out, default_out

    log = _quiet if quiet else print
    check_arguments(model, out=out, resume=resume, seeds=seeds, stop_after=stop_after, overwrite=overwrite)
    if resume is not None:
        _check_resume_source(Path(resume), data, recipe)
        return _resume(Path(resume), model, overrides, stop_after=stop_after, log=log)
    for flag, path in (("--data", data), ("--data-dir", overrides.get("data_dir"))):
        if isinstance(path, str) and not is_utf8(path):  # config.toml, the run's record, is UTF-8 text
            raise CnnzooError(
                f"{flag} {shown(path)}: the path is not valid UTF-8; rename it or link to it by a UTF-8 name"
            )
    cfg = build_config(model, data, recipe=recipe, **overrides)
    if not seeds:
        return run_training(cfg, out, stop_after=stop_after, overwrite=overwrite, log=log, estimate=not quiet)
    from dataclasses import replace

    root = Path(out) if out is not None else default_out(cfg)
    check_seeds_out(root, seeds, overwrite=overwrite)  # every seed's folder before the first seed trains
    reports = []
    for seed in seeds:
        log(f"--- seed {seed} ---")
        seed_cfg, seed_dir = replace(cfg, seed=seed), root / f"seed-{seed}"
        reports.append(
            run_training(seed_cfg, seed_dir, stop_after=stop_after, overwrite=overwrite, log=log, estimate=not quiet)
        )
        if reports[-1].get("interrupted"):
            return reports[-1]
    summary = summarize_seeds(seeds, reports)
    write_atomic(root / "seeds.json", json.dumps(summary, indent=2) + "\n")
    top1 = summary["test_top1"]
    log(f"{len(seeds)} seeds: test top-1 {100 * top1['mean']:.2f}% +- {100 * top1['std']:.2f}% (mean +- sample std)")
    return summary


def check_arguments(
    model: str | None,
    *,
    out: str | Path | None,
    resume: str | Path | None,
    seeds: list[int] | None,
    stop_after: int | None,
    overwrite: bool,
) -> None:
    """Refuse, before any work, arguments that do not go together or are out of range (the config's own fields are
    checked by :class:`~cnnzoo.train.config.TrainConfig`)."""
    if resume is not None:
        if out is not None and Path(out) != Path(resume):
            raise CnnzooError("--resume continues a run in its own directory; leave out --out")
        if seeds:
            raise CnnzooError("--resume continues one run; resume each seed's directory separately")
        if overwrite:
            raise CnnzooError("--overwrite starts a new run, --resume continues one: give only one of them")
    elif model is None:
        raise CnnzooError("name a model to train (`cnnzoo models` lists them), or --resume a run directory")
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after < 1):
        raise CnnzooError(f"--stop-after must be a number of steps >= 1, got {stop_after!r}")
    for seed in seeds or []:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise CnnzooError(f"seeds must be integers >= 0, got {seed!r}")
    if seeds and len(set(seeds)) != len(seeds):
        raise CnnzooError(f"seeds must differ (each trains into its own seed-K folder), got {seeds}")


def _check_resume_source(run_dir: Path, data: str | None, recipe: str | None) -> None:
    """A resume takes its data and recipe from the run: ``--data`` or ``--recipe`` that differ are refused like any
    other setting a resume cannot change (not silently ignored)."""
    if recipe is not None:
        raise CnnzooError(
            f"--recipe {recipe} with --resume: a resumed run keeps the settings it started with; "
            "leave out --recipe (or start a new run with it)"
        )
    if data is None:
        return
    from cnnzoo.train.config import read_config

    try:
        stored = read_config(run_dir / "config.toml").data
    except CnnzooError:
        return  # the resume's own checks say what is wrong with the directory
    same = data == stored or (
        Path(data).exists() and Path(stored).exists() and Path(data).resolve() == Path(stored).resolve()
    )
    if not same:
        raise CnnzooError(f"cannot change data when resuming ({stored} there, {data} asked): leave out --data")


def _resume(run_dir: Path, model: str | None, overrides: dict[str, Any], *, stop_after: int | None, log) -> dict:
    """Continue the run in ``run_dir`` with the config of its checkpoint, changed only in ``RESUME_OVERRIDES``."""
    from cnnzoo.train import rundir_lock
    from cnnzoo.train.distributed import env_int
    from cnnzoo.train.rundir import recover_replaced

    # One writer: the lock is taken before last.pt is read, so no other writer can replace it under this resume.
    with rundir_lock.hold(run_dir, enabled=run_dir.is_dir() and env_int("RANK", 0, 0) == 0):
        if rundir_lock.holds(run_dir):
            recover_replaced(run_dir)
        return _resume_locked(run_dir, model, overrides, stop_after=stop_after, log=log)


def _resume_locked(run_dir: Path, model: str | None, overrides: dict[str, Any], *, stop_after: int | None, log) -> dict:
    from cnnzoo.train.run import run_training
    from cnnzoo.train.rundir import open_run

    ckpt = open_run(run_dir)
    stored = dict(ckpt["config"])
    if model is not None and model != stored["model"]:
        raise CnnzooError(f"{run_dir} is a run of {stored['model']}, not {model}")
    given = {k: v for k, v in overrides.items() if v is not None}
    fixed = sorted(k for k, v in given.items() if k not in RESUME_OVERRIDES and v != stored.get(k))
    if fixed:
        raise CnnzooError(f"cannot change {', '.join(fixed)} when resuming (only {', '.join(RESUME_OVERRIDES)})")
    cfg = config_from_dict({**stored, **given})
    return run_training(cfg, run_dir, resume=ckpt, stop_after=stop_after, log=log, estimate=log is not _quiet)


def summarize_seeds(seeds: list[int], reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation (0 for one seed) of the test metrics over seeds."""

    def stats(values: list[float]) -> dict[str, float]:
        return {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values,
        }

    out = {"seeds": list(seeds), "runs": reports}
    for key in ("top1", "top5", "loss"):
        values = [r["test"][key] for r in reports]
        out[f"test_{key}"] = stats(values) if all(math.isfinite(v) for v in values) else {"values": values}
    return out
