"""One training run from a resolved :class:`TrainConfig` to a finished run directory.

``run_training`` checks everything it can before any work (arguments, the ``--out`` folder: :mod:`.rundir`), builds
the run in memory (:func:`build_run`: data, model, optimizer, EMA), only then claims the run directory
(:func:`.rundir.claim`), or continues the run from its ``last.pt`` (:func:`continue_run`, refusing data that differs
from what the run was trained on), calls :func:`cnnzoo.train.loop.fit`, then (unless stopped) tests the best
checkpoint once on the test split (:func:`cnnzoo.train.report.finish`). ``model_from_checkpoint`` rebuilds a trained
model (:func:`cnnzoo.train.trained.load_checkpoint`: for ``cnnzoo eval``, ``predict``, ``export``).
"""

from __future__ import annotations

import contextlib
import inspect
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnzoo.errors import CnnzooError
from cnnzoo.models import create_model, get_model_info
from cnnzoo.train import checkpoint, finetune, rundir, rundir_lock
from cnnzoo.train.config import TrainConfig, config_from_dict, write_config
from cnnzoo.train.distributed import Dist, init_distributed
from cnnzoo.train.engine import GraphedStep, backend_settings, lr_table, make_ema, set_dropout, setup_training
from cnnzoo.train.estimate import announce as announce_estimate
from cnnzoo.train.loop import fit
from cnnzoo.train.report import finish, open_writer
from cnnzoo.train.state import RunState


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
    options.update(finetune.model_options(cfg))  # GoogLeNet's transform_input for torchvision's weights
    model = create_model(cfg.model, num_classes=num_classes, in_channels=in_channels, **options)
    if cfg.dropout is not None and set_dropout(model, cfg.dropout) == 0:
        raise CnnzooError(f"--dropout given but {cfg.model} has no dropout layers")
    return model


def load_bundle(cfg: TrainConfig, device: torch.device, dist: Dist, *, augment: bool = True):
    """The data for ``cfg`` on ``device``; the global batch is split evenly over the DDP ranks."""
    from cnnzoo.data import load_data

    val_size = cfg.val_size
    if val_size is not None and val_size >= 1:
        val_size = int(val_size)  # a count of images, not a fraction
    per_rank = cfg.batch_size // dist.world_size
    return load_data(
        cfg.data,
        data_dir=cfg.data_dir,
        download=cfg.download or None,
        batch_size=per_rank,
        eval_batch_size=cfg.eval_batch_size or 2 * per_rank,
        device=device,
        image_size=cfg.image_size,
        in_channels=cfg.in_channels,
        val_size=val_size,
        seed=cfg.seed,
        augment=cfg.augment if augment else "none",
        cutout=cfg.cutout,
        rank=dist.rank,
        world_size=dist.world_size,
        subset=cfg.subset,
        mean=tuple(cfg.mean) or None,  # the --weights' normalisation (finetune.start_config), else the data's
        std=tuple(cfg.std) or None,
        auto_augment=cfg.auto_augment if augment else None,
        random_erase=cfg.random_erase if augment else 0.0,
    )


# --- one run ----------------------------------------------------------------------------------------------------------


def check_setup(cfg: TrainConfig, device: torch.device, dist: Dist) -> None:
    """Refuse, before any work, what this device or process group cannot run."""
    if cfg.batch_size % dist.world_size:
        raise CnnzooError(f"batch size {cfg.batch_size} is not divisible by the {dist.world_size} processes")
    if cfg.sync_bn and device.type != "cuda":
        raise CnnzooError("--sync-bn needs CUDA (torch's SyncBatchNorm does not run on the CPU)")
    if cfg.cuda_graph and dist.world_size > 1:
        raise CnnzooError(
            "--cuda-graph trains in one process (DDP's gradient all-reduce is not captured): drop it under torchrun"
        )


def build_run(cfg: TrainConfig, dist: Dist, device: torch.device, run_dir: Path | None = None, log=print) -> RunState:
    """Everything a run needs in memory, nothing written: seeds, data, model, :func:`setup_training` (the set-up
    ``cnnzoo compare`` times), EMA and the ``--cuda-graph`` step. Call inside :func:`backend_settings`."""
    seed_everything(cfg.seed)
    data = load_bundle(cfg, device, dist)
    model = build_model(cfg, data.num_classes, data.in_channels)
    finetune.freeze(model, cfg, log)  # --freeze, --freeze-until: before the optimizer is made
    net, optimizer, ctx = setup_training(model, cfg, device, world_size=dist.world_size)
    ema = make_ema(model, cfg.ema) if cfg.ema > 0 else None
    if cfg.early_stop and data.val.num_samples == 0:
        raise CnnzooError(f"--early-stop {cfg.early_stop} needs a validation split, and {data.name} has none here")
    run = RunState(cfg, data, model, net, optimizer, ctx, run_dir=run_dir, ema=ema, dist=dist, log=log)
    if cfg.cuda_graph:
        run.graph = GraphedStep(net, optimizer, ctx, ema=ema, lrs=lr_table(cfg, run.steps_per_epoch, device))
        if device.type != "cuda":
            log(f"--cuda-graph: no CUDA graphs on {device}; the same step runs uncaptured")
    return run


def run_training(
    cfg: TrainConfig,
    run_dir: str | Path | None = None,
    *,
    resume: dict[str, Any] | None = None,
    stop_after: int | None = None,
    overwrite: bool = False,
    log=print,
    estimate: bool = True,
) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir``, or continue the run there from ``resume`` (its ``last.pt``, as
    :func:`.rundir.open_run` returns it); returns the report. ``estimate``: time a few steps first and log the
    ``estimate:`` line (a quiet run, whose line nobody reads, skips the probe).

    ``overwrite``: replace a previous run in ``run_dir`` (after the new one is built) instead of refusing.
    An interrupted run returns ``{"interrupted": True, "signal": ..., "run_dir": ..., "step": ...}`` with ``last.pt``
    written (``signal``: the number of the signal that stopped it, None for ``stop_after``).
    """
    dist, device = init_distributed(cfg)
    log = log if dist.main else (lambda *a, **k: None)
    if resume is None:
        cfg = finetune.start_config(cfg)  # the --weights' preprocessing, unless given
    run_dir = Path(run_dir) if run_dir is not None else rundir.default_out(cfg)
    check_setup(cfg, device, dist)
    if resume is None and (not run_dir.is_dir() or rundir.read_marker(run_dir) is None):
        rundir.check_out(run_dir, overwrite=overwrite)  # a stranger's folder is refused before a lock file is put in
    with contextlib.ExitStack() as held:
        if dist.main and run_dir.is_dir():  # one writer at a time, from before the first check to the end
            held.enter_context(rundir_lock.hold(run_dir))
            if resume is None:
                rundir.recover_replaced(run_dir)
                rundir.check_out(run_dir, overwrite=overwrite)  # under the lock: a writer at work is named first
        return _train_locked(
            cfg,
            run_dir,
            dist,
            device,
            held,
            resume=resume,
            stop_after=stop_after,
            overwrite=overwrite,
            log=log,
            estimate=estimate,
        )


def _train_locked(cfg, run_dir, dist, device, held, *, resume, stop_after, overwrite, log, estimate) -> dict[str, Any]:
    """:func:`run_training` once the run directory is this process's (rank 0 holds its lock, or takes it at
    :func:`.rundir.claim`)."""
    with backend_settings(cfg, device):
        run = build_run(cfg, dist, device, run_dir, log)
        aside, fresh = _start(run, resume, overwrite=overwrite, held=held)
        if estimate:
            announce_estimate(run, stop_after=stop_after)  # before the first step: how long the whole run will take
        writer = open_writer(run) if dist.main else None
        try:
            result = _fit_or_undo(run, writer, aside, fresh, stop_after)
            if result["interrupted"]:
                where = {"run_dir": str(run_dir), "epoch": run.epoch, "batch": run.batch, "step": run.step}
                return {"interrupted": True, "reason": result["reason"], "signal": result["signal"], **where}
            return finish(run, writer, early_stopped=result["early_stopped"])
        finally:
            if writer is not None:
                writer.close()


def _start(run: RunState, resume: dict[str, Any] | None, *, overwrite: bool, held) -> tuple[Path | None, bool]:
    """Continue the run from ``resume``, or start a new one: its ``--weights``, then (rank 0) the run directory
    claimed. Returns (the folder holding a run replaced with ``--overwrite``, or None; whether this run created
    the run directory)."""
    if resume is not None:
        continue_run(run, resume)
        return None, False
    if run.cfg.weights:  # a new run's start (a resumed one has its weights in last.pt)
        run.cfg.weights_sha256 = finetune.load_start(run.model, run.cfg, run.log)
    fresh = run.dist.main and not run.run_dir.exists()
    aside = rundir.claim(run, overwrite=overwrite, held=held) if run.dist.main else None
    _announce(run)
    return aside, fresh


def _fit_or_undo(run: RunState, writer, aside: Path | None, fresh: bool, stop_after: int | None) -> dict[str, Any]:
    """:func:`fit`, undoing the start when it fails before the new run's first ``last.pt``: a folder this run
    created goes as it came, a run replaced with ``--overwrite`` is put back as it was. Once that ``last.pt``
    exists, the replaced run goes for good."""
    try:
        return fit(run, stop_after=stop_after, writer=writer)
    except BaseException as e:
        if _has_own_last(run) or not (fresh or aside is not None):
            raise
        if writer is not None:
            writer.close()  # its event file goes with the run's other files (closing twice is harmless)
        if fresh:
            rundir.remove_new_folder(run.run_dir)  # nothing worth keeping
            raise
        rundir.put_back(run.run_dir, aside)
        if isinstance(e, CnnzooError):
            back = CnnzooError(f"{e}; the run it was to replace is back in {run.run_dir}, as it was")
            back.exit_code = e.exit_code
            raise back from None
        raise
    finally:
        if aside is not None and _has_own_last(run):
            rundir.drop_aside(run.run_dir)  # the new run has its first checkpoint: it replaces the old one now


def _has_own_last(run: RunState) -> bool:
    """Whether the new run has written its ``last.pt`` (the replaced run's was moved aside by :func:`claim`, so any
    ``last.pt`` in the folder is the new run's)."""
    return (run.run_dir / "last.pt").is_file()


def _announce(run: RunState) -> None:
    """One line: what trains on what, where, and into which folder."""
    d, n = run.data, run.dist.world_size
    n_params = sum(p.numel() for p in run.model.parameters())
    procs = f", {n} processes" if n > 1 else ""
    run.log(
        f"training {run.cfg.model} ({n_params:,} parameters) on {d.name} ({d.train.num_samples * n} train / "
        f"{d.val.num_samples * n} val images) on {run.ctx.device} [{run.ctx.precision}{procs}] -> {run.run_dir}"
    )
    if run.cfg.subset and d.val.num_samples > d.train.num_samples and run.cfg.eval_every == 1:
        # --subset leaves validation whole (a split size is part of what a figure means): say how to keep it cheap.
        run.log(
            f"note: validating {d.val.num_samples * n} images after every epoch of {d.train.num_samples * n}: "
            "--val-size N or --eval-every N keep evaluation in proportion"
        )


def continue_run(run: RunState, ckpt: dict[str, Any]) -> None:
    """Continue ``run`` from its ``last.pt`` (``ckpt``) at the exact batch it stopped, on the same data."""
    checkpoint.check_data_matches(ckpt["meta"], run.data, f"--resume {run.run_dir}")
    try:
        checkpoint.restore_run(run, ckpt)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:  # a hand-edited or foreign last.pt
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CnnzooError(f"{run.run_dir / 'last.pt'}: cannot resume from it ({first})") from None
    if run.dist.main:
        rundir.remove_temp_files(run.run_dir)
        for name in rundir.FINAL_FILES:  # a finished run resumed for more epochs: its old report no longer describes it
            (run.run_dir / name).unlink(missing_ok=True)
        write_config(run.cfg, run.run_dir / "config.toml")  # with what this resume changed (e.g. more epochs)
        checkpoint.write_metrics(run)  # drop any line written after the checkpoint
    run.log(f"resuming {run.run_dir} at epoch {run.epoch + 1}, batch {run.batch} (step {run.step})")


# --- trained runs -----------------------------------------------------------------------------------------------------


def model_from_checkpoint(ckpt: dict[str, Any], device: torch.device | str = "cpu") -> nn.Module:
    """The model a checkpoint was trained as, with its weights, in eval mode."""
    meta, cfg = ckpt["meta"], config_from_dict(ckpt["config"])
    model = build_model(cfg, meta["num_classes"], meta["in_channels"])
    checkpoint.load_weights(model, ckpt["model"], f"the {meta['model']} checkpoint")
    return model.to(device).eval()
