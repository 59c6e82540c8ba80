"""The end of a run: one test of the best checkpoint (:func:`finish`), ``report.json``, ``curves.png``,
``confusion.png``, and TensorBoard's record of it (:func:`open_writer`, :func:`log_final`)."""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cnnzoo.atomic import write_atomic
from cnnzoo.errors import shown
from cnnzoo.train import checkpoint
from cnnzoo.train.loop import evaluate

if TYPE_CHECKING:
    from cnnzoo.train.state import RunState


def open_writer(run: RunState):
    """A TensorBoard SummaryWriter on ``run_dir/tensorboard`` when tensorboard is installed (the ``tensorboard``
    extra), else None. A resumed run purges the events logged after its checkpoint's step (a kill after the last
    save), so no step appears twice."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    purge = run.step + 1 if run.step > 0 else None  # events at steps <= run.step match the checkpoint: kept
    try:
        return SummaryWriter(log_dir=str(run.run_dir / "tensorboard"), purge_step=purge)
    except UnicodeEncodeError:  # TensorBoard's file layer encodes every path as UTF-8
        run.log(f"note: no TensorBoard log: its writer needs a UTF-8 path, and {shown(run.run_dir)} is not")
        return None


def log_final(writer, run: RunState, report: dict[str, Any]) -> None:
    """The run's hyperparameters with its test metrics (TensorBoard's hparams dashboard), written into the run's own
    event file (``add_hparams`` would open a timestamped subfolder), and curves.png / confusion.png as images."""
    from PIL import Image
    from torch.utils.tensorboard.summary import hparams

    hp = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in run.cfg.to_dict().items()}
    test = report["test"]
    metrics = {"hparam/test_top1": test["top1"], "hparam/test_top5": test["top5"], "hparam/test_loss": test["loss"]}
    metrics["hparam/best_val_top1"] = report["best_val_top1"] if report["best_val_top1"] is not None else float("nan")
    for summary in hparams(hp, metrics):
        writer.file_writer.add_summary(summary)
    for tag, value in metrics.items():
        writer.add_scalar(tag, value, run.step)
    for name in ("curves", "confusion"):
        path = run.run_dir / f"{name}.png"
        if path.is_file():
            with Image.open(path) as image:
                writer.add_image(name, np.asarray(image.convert("RGB")), run.step, dataformats="HWC")
    writer.flush()


def finish(run: RunState, writer=None, *, early_stopped: int | None = None) -> dict[str, Any]:
    """After training: curves.png, then ONE test of the best checkpoint, on the whole test split (``--subset`` and
    ``--val-size`` never shrink it; the report says how many images): report.json and confusion.png, and into
    TensorBoard (``writer``) the hyperparameters with the test metrics and both figures. ``early_stopped``: the
    epoch after which ``--early-stop`` ended training (recorded in the report)."""
    data = run.data
    # The same net and options with best.pt's weights (the model's or the EMA's), in the contiguous layout a model
    # built from a checkpoint has (run.model_from_checkpoint: cnnzoo eval), so both give the same numbers.
    tester = copy.deepcopy(run.model).to(memory_format=torch.contiguous_format)
    tester.load_state_dict(_best_weights(run))
    test = evaluate(tester, data.test, run.ctx, data.num_classes, dist=run.dist, confusion=True, label="test")
    report = _report(run, test, early_stopped)
    if run.dist.main:
        _write(run, report, test, writer)
    if run.dist.world_size > 1:  # no rank returns before rank 0 has written the report
        import torch.distributed as tdist

        tdist.barrier()
    return report


def _best_weights(run: RunState) -> dict[str, Any]:
    """best.pt's weights, read by rank 0 and sent to every rank (each evaluates its shard of the test split)."""
    best = checkpoint.load(run.run_dir / "best.pt") if run.dist.main else None
    if run.dist.world_size == 1:
        return best["model"]
    import torch.distributed as tdist

    holder = [best["model"] if best is not None else None]
    tdist.broadcast_object_list(holder, src=0)
    return holder[0]


def _report(run: RunState, test: dict[str, Any], early_stopped: int | None) -> dict[str, Any]:
    """report.json's contents."""
    data, cfg, last = run.data, run.cfg, run.history[-1]
    return {
        "model": cfg.model,
        "data": data.name,
        "classes": list(data.classes),
        "test": {
            "loss": test["loss"],
            "top1": test["top1"],
            "top5": test["top5"],
            "n": test["n"],
            "protocol": "center",
            "per_class": dict(zip(data.classes, test["per_class"], strict=True)),
        },
        "best_epoch": run.best["epoch"],
        "best_val_top1": run.best["val_top1"],
        "best_weights": run.best["weights"],
        "selection": "best validation top-1" if data.val.num_samples else "last epoch (no validation split)",
        "tta": "flip" if cfg.tta_flip else None,
        "epochs": last["epoch"],
        "early_stopped": early_stopped is not None,
        "stopped_epoch": early_stopped,
        "steps": run.step,
        "warmup_end_step": run.warmup_end,  # the step at which the warm-up rule ended the warm-up (None: no rule)
        "final_val_top1": last["val_top1"],
        "train_seconds": round(run.train_seconds, 3),
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "seed": cfg.seed,
        "device": str(run.ctx.device),
        "precision": run.ctx.precision,
        # What "bf16"/"fp16" mean here (the CUDA default of --precision auto): the forward pass under autocast.
        "autocast": None
        if run.ctx.precision == "fp32"
        else f"{run.ctx.precision} autocast (weights, gradients and optimizer state in fp32)",
        "world_size": run.dist.world_size,
        "run_dir": str(run.run_dir),
        "start_weights": {"source": cfg.weights, "sha256": cfg.weights_sha256} if cfg.weights else None,
    }


def _write(run: RunState, report: dict[str, Any], test: dict[str, Any], writer) -> None:
    """report.json, curves.png, confusion.png (rank 0), TensorBoard's final record, and the report's lines."""
    from cnnzoo.train.plots import plot_confusion, plot_curves, training_objective

    run_dir, data = run.run_dir, run.data
    write_atomic(run_dir / "report.json", json.dumps(report, indent=2) + "\n")
    plot_curves(
        run.history,
        run_dir / "curves.png",
        model=run.cfg.model,
        data=data.name,
        run=run.cfg.label or run_dir.name,
        objective=training_objective(run.cfg),
        best_epoch=run.best["epoch"],
    )
    plot_confusion(
        test["confusion"],
        data.classes,
        run_dir / "confusion.png",
        title=f"{run.cfg.model} on {data.name}: test top-1 {100 * test['top1']:.2f}%",
    )
    if writer is not None:
        log_final(writer, run, report)
    run.log(format_report(report))


def format_report(report: dict[str, Any]) -> str:
    """The test report as a few lines of text (percentages)."""
    t = report["test"]
    worst = sorted(t["per_class"].items(), key=lambda kv: kv[1])[:3]
    return (
        f"test ({t['n']} images, {report['model']} on {report['data']}, best epoch {report['best_epoch']} by "
        f"{report['selection']}{', flip TTA' if report.get('tta') else ''}"
        f"{', stopped early after epoch ' + str(report['stopped_epoch']) if report.get('early_stopped') else ''}):\n"
        f"  loss {t['loss']:.4f}   top-1 {100 * t['top1']:.2f}%   top-5 {100 * t['top5']:.2f}%\n"
        f"  weakest classes: {', '.join(f'{k} {100 * v:.1f}%' for k, v in worst)}\n"
        f"  run directory: {report['run_dir']} (report.json, metrics.jsonl, curves.png, confusion.png, best.pt)"
    )
