"""The study's files other than charts: CSV rows and the Markdown table beside the paper's Table 6.

Every writer replaces its file atomically (a temporary file, then ``os.replace``), so an interrupted study leaves
the previous file or the new one, never half of one.
"""

from __future__ import annotations

from pathlib import Path

from cnnzoo.analysis.tables import to_csv
from cnnzoo.atomic import write_atomic

# Table 6 of the paper: CIFAR-10 test error (%) of the CIFAR ResNets (110: best of 5 runs; mean 6.61 +- 0.16).
PAPER_TABLE6 = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}
PAPER_ITERATIONS = 64_000  # section 4.2: lr 0.1, divided by 10 at 32k and 48k, stop at 64k (batch 128)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    write_atomic(path, text)


def write_csv(path: str | Path, rows: list[dict], fields: list[str]) -> None:
    """``rows`` as CSV with the columns ``fields`` (None is written as an empty cell), atomically."""
    write_atomic(path, to_csv(rows, fields))


def num(value: object) -> float | None:
    """A number from a row built here or read back from a CSV (where None became '')."""
    return None if value in (None, "") else float(value)


def schedule_words(cfg, steps_per_epoch: int) -> str:
    """A run's learning-rate schedule in words (``cfg``: its TrainConfig), warm-up first, as the outputs state it."""
    from cnnzoo.train.schedule import total_steps, warmup_length

    parts, warm = [], warmup_length(cfg, steps_per_epoch)
    if cfg.warmup_until_error:
        cap = f", at most {warm:,} steps" if warm else ""
        parts.append(f"lr {cfg.warmup_lr:g} until the training error is below {100 * cfg.warmup_until_error:g} %{cap}")
    elif warm:
        parts.append(f"{warm:,} warm-up steps " + (f"at lr {cfg.warmup_lr:g}" if cfg.warmup_lr else "ramping up"))
    if cfg.schedule == "multistep":
        marks = cfg.milestone_steps or [round(m * steps_per_epoch) for m in cfg.milestones]
        parts.append(f"lr {cfg.lr:g} divided by {1 / cfg.gamma:g} at steps {', '.join(f'{m:,}' for m in marks)}")
    elif cfg.schedule in ("cosine", "linear"):
        parts.append(f"lr {cfg.lr:g} decayed to {cfg.min_lr:g} ({cfg.schedule})")
    else:
        parts.append(f"{cfg.schedule} schedule from lr {cfg.lr:g}")
    total = total_steps(cfg, steps_per_epoch)
    return f"{', then '.join(parts)}; {total:,} steps of batch {cfg.batch_size}"


def seeds_words(runs) -> str:
    """Every model's seeds: ``0, 1`` when all share them, else ``plain20, plain56: 0; resnet20, resnet56: 0, 1``."""
    by_model: dict[str, list[int]] = {}
    for run in runs:
        by_model.setdefault(run.config.model, []).append(run.config.seed)
    groups: dict[tuple[int, ...], list[str]] = {}
    for model, seeds in by_model.items():
        groups.setdefault(tuple(sorted(seeds)), []).append(model)
    if len(groups) == 1:
        return ", ".join(map(str, next(iter(groups))))
    return "; ".join(f"{', '.join(models)}: {', '.join(map(str, seeds))}" for seeds, models in groups.items())


def about_study(runs, train_images: int, val_images: int) -> dict[str, str]:
    """What every output of a study states about how its numbers were made: recipe, schedule, length against the
    paper's 64k iterations, training images (and any subset), seeds, device, precision and wall time, from the
    runs' configs and reports (``runs``: finished study runs; ``train_images`` per epoch as trained)."""
    cfg = runs[0].config
    reports = [r.report() for r in runs]
    spe = max(1, train_images // cfg.batch_size)
    steps = max(r["steps"] for r in reports)
    subset = f" (--subset {cfg.subset}: a subset changes the lesson)" if cfg.subset else " (all of the training split)"
    places = sorted({f"{r['device']} {r['precision']}" for r in reports})
    return {
        "recipe": cfg.recipe or "(none)",
        "schedule": schedule_words(cfg, spe),
        "iterations": f"{steps:,} = {100 * steps / PAPER_ITERATIONS:.3g} % of the paper's 64k"
        + (" (shortened)" if steps < PAPER_ITERATIONS else ""),
        "training images": f"{train_images:,}{subset}, validation {val_images:,}",
        "seeds of each model": seeds_words(runs),
        "device, precision": "; ".join(places),
        "training time": f"{sum(r['train_seconds'] for r in reports) / 60:.1f} min in all",
    }


def about_columns(about: dict[str, str]) -> dict[str, str]:
    """:func:`about_study` as CSV columns (``device_precision``, ...), but for the wall time: a study resumed or
    repeated elsewhere writes the same CSV."""
    return {k.replace(", ", "_").replace(" ", "_"): v for k, v in about.items() if k != "training time"}


def about_line(about: dict[str, str]) -> str:
    """:func:`about_study` as figure footer lines (two, each short enough for a chart's width)."""
    first = f"recipe {about['recipe']}: {about['schedule']} ({about['iterations']})"
    second = "; ".join(f"{k} {about[k]}" for k in ("training images", "seeds of each model", "device, precision"))
    return f"{first}\n{second}"


def write_degradation_md(path: str | Path, rows: list[dict], *, label: str, about: dict[str, str]) -> None:
    """The final errors as a Markdown table with the paper's Table 6 beside them (``rows`` as in degradation.csv),
    under how they were made (:func:`about_study`)."""
    lines = [
        f"# Degradation study on {label}",
        "",
        *[f"- {key}: {value}" for key, value in about.items()],
        "",
        "Training error: the last epoch's, on augmented batches. Test error: measured once per run, at the end, with "
        "the weights of the best validation epoch (the per-epoch curves in degradation.png are validation error, on "
        "images held out from the training split); mean ± sample std where a model has several seeds.",
        "",
        "The paper's figures (He et al. 2016, Table 6) are CIFAR-10 test errors after 64k iterations (ResNet-110: "
        "6.43 best of 5 runs, 6.61 ± 0.16 mean). The paper gives the plain nets only as curves (Figure 6 left: "
        "training and test error rise from plain-20 to plain-56; plain-110, above 60 %, is not plotted).",
        "",
        "| model | seeds | final training error (%) | test error (%) | paper, Table 6 (%) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        std = num(r["test_error_std"]) or 0.0
        spread = f" ± {std:.2f}" if int(r["seeds"]) > 1 else ""
        paper = num(r["paper_test_error"])
        lines.append(
            f"| {r['model']} | {r['seeds']} | {num(r['final_train_error']):.2f} | {num(r['test_error']):.2f}{spread} | "
            f"{'—' if paper is None else f'{paper:.2f}'} |"
        )
    write_text(path, "\n".join(lines) + "\n")
