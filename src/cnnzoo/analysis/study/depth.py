"""``study depth``: how many layers this data and budget can use: accuracy, training time and parameters against
depth, and a suggested depth chosen on the validation split (the README's protocol: the test split is measured once
per run and reported, never used to choose)."""

from __future__ import annotations

from pathlib import Path

from cnnzoo.analysis.study.degradation import by_depth, mean_std
from cnnzoo.analysis.study.plan import execute
from cnnzoo.analysis.study.plots import plot_depth
from cnnzoo.analysis.study.runs import plan_runs
from cnnzoo.analysis.study.tables import about_columns, about_line, about_study, write_csv
from cnnzoo.errors import CnnzooError

DEPTH_TOLERANCE = 0.5  # accuracy points: what `study depth` treats as no better (see suggest_depth)


def run_depth(
    depths: list[int],
    *,
    family: str,
    data: str,
    recipe: str,
    seeds: list[int],
    out: str | Path,
    data_dir: str | None = None,
    overrides: dict | None = None,
    jobs: int = 1,
    label: str | None = None,
    overwrite: bool = False,
    stop_after: int | None = None,
    log=print,
) -> list[dict]:
    """Accuracy, training time and parameters against depth; writes depth.csv and depth.png, marking the
    :func:`suggest_depth` answer. With ``jobs`` > 1 the runs share the device, so their training times are not
    comparable (the chart says so): use 1 for a time axis that means something. ``overwrite`` and ``stop_after``
    as in :func:`~cnnzoo.analysis.study.degradation.run_degradation`.
    """
    from cnnzoo.analysis.profile import profile_model

    available = by_depth(family)
    bad = [d for d in depths if d not in available]
    if bad:
        raise CnnzooError(f"{family} depths are {', '.join(map(str, available))}; got {bad}")
    models = [available[d] for d in depths]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = plan_runs(models, seeds, out, data=data, recipe=recipe, data_dir=data_dir, overrides=overrides)
    plan = execute("depth", runs, jobs=jobs, overwrite=overwrite, stop_after=stop_after, log=log)
    shape = (plan.in_channels, plan.image_size, plan.image_size)  # what was trained on, not the registered input
    rows = []
    for d, model in zip(depths, models, strict=True):
        reports = [r.report() for r in runs if r.config.model == model]
        if any(r["best_val_top1"] is None for r in reports):
            raise CnnzooError("study depth chooses on the validation split: train with a validation split (val_size)")
        val, val_std = mean_std([100 * r["best_val_top1"] for r in reports])
        test, test_std = mean_std([100 * r["test"]["top1"] for r in reports])
        secs, _ = mean_std([r["train_seconds"] for r in reports])
        prof = profile_model(model, num_classes=plan.num_classes, input_shape=shape)
        rows.append(
            {
                "model": model,
                "depth": d,
                "params": prof["params"],
                "macs": prof["macs"],
                "val_top1": val,
                "val_top1_std": val_std,
                "test_top1": test,
                "test_top1_std": test_std,
                "train_seconds": secs,
            }
        )
    about = about_study(runs, plan.train_images, plan.val_images)
    rows = [r | about_columns(about) for r in rows]
    write_csv(out / "depth.csv", rows, list(rows[0]))
    pick = suggest_depth(rows, DEPTH_TOLERANCE)
    title = (
        f"How deep to go: {family} nets on {label or data}, recipe {recipe}, {len(seeds)} seed(s)\n"
        f"suggested: {pick['model']}, the shallowest within {DEPTH_TOLERANCE:g} points of the best validation "
        "top-1"
    )
    shared = min(jobs, len(runs))
    plot_depth(rows, pick, out / "depth.png", title=title, shared=shared, footer=about_line(about))
    return rows


def suggest_depth(rows: list[dict], tolerance: float = DEPTH_TOLERANCE) -> dict:
    """The answer to "how many layers?": the shallowest row whose *validation* top-1 is within ``tolerance`` points
    (or the best row's seed spread, if larger) of the best; a deeper net then costs time and parameters for nothing
    this data and budget can measure. Test accuracy is never looked at (it is measured once, to report)."""
    best = max(rows, key=lambda r: r["val_top1"])
    margin = max(tolerance, best.get("val_top1_std") or 0.0)
    return min((r for r in rows if r["val_top1"] >= best["val_top1"] - margin), key=lambda r: r["depth"])
