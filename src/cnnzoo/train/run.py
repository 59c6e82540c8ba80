"""One training run from a resolved :class:`TrainConfig` to a finished run directory.

``run_training`` sets up (device, DDP, seeds, data, model, optimizer, EMA, compile), resumes from ``last.pt`` when
asked, calls :func:`cnnzoo.train.loop.fit`, then (unless stopped) draws ``curves.png`` and tests the best
checkpoint once on the test split: ``report.json`` and ``confusion.png``. ``load_run`` / ``model_from_checkpoint``
rebuild a trained model for ``cnnzoo eval``, ``predict`` and ``export``.
"""

from __future__ import annotations

import inspect
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnzoo.errors import CnnzooError
from cnnzoo.models import create_model, get_model_info
from cnnzoo.train import checkpoint
from cnnzoo.train.config import TrainConfig, config_from_dict, write_config
from cnnzoo.train.engine import (
    GraphedStep,
    backend_settings,
    compile_model,
    make_ema,
    make_optimizer,
    resolve_device,
    set_dropout,
    step_context,
    use_channels_last,
)
from cnnzoo.train.loop import Dist, RunState, evaluate, fit, load_state, write_metrics


def default_out(cfg: TrainConfig) -> Path:
    """``runs/<model>-<data>-<YYYYmmdd-HHMMSS>`` (a folder dataset is named by its last path component)."""
    data = Path(cfg.data).name or "data"
    return Path("runs") / f"{cfg.model}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"


def init_distributed(cfg: TrainConfig) -> tuple[Dist, torch.device]:
    """Join the DDP job described by torchrun's environment (``WORLD_SIZE`` > 1), else a single process.

    Backend: NCCL on CUDA (one GPU per process, ``LOCAL_RANK``), gloo on the CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(cfg.device)
    if world <= 1:
        return Dist(), device
    import torch.distributed as tdist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(tdist.get_rank(), tdist.get_world_size()), device


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), Python's ``random`` and NumPy's global generator."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def build_model(cfg: TrainConfig, num_classes: int, in_channels: int) -> nn.Module:
    """The registered model with the config's model-level options (zero-init residual, auxiliary classifiers,
    dropout override)."""
    options: dict = {"zero_init_residual": True} if cfg.zero_init_residual else {}
    if cfg.aux_logits is not None:
        if "aux_logits" not in inspect.signature(get_model_info(cfg.model).builder).parameters:
            raise CnnzooError(f"--aux-logits: {cfg.model} has no auxiliary classifiers (the GoogLeNets have)")
        options["aux_logits"] = cfg.aux_logits
    model = create_model(cfg.model, num_classes=num_classes, in_channels=in_channels, **options)
    if cfg.dropout is not None and set_dropout(model, cfg.dropout) == 0:
        raise CnnzooError(f"--dropout given but {cfg.model} has no dropout layers")
    return model


def load_bundle(cfg: TrainConfig, device: torch.device, dist: Dist, *, augment: bool = True):
    """The data for ``cfg`` on ``device``; the global batch is split evenly over the DDP ranks."""
    from cnnzoo.data import load_data

    if cfg.batch_size % dist.world_size:
        raise CnnzooError(f"batch size {cfg.batch_size} is not divisible by the {dist.world_size} processes")
    val_size = cfg.val_size
    if val_size is not None and val_size >= 1:
        val_size = int(val_size)  # a count of images, not a fraction
    per_rank = cfg.batch_size // dist.world_size
    return load_data(
        cfg.data, data_dir=cfg.data_dir, download=cfg.download or None, batch_size=per_rank,
        eval_batch_size=cfg.eval_batch_size or 2 * per_rank, device=device,
        image_size=cfg.image_size, in_channels=cfg.in_channels, val_size=val_size, seed=cfg.seed,
        augment=cfg.augment if augment else "none", cutout=cfg.cutout, rank=dist.rank, world_size=dist.world_size,
        subset=cfg.subset,
    )  # fmt: skip


def _open_writer(run_dir: Path):
    """A TensorBoard SummaryWriter when tensorboard is installed, else None (silently)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


RUN_FILES = ("config.toml", "metrics.jsonl", "last.pt", "best.pt", "curves.png", "report.json", "confusion.png")


def run_training(cfg: TrainConfig, run_dir: str | Path | None = None, *, resume: bool = False,
                 stop_after: int | None = None, overwrite: bool = False, log=print) -> dict[str, Any]:  # fmt: skip
    """Train ``cfg`` into ``run_dir`` (resuming from its ``last.pt`` if ``resume``); returns the report.

    ``overwrite``: replace the run files (``RUN_FILES``) of a previous run in ``run_dir`` instead of refusing.
    An interrupted run returns ``{"interrupted": True, "run_dir": ..., "step": ...}`` with ``last.pt`` written.
    """
    dist, device = init_distributed(cfg)
    log = log if dist.main else (lambda *a, **k: None)
    run_dir = Path(run_dir) if run_dir is not None else default_out(cfg)
    if not resume and (run_dir / "last.pt").exists():
        if not overwrite:
            raise CnnzooError(f"{run_dir} already holds a run: --resume {run_dir}, --overwrite, or another --out")
        if dist.main:
            for name in RUN_FILES:
                (run_dir / name).unlink(missing_ok=True)
    with backend_settings(cfg, device):
        return _run(cfg, dist, device, run_dir, resume=resume, stop_after=stop_after, log=log)


def _run(cfg: TrainConfig, dist: Dist, device: torch.device, run_dir: Path, *, resume: bool,
         stop_after: int | None, log) -> dict[str, Any]:  # fmt: skip
    """The body of :func:`run_training`, with the backend flags set."""
    seed_everything(cfg.seed)
    data = load_bundle(cfg, device, dist)
    model = build_model(cfg, data.num_classes, data.in_channels).to(device)
    if cfg.sync_bn and device.type != "cuda":
        raise CnnzooError("--sync-bn needs CUDA (torch's SyncBatchNorm does not run on the CPU)")
    if dist.world_size > 1 and cfg.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if use_channels_last(cfg, device):
        model = model.to(memory_format=torch.channels_last)
    ema = make_ema(model, cfg.ema) if cfg.ema > 0 else None
    optimizer = make_optimizer(model, cfg, device)
    ctx = step_context(cfg, device)
    net: nn.Module = model
    if dist.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    net = compile_model(net, cfg)
    run = RunState(cfg, data, model, net, optimizer, ctx, run_dir=run_dir, ema=ema, dist=dist, log=log)
    if cfg.cuda_graph:
        if dist.world_size > 1:
            raise CnnzooError("--cuda-graph trains in one process (DDP's gradient all-reduce is not captured): "
                              "drop it under torchrun")  # fmt: skip
        run.graph = GraphedStep(net, optimizer, ctx)
        if device.type != "cuda":
            log(f"--cuda-graph: no CUDA graphs on {device}; the same step runs uncaptured")
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(cfg, run_dir / "config.toml")
    if resume:
        ckpt = checkpoint.load(run_dir / "last.pt", model=cfg.model, num_classes=data.num_classes,
                               in_channels=data.in_channels, resume=True)  # fmt: skip
        try:
            load_state(run, ckpt)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:  # a hand-edited or foreign last.pt
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CnnzooError(f"{run_dir / 'last.pt'}: cannot resume from it ({first})") from None
        if dist.main:
            write_metrics(run)  # drop any line written after the checkpoint
        log(f"resuming {run_dir} at epoch {run.epoch + 1}, batch {run.batch} (step {run.step})")
    else:
        n_params = sum(p.numel() for p in model.parameters())
        procs = f", {dist.world_size} processes" if dist.world_size > 1 else ""
        log(
            f"training {cfg.model} ({n_params:,} parameters) on {data.name} ({data.train.num_samples * dist.world_size}"
            f" train / {data.val.num_samples * dist.world_size} val images) on {device} [{ctx.precision}{procs}]"
            f" -> {run_dir}"
        )
    writer = _open_writer(run_dir) if dist.main else None
    try:
        result = fit(run, stop_after=stop_after, writer=writer)
    finally:
        if writer is not None:
            writer.close()
    if result["interrupted"]:
        return {"interrupted": True, "reason": result["reason"], "run_dir": str(run_dir), "epoch": run.epoch,
                "batch": run.batch, "step": run.step}  # fmt: skip
    report = finish(run)
    if dist.world_size > 1:
        import torch.distributed as tdist

        tdist.barrier()
    return report


def finish(run: RunState) -> dict[str, Any]:
    """After training: curves.png, then ONE test of the best checkpoint: report.json and confusion.png."""
    from cnnzoo.train.plots import plot_confusion, plot_curves

    run_dir, data = run.run_dir, run.data
    best = checkpoint.load(run_dir / "best.pt") if run.dist.main else None
    if run.dist.world_size > 1:  # every rank evaluates its shard of the test split with the same weights
        import torch.distributed as tdist

        holder = [best["model"] if best is not None else None]
        tdist.broadcast_object_list(holder, src=0)
        weights = holder[0]
    else:
        weights = best["model"]
    tester = build_model(run.cfg, data.num_classes, data.in_channels).to(run.ctx.device)
    tester.load_state_dict(weights)
    test = evaluate(tester, data.test, run.ctx, data.num_classes, dist=run.dist, confusion=True)
    last = run.history[-1]
    report = {
        "model": run.cfg.model,
        "data": data.name,
        "classes": list(data.classes),
        "test": {"loss": test["loss"], "top1": test["top1"], "top5": test["top5"], "n": test["n"], "protocol": "center",
                 "per_class": dict(zip(data.classes, test["per_class"], strict=True))},  # fmt: skip
        "best_epoch": run.best["epoch"],
        "best_val_top1": run.best["val_top1"],
        "best_weights": run.best["weights"],
        "selection": "best validation top-1" if data.val.num_samples else "last epoch (no validation split)",
        "tta": "flip" if run.cfg.tta_flip else None,
        "epochs": last["epoch"],
        "steps": run.step,
        "final_val_top1": last["val_top1"],
        "train_seconds": round(run.train_seconds, 3),
        "parameters": sum(p.numel() for p in tester.parameters()),
        "seed": run.cfg.seed,
        "device": str(run.ctx.device),
        "precision": run.ctx.precision,
        "world_size": run.dist.world_size,
        "run_dir": str(run_dir),
    }
    if run.dist.main:
        (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        plot_curves(run.history, run_dir / "curves.png")
        plot_confusion(test["confusion"], data.classes, run_dir / "confusion.png",
                       title=f"{run.cfg.model} on {data.name}: test top-1 {100 * test['top1']:.2f}%")  # fmt: skip
        run.log(format_report(report))
    return report


def format_report(report: dict[str, Any]) -> str:
    """The test report as a few lines of text (percentages)."""
    t = report["test"]
    worst = sorted(t["per_class"].items(), key=lambda kv: kv[1])[:3]
    return (
        f"test ({t['n']} images, {report['model']} on {report['data']}, best epoch {report['best_epoch']} by "
        f"{report['selection']}{', flip TTA' if report.get('tta') else ''}):\n"
        f"  loss {t['loss']:.4f}   top-1 {100 * t['top1']:.2f}%   top-5 {100 * t['top5']:.2f}%\n"
        f"  weakest classes: {', '.join(f'{k} {100 * v:.1f}%' for k, v in worst)}\n"
        f"  run directory: {report['run_dir']} (report.json, metrics.jsonl, curves.png, confusion.png, best.pt)"
    )


# --- trained runs --------------------------------------------------------------------------------------------------


def model_from_checkpoint(ckpt: dict[str, Any], device: torch.device | str = "cpu") -> nn.Module:
    """The model a checkpoint was trained as, with its weights, in eval mode."""
    meta, cfg = ckpt["meta"], config_from_dict(ckpt["config"])
    model = build_model(cfg, meta["num_classes"], meta["in_channels"])
    checkpoint.load_weights(model, ckpt["model"], f"the {meta['model']} checkpoint")
    return model.to(device).eval()


def load_run(run_dir: str | Path, which: str = "best") -> tuple[dict[str, Any], nn.Module]:
    """(checkpoint, model) of a run directory's ``best.pt`` or ``last.pt``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CnnzooError(f"{run_dir}: no such run directory")
    if which not in ("best", "last"):
        raise CnnzooError(f"checkpoint must be best or last, got {which!r}")
    path = run_dir / f"{which}.pt"
    if not path.is_file():
        raise CnnzooError(f"{path}: no such checkpoint (has the run finished an epoch?)")
    ckpt = checkpoint.load(path)
    return ckpt, model_from_checkpoint(ckpt)
