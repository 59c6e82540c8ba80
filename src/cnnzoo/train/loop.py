"""The training loop: plain functions ``train_one_epoch``, ``evaluate`` and ``fit`` over one :class:`RunState`.

``fit`` runs epochs of :func:`train_one_epoch` (each step a :class:`Step`: the lr of ``schedule.lr_at``, then
``engine.train_step``), validates after each epoch (the EMA weights alongside), appends a line to ``metrics.jsonl``,
keeps ``best.pt`` (best validation top-1, the only model-selection signal: the test split is touched once, at the
end, by ``report.finish``) and ``last.pt`` (everything to resume). A SIGINT/SIGTERM finishes the current step, writes
``last.pt`` at that exact batch and returns; a non-finite loss raises ``NonFiniteLoss`` before the bad update.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnzoo.data.bundle import Stream, generator
from cnnzoo.errors import CnnzooError
from cnnzoo.train import checkpoint
from cnnzoo.train.distributed import Dist
from cnnzoo.train.engine import StepContext, lr_table, mix_batch, set_lr, train_step
from cnnzoo.train.progress import Progress, eval_bar, watch_epoch
from cnnzoo.train.schedule import num_epochs, total_steps, warmup_length
from cnnzoo.train.state import RunState
from cnnzoo.train.stopping import FINITE_EVERY, FiniteGuard, StopFlag

_MIX_STREAM = Stream.MIX  # generator stream tag for mixup/cutmix draws (cnnzoo.data.bundle.Stream)
# The warm-up rule judges the training error of the last WARMUP_WINDOW batches (2,560 images at batch 128): one
# batch's error near 80 % varies by about 3.5 points (binomial, n = 128), the mean of 20 by about 0.8.
WARMUP_WINDOW = 20


# --- the warm-up rule -------------------------------------------------------------------------------------------------


def judge_warmup(run: RunState, logits: torch.Tensor, labels: torch.Tensor) -> bool:
    """He et al. 2016 section 4.2: "we use 0.01 to warm up the training until the training error is below 80%".
    After each step while :attr:`RunState.warming`: the batch's training error (every rank's, summed) joins a window
    of the last :data:`WARMUP_WINDOW` batches; the warm-up ends (``run.warmup_end = run.step``, the next step's lr is
    the schedule's) once the window is full and its mean error is below ``cfg.warmup_until_error``, or at the fixed
    warm-up length, its cap. Deterministic (the batches are) and exactly resumable (the window is in ``last.pt``).
    Reads one number per step from the device, during the warm-up only. Returns True when it just ended."""
    counts = torch.stack([(logits.argmax(1) != labels).sum(), torch.full_like(labels[0], len(labels))]).double()
    wrong, n = run.dist.all_reduce(counts).tolist()
    run.warmup_errors = [*run.warmup_errors, wrong / n][-WARMUP_WINDOW:]
    error = sum(run.warmup_errors) / len(run.warmup_errors)
    cap = warmup_length(run.cfg, run.steps_per_epoch)
    below = len(run.warmup_errors) == WARMUP_WINDOW and error < run.cfg.warmup_until_error
    if not (below or (cap and run.step >= cap)):
        return False
    run.warmup_end = run.step
    why = f"training error of the last {WARMUP_WINDOW} batches {100 * error:.1f}%"
    why += f" < {100 * run.cfg.warmup_until_error:g}%" if below else f", cap of {cap} steps reached"
    run.log(f"warm-up ended after step {run.step} ({why}); lr {run.lr(run.step):.4g} from here")
    return True


# --- one epoch --------------------------------------------------------------------------------------------------------


class Step:
    """The step :func:`train_one_epoch` calls, ``step(images, targets, labels) -> (loss, logits)``, made once per
    epoch. It hides how the step runs: eagerly (:func:`train_step` with the lr of :func:`lr_at` set first, the
    running sums added here) or as a ``--cuda-graph`` replay (:class:`GraphedStep`, which keeps the sums, the
    non-finite record and, with a table, the lr on the device); the EMA is updated here unless the graph does it."""

    def __init__(self, run: RunState) -> None:
        self.run, self.graph, self.guard = run, run.graph, FiniteGuard(run)
        if run.sums is None:
            run.sums = torch.zeros(2, dtype=torch.float64, device=run.ctx.device)  # [sum of loss * n, correct]
        if self.graph is not None:  # the graph's own sums and record are the loop's, as progress and checkpoints see
            self.graph.seek(run.step, run.sums)
            run.sums, self.guard.bad = self.graph.sums, self.graph.bad
        self.sets_lr = self.graph is None or self.graph.lrs is None  # else the captured step reads the lr table
        self.owns_ema = run.ema is not None and (self.graph is None or self.graph.ema is not run.ema)
        self.sync_lr_table()

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor):
        run = self.run
        if self.sets_lr:
            set_lr(run.optimizer, run.lr(run.step))
        if self.graph is not None:
            loss, logits = self.graph(images, targets, labels)
            if self.guard.every_step:
                self.guard.raise_if_bad()
        else:
            loss, logits = train_step(run.net, run.optimizer, images, targets, run.ctx, check_finite=self.guard)
            run.sums += torch.stack([loss.double() * len(labels), (logits.argmax(1) == labels).sum().double()])
        if self.owns_ema:
            run.ema.update_parameters(run.model)
        return loss, logits

    def sync_lr_table(self) -> None:
        """A captured step reads its lr from a table on the device: refill it in place (the graph keeps the tensor)
        when the warm-up rule's end step is newer than the table's (it ended, or a resumed run knows it)."""
        graph, run = self.graph, self.run
        if graph is not None and graph.lrs is not None and graph.lrs_warmup_end != run.warmup_end:
            graph.lrs.copy_(lr_table(run.cfg, run.steps_per_epoch, graph.lrs.device, run.warmup_end))
            graph.lrs_warmup_end = run.warmup_end


def train_one_epoch(run: RunState, step: Step, stop: StopFlag, progress: Progress | None = None) -> bool:
    """Train ``run.epoch`` from ``run.batch`` on with ``step``; True if the epoch ended, False if stopped mid-way.

    Running sums stay on the device in float64 (no per-step host sync for the metrics) and are part of the
    checkpoint, so an epoch resumed mid-way reports exactly what the uninterrupted epoch would.
    """
    cfg, data, spe = run.cfg, run.data, run.steps_per_epoch
    total = total_steps(cfg, spe)
    run.net.train()
    tick = time.perf_counter()
    try:
        for images, labels in data.train.epoch(run.epoch, run.batch):
            if run.step >= total:
                break
            targets = labels
            if cfg.mixup > 0 or cfg.cutmix > 0:  # mixed (soft) targets; the accuracy compares with the labels
                g = generator("cpu", cfg.seed, _MIX_STREAM, run.step)
                images, targets = mix_batch(images, labels, cfg, data.num_classes, g)
            loss, logits = step(images, targets, labels)
            run.seen, run.step, run.batch = run.seen + len(labels), run.step + 1, run.batch + 1
            if run.warming and judge_warmup(run, logits, labels):
                step.sync_lr_table()
            if run.step % FINITE_EVERY == 0:
                step.guard.raise_if_bad()
            if progress is not None:
                progress(run.batch, loss)
            if run.batch < spe and run.step < total and stop.check(run.step, run.dist):
                break
        step.guard.raise_if_bad()  # before the caller saves anything
    finally:
        run.epoch_seconds += time.perf_counter() - tick
    return run.batch >= spe or run.step >= total


# --- evaluation -------------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    ctx: StepContext,
    num_classes: int,
    *,
    dist: Dist | None = None,
    confusion: bool = False,
    label: str | None = None,
) -> dict[str, Any]:
    """Loss (plain cross-entropy, no smoothing), top-1 and top-5 accuracy (fractions) over a whole split.

    With ``confusion=True`` also the confusion matrix (rows: true class, columns: predicted) and per-class accuracy.
    Sums are reduced over DDP ranks, so every rank returns the totals of the whole split. With ``ctx.tta_flip`` the
    logits are the mean of the image's and its mirror image's (test-time augmentation, as the fast CIFAR trainers do;
    the training augmentation flips, so both views are in the training distribution). ``label`` (e.g. "validate"):
    show a transient progress bar with it on a terminal (rank 0).
    """
    dist = dist or Dist()
    was_training = model.training
    model.eval()
    k = min(5, num_classes)
    sums = torch.zeros(4, dtype=torch.float64, device=ctx.device)  # loss * n, top1, top5, n
    cm = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=ctx.device) if confusion else None
    bar = eval_bar(label, len(loader)) if label is not None and dist.main else None
    with bar or contextlib.nullcontext():
        for i, (images, labels) in enumerate(loader.epoch(0)):
            if bar is not None:
                bar.update(bar.task_ids[0], completed=i)
            with ctx.autocast():
                logits = model(ctx.layout(images)).float()
                if ctx.tta_flip:
                    logits = (logits + model(ctx.layout(images.flip(3))).float()) / 2
            top = logits.topk(k, dim=1).indices
            hit = top == labels[:, None]
            sums += torch.stack(
                [
                    F.cross_entropy(logits, labels, reduction="sum").double(),
                    hit[:, 0].sum().double(),
                    hit.any(1).sum().double(),
                    # A count made on the device: torch.tensor(len) would copy from pageable host memory per batch.
                    torch.full((), len(labels), dtype=torch.float64, device=sums.device),
                ]
            )
            if cm is not None:
                cm += torch.bincount(labels * num_classes + top[:, 0], minlength=num_classes**2).view_as(cm).double()
    dist.all_reduce(sums)
    model.train(was_training)
    n = sums[3].item()
    if n == 0:
        return {"loss": math.nan, "top1": math.nan, "top5": math.nan, "n": 0}
    out = {"loss": sums[0].item() / n, "top1": sums[1].item() / n, "top5": sums[2].item() / n, "n": int(n)}
    if cm is not None:
        dist.all_reduce(cm)
        per_class = (cm.diagonal() / cm.sum(1).clamp_min(1)).tolist()
        out["confusion"] = cm.long().tolist()
        out["per_class"] = per_class
    return out


# --- the whole run ----------------------------------------------------------------------------------------------------


def fit(run: RunState, *, stop_after: int | None = None, writer=None) -> dict[str, Any]:
    """Train until the configured length, until ``--early-stop`` patience is spent, or until stopped; returns
    ``{"interrupted": bool, "reason": str, "signal": int | None, "early_stopped": int | None}`` (the signal that
    stopped the run, if one did; the last epoch trained when early stopping ended it: a normal finish).

    ``stop_after``: stop (exactly as on Ctrl-C) once this many steps are done in total: the test hook for
    interrupt-and-resume, and a way to spend a fixed budget. Rank 0 writes the run directory.
    """
    cfg, spe = run.cfg, run.steps_per_epoch
    if spe == 0:
        raise CnnzooError(
            f"batch size {cfg.batch_size} is larger than the training split "
            f"({run.data.train.num_samples} images per rank): lower --batch-size"
        )
    epochs, total = num_epochs(cfg, spe), total_steps(cfg, spe)
    stop = StopFlag(stop_after)
    uninstall = stop.install()
    try:
        while run.epoch < epochs and run.step < total and not early_stopped(run):
            with watch_epoch(run, epochs, writer) as progress:
                finished = train_one_epoch(run, Step(run), stop, progress)
            if not finished:
                return _interrupted(run, stop)
            record, new_best = close_epoch(run)
            save_epoch(run, record, new_best, writer)
            if early_stopped(run):
                break
            if run.epoch < epochs and run.step < total and stop.check(run.step, run.dist):
                return _interrupted(run, stop)
    finally:
        uninstall()
    done_early = early_stopped(run) and (run.epoch < epochs and run.step < total)
    if done_early:
        run.log(
            f"early stop: validation top-1 not improved for {cfg.early_stop} validated epochs since epoch "
            f"{run.best['epoch']}; stopped after epoch {run.epoch}"
        )
    return {"interrupted": False, "reason": "", "signal": None, "early_stopped": run.epoch if done_early else None}


def early_stopped(run: RunState) -> bool:
    """True when ``--early-stop`` patience is spent: the last ``cfg.early_stop`` validated epochs (from the history,
    so a resumed run decides exactly as the uninterrupted one) all came after the best one without beating it."""
    patience = run.cfg.early_stop
    if not patience or run.best["epoch"] < 1:
        return False
    since = [r for r in run.history if r["epoch"] > run.best["epoch"] and r.get("val_top1") is not None]
    return len(since) >= patience


def _validate_now(run: RunState) -> bool:
    """Whether the epoch just trained is validated: every ``cfg.eval_every``-th epoch and always the last one."""
    epoch, spe = run.epoch + 1, run.steps_per_epoch
    last = epoch >= num_epochs(run.cfg, spe) or run.step >= total_steps(run.cfg, spe)
    return last or epoch % run.cfg.eval_every == 0


def close_epoch(run: RunState) -> tuple[dict[str, Any], tuple[str, nn.Module] | None]:
    """Validate the epoch just trained (when :func:`_validate_now`), append its metrics line to the history, select
    the best weights (on the validation split only, among validated epochs) and advance ``run`` to the next epoch.
    Returns (the line, ``(source, weights)`` when they are the new best, else None)."""
    sums = run.dist.all_reduce(torch.cat([run.sums, run.sums.new_tensor([run.seen])]))
    seconds, n = run.epoch_seconds, sums[2].item()  # this rank's wall time (ranks run in lock-step)
    validate = _validate_now(run)
    tick = time.perf_counter()
    nan = {"loss": math.nan, "top1": math.nan, "top5": math.nan}
    val = _val(run, run.model) if validate else nan
    record = {
        "epoch": run.epoch + 1,
        "step": run.step,
        "lr": run.lr(run.step - 1),
        "train_loss": sums[0].item() / n,
        "train_top1": sums[1].item() / n,
        "val_loss": val["loss"],
        "val_top1": val["top1"],
        "val_top5": val["top5"],
        "seconds": round(seconds, 3),  # training seconds (the name older runs and readers use)
        "images_per_s": round(n / seconds, 1) if seconds > 0 else None,
    }
    candidates = [(val["top1"], "model", run.model)]
    if run.ema is not None:
        ema_val = _val(run, run.ema.module) if validate else nan
        record.update(ema_val_loss=ema_val["loss"], ema_val_top1=ema_val["top1"], ema_val_top5=ema_val["top5"])
        candidates.append((ema_val["top1"], "ema", run.ema.module))
    if run.cfg.warmup_until_error > 0:
        record["warmup_end_step"] = run.warmup_end  # None: the rule has not ended the warm-up yet
    record.update(train_seconds=round(seconds, 3), eval_seconds=round(time.perf_counter() - tick, 3))
    record["save_seconds"] = None  # measured by save_epoch
    record = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in record.items()}  # JSON has no NaN
    run.history.append(record)
    run.train_seconds += seconds
    # With no validation split (NaN scores) the latest validated epoch is kept.
    score, source, weights = max(candidates, key=lambda c: -1.0 if math.isnan(c[0]) else c[0])
    improved = validate and (math.isnan(score) or run.best["val_top1"] is None or score > run.best["val_top1"])
    if improved:
        run.best = {"val_top1": None if math.isnan(score) else score, "epoch": run.epoch + 1, "weights": source}
    run.epoch, run.batch, run.sums, run.seen, run.epoch_seconds = run.epoch + 1, 0, None, 0, 0.0
    return record, (source, weights) if improved else None


def _val(run: RunState, model: nn.Module) -> dict[str, Any]:
    return evaluate(model, run.data.val, run.ctx, run.data.num_classes, dist=run.dist, label="validate")


def save_epoch(run: RunState, record: dict[str, Any], new_best: tuple[str, nn.Module] | None, writer=None) -> None:
    """After :func:`close_epoch` (rank 0): best.pt when improved, last.pt (timed: ``save_seconds``), metrics.jsonl,
    TensorBoard, one log line. The ``last.pt`` just written holds this line without its own ``save_seconds``."""
    if not run.dist.main:
        return
    if run.run_dir is not None:
        tick = time.perf_counter()
        if new_best is not None:
            checkpoint.save_best(run, new_best[1], new_best[0])
        checkpoint.save_last(run)
        record["save_seconds"] = round(time.perf_counter() - tick, 3)
        checkpoint.write_metrics(run)
    if writer is not None:
        for key, value in record.items():
            if key not in ("epoch", "step", "seconds") and value is not None:  # seconds: = train_seconds
                writer.add_scalar(f"epoch/{key}", value, record["step"])
    keys = ["train_loss", "train_top1", "val_loss", "val_top1"] + (["ema_val_top1"] if run.ema is not None else [])
    values = "  ".join(f"{k} {record[k]:.4f}" for k in keys if record[k] is not None)
    times = f"train {record['train_seconds']:.1f}s  eval {record['eval_seconds']:.1f}s"
    if record["save_seconds"] is not None:
        times += f"  save {record['save_seconds']:.1f}s"
    run.log(
        f"epoch {record['epoch']:>3}  step {run.step:>6}  lr {record['lr']:.4g}  {values}  "
        f"{times}  {record['images_per_s'] or 0:,.0f} img/s"
    )


def _interrupted(run: RunState, stop: StopFlag) -> dict[str, Any]:
    """Write last.pt at the exact batch reached and say how to resume."""
    if run.dist.main:
        if run.run_dir is not None:
            checkpoint.save_last(run)
            checkpoint.write_metrics(run)
        where = run.run_dir if run.run_dir is not None else "RUN_DIR"
        run.log(
            f"{stop.reason or 'stopped'}: saved epoch {run.epoch + 1} batch {run.batch} (step {run.step}) to "
            f"{where}/last.pt; resume with: cnnzoo train --resume {where}"
        )
    return {"interrupted": True, "reason": stop.reason, "signal": stop.signum}
