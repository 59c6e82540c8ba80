"""The training loop: plain functions ``train_one_epoch``, ``evaluate`` and ``fit`` over one :class:`RunState`.

``fit`` runs epochs of :func:`cnnzoo.train.engine.train_step`, the lr set from
:func:`cnnzoo.train.schedule.lr_at` before every step,
evaluates on the validation split after each epoch (and the EMA weights alongside), appends a line to
``metrics.jsonl``, keeps ``best.pt`` (best validation top-1, the only model-selection signal: the test split is
touched once, at the end, by :func:`cnnzoo.train.api.train`) and ``last.pt`` (everything needed to resume). A
SIGINT/SIGTERM finishes the current step, writes ``last.pt`` at that exact batch and returns; a non-finite loss
raises :class:`NonFiniteLoss` before the bad update, leaving the last good ``last.pt`` in place.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnzoo.atomic import write_atomic
from cnnzoo.data.bundle import DataBundle, Stream, data_counts, generator
from cnnzoo.errors import CnnzooError
from cnnzoo.train import checkpoint
from cnnzoo.train.config import TrainConfig
from cnnzoo.train.engine import GraphedStep, StepContext, lr_table, mix_batch, set_lr, train_step
from cnnzoo.train.schedule import lr_at, num_epochs, total_steps, warmup_length

_MIX_STREAM = Stream.MIX  # generator stream tag for mixup/cutmix draws (cnnzoo.data.bundle.Stream)
_FINITE_EVERY = 50  # steps between NaN/inf checks on an accelerator
# The warm-up rule judges the training error of the last WARMUP_WINDOW batches (2,560 images at batch 128): one
# batch's error near 80 % varies by about 3.5 points (binomial, n = 128), the mean of 20 by about 0.8.
WARMUP_WINDOW = 20


class NonFiniteLoss(CnnzooError):
    """The loss became NaN or infinite: the run stops, keeping the last good checkpoint."""

    exit_code = 3


@dataclass
class Dist:
    """Where this process sits in a DDP job (world_size 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over ranks in place (a no-op for one process)."""
        if self.world_size > 1:
            import torch.distributed as tdist

            tdist.all_reduce(t)
        return t


@dataclass
class RunState:
    """Everything a run carries between steps; ``last.pt`` is this, serialised."""

    cfg: TrainConfig
    data: DataBundle
    model: nn.Module  # the plain module (what checkpoints store)
    net: nn.Module  # what the step calls: the model, possibly DDP-wrapped and/or compiled
    optimizer: torch.optim.Optimizer
    ctx: StepContext
    run_dir: Path | None = None
    ema: nn.Module | None = None  # cnnzoo.train.ema.EMA (engine.make_ema)
    graph: GraphedStep | None = None  # --cuda-graph: replaces train_step
    dist: Dist = field(default_factory=Dist)
    epoch: int = 0  # the epoch in progress (or next to start)
    batch: int = 0  # the next batch of that epoch
    step: int = 0  # optimizer steps done
    sums: torch.Tensor | None = None  # this epoch so far, on the device, float64: [sum of loss * n, correct]
    seen: int = 0  # images trained on in this epoch so far (this rank)
    epoch_seconds: float = 0.0  # time spent training this epoch so far
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"val_top1": -1.0, "epoch": -1, "weights": "model"})
    train_seconds: float = 0.0
    run_id: str | None = None  # the run directory's identity (its marker file), stored in every checkpoint's meta
    warmup_end: int | None = None  # warm-up rule: the step at which it ended the warm-up (None: not yet, or no rule)
    warmup_errors: list[float] = field(default_factory=list)  # its window: the last batches' training errors
    log: Callable[[str], None] = print

    @property
    def steps_per_epoch(self) -> int:
        return len(self.data.train)

    @property
    def warming(self) -> bool:
        """Whether the warm-up rule (``cfg.warmup_until_error``) is still to end the warm-up."""
        return self.cfg.warmup_until_error > 0 and self.warmup_end is None

    def lr(self, step: int) -> float:
        """The lr of ``step``: :func:`lr_at` with the step at which the warm-up rule ended the warm-up, if it has."""
        return lr_at(step, self.cfg, self.steps_per_epoch, self.warmup_end)

    def meta(self) -> dict[str, Any]:
        d = self.data
        return {
            "model": self.cfg.model,
            "num_classes": d.num_classes,
            "in_channels": d.in_channels,
            "data": d.name,
            "classes": list(d.classes),
            "image_size": d.image_size,
            "mean": list(d.mean),
            "std": list(d.std),
            "run_id": self.run_id,
            "data_counts": data_counts(d),
        }


# --- stopping ------------------------------------------------------------------------------------------------------


class StopFlag:
    """Set by SIGINT/SIGTERM (or a step budget); the loop stops cleanly after the current step.

    ``signum`` is the signal that stopped the run (None for ``stop_after``): the CLI exits with 128 + it.
    """

    def __init__(self, stop_after: int | None = None) -> None:
        self.requested = False
        self.stop_after = stop_after
        self.reason = ""
        self.signum: int | None = None

    def check(self, step: int, dist: Dist) -> bool:
        if self.stop_after is not None and step >= self.stop_after and not self.requested:
            self.requested, self.reason = True, f"stopped after step {step} (--stop-after)"
        if dist.world_size > 1:  # every rank must stop at the same step: [ranks stopping, sum of their signals]
            flags = dist.all_reduce(torch.tensor([float(self.requested), float(self.signum or 0)]))
            if flags[0] > 0 and not self.requested:
                self.requested, self.reason = True, "stopped with the other processes"
                self.signum = int(flags[1] / flags[0]) or None
        return self.requested

    def install(self) -> Callable[[], None]:
        """Catch SIGINT/SIGTERM (main thread only); a second Ctrl-C aborts at once. Returns the uninstaller."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum, frame):
            if self.requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.requested, self.reason = True, f"{signal.Signals(signum).name} received"
            self.signum = signum

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        return lambda: [signal.signal(s, h) for s, h in old.items()]


class FiniteGuard:
    """Stops the run at the first NaN/inf loss, before anything is saved: ``guard(loss)`` is the step's
    ``check_finite`` hook, :meth:`raise_if_bad` raises :class:`NonFiniteLoss` if a bad step was seen.

    On the CPU every loss is checked before its backward, so a bad update is never applied. On an accelerator a
    per-step check would stall the device, so the first bad step is recorded on the device and read every
    ``_FINITE_EVERY`` steps and at the end of the epoch.
    """

    def __init__(self, run: RunState) -> None:
        self.run = run
        self.bad = torch.full((), -1, dtype=torch.long, device=run.ctx.device)  # first non-finite step, -1 = none
        self.every_step = run.ctx.device.type == "cpu"

    def __call__(self, loss: torch.Tensor) -> None:
        self.bad.masked_fill_((self.bad < 0) & ~torch.isfinite(loss), self.run.step)
        if self.every_step:
            self.raise_if_bad()

    def raise_if_bad(self) -> None:
        step = int(self.bad.item())
        if step >= 0:
            spe, run_dir = self.run.steps_per_epoch, self.run.run_dir
            last = run_dir / "last.pt" if run_dir and (run_dir / "last.pt").is_file() else "none written"
            raise NonFiniteLoss(
                f"non-finite loss at epoch {step // spe + 1}, step {step + 1}; stopped, keeping the last good "
                f"checkpoint ({last}); try a lower --lr, --grad-clip or --precision fp32"
            )


# --- the warm-up rule ----------------------------------------------------------------------------------------------


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


def _sync_lr_table(run: RunState) -> None:
    """A captured step reads its lr from a table on the device: refill it in place (the graph keeps the tensor)
    with the warm-up's end as now known."""
    if run.graph is not None and run.graph.lrs is not None and run.cfg.warmup_until_error > 0:
        run.graph.lrs.copy_(lr_table(run.cfg, run.steps_per_epoch, run.graph.lrs.device, run.warmup_end))


# --- one epoch -----------------------------------------------------------------------------------------------------


def train_one_epoch(run: RunState, stop: StopFlag, progress: Callable[[int, torch.Tensor], None] | None = None) -> bool:
    """Train ``run.epoch`` from ``run.batch`` on; True if the epoch ended, False if stopped mid-way.

    Running sums stay on the device in float64 (no per-step host sync for the metrics) and are part of the
    checkpoint, so an epoch resumed mid-way reports exactly what the uninterrupted epoch would. Non-finite losses:
    :class:`FiniteGuard`.
    """
    cfg, data, spe = run.cfg, run.data, run.steps_per_epoch
    total = total_steps(cfg, spe)
    if run.sums is None:
        run.sums = torch.zeros(2, dtype=torch.float64, device=run.ctx.device)  # [sum of loss * n, correct]
    step = partial(train_step, run.net, run.optimizer, ctx=run.ctx)
    guard = FiniteGuard(run)
    graph = run.graph
    if graph is not None:  # the step keeps the lr index, the running sums and the non-finite record on the device
        graph.seek(run.step, run.sums)
        run.sums, guard.bad = graph.sums, graph.bad  # the loop's own, as far as progress and checkpoints see
    set_lrs = graph is None or graph.lrs is None  # else the captured step reads its lr from the table
    _sync_lr_table(run)
    own_ema = run.ema is not None and (graph is None or graph.ema is not run.ema)  # else updated inside the step
    run.net.train()
    tick = time.perf_counter()
    try:
        for images, labels in data.train.epoch(run.epoch, run.batch):
            if run.step >= total:
                break
            if set_lrs:
                set_lr(run.optimizer, run.lr(run.step))
            targets = labels
            if cfg.mixup > 0 or cfg.cutmix > 0:
                g = generator("cpu", cfg.seed, _MIX_STREAM, run.step)
                images, targets = mix_batch(images, labels, cfg, data.num_classes, g)
            if graph is not None:
                loss, logits = graph(images, targets, labels)
                if guard.every_step:
                    guard.raise_if_bad()
            else:
                loss, logits = step(images, targets, check_finite=guard)
                run.sums += torch.stack([loss.double() * len(labels), (logits.argmax(1) == labels).sum().double()])
            if own_ema:
                run.ema.update_parameters(run.model)
            run.seen, run.step, run.batch = run.seen + len(labels), run.step + 1, run.batch + 1
            if run.warming and judge_warmup(run, logits, labels):
                _sync_lr_table(run)
            if run.step % _FINITE_EVERY == 0:
                guard.raise_if_bad()
            if progress is not None:
                progress(run.batch, loss)
            if run.batch < spe and run.step < total and stop.check(run.step, run.dist):
                break
        guard.raise_if_bad()  # before the caller saves anything
    finally:
        run.epoch_seconds += time.perf_counter() - tick
    return run.batch >= spe or run.step >= total


# --- evaluation ----------------------------------------------------------------------------------------------------


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
    bar = _eval_bar(label, len(loader)) if label is not None and dist.main else None
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


def _eval_bar(label: str, batches: int):
    """A transient rich progress bar over ``batches`` evaluation batches, or None when stdout is no
    terminal (logs and pipes get only the epoch line)."""
    if not sys.stdout.isatty() or batches == 0:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
    bar.add_task(label, total=batches)
    return bar


# --- checkpoints of a run ------------------------------------------------------------------------------------------


def state_dict(run: RunState) -> dict[str, Any]:
    """The resumable state of ``run`` (only tensors and plain containers: loads with weights_only=True)."""
    return {
        "format": checkpoint.FORMAT,
        "meta": run.meta(),
        "config": run.cfg.to_dict(),
        "model": run.model.state_dict(),
        "optimizer": _plain_lr(run.optimizer.state_dict()),
        "scaler": run.ctx.scaler.state_dict(),
        "ema": run.ema.state_dict() if run.ema is not None else None,
        "position": {"epoch": run.epoch, "batch": run.batch, "step": run.step},
        "sums": run.sums.cpu() if run.sums is not None else None,
        "seen": run.seen,
        "epoch_seconds": run.epoch_seconds,
        "history": run.history,
        "best": dict(run.best),
        "train_seconds": run.train_seconds,
        "warmup": {"end": run.warmup_end, "errors": list(run.warmup_errors)},
        "rng": checkpoint.rng_state(),
    }


def _plain_lr(optimizer_state: dict[str, Any]) -> dict[str, Any]:
    """The optimizer's state with float learning rates (a --cuda-graph run holds them as device tensors), so any run
    can resume from it; the lr is set from :func:`lr_at` before every step anyway."""
    for group in optimizer_state["param_groups"]:  # state_dict() returns fresh group dicts: safe to change
        group["lr"] = float(group["lr"])
    return optimizer_state


def load_state(run: RunState, ckpt: dict[str, Any]) -> None:
    """Restore ``run`` from a ``last.pt`` dict (the inverse of :func:`state_dict`)."""
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.ctx.scaler.load_state_dict(ckpt["scaler"])
    if run.ema is not None:
        if ckpt["ema"] is None:
            raise CnnzooError("the checkpoint has no EMA weights; resume without --ema or start a new run")
        run.ema.load_state_dict(ckpt["ema"])
    pos = ckpt["position"]
    run.epoch, run.batch, run.step = pos["epoch"], pos["batch"], pos["step"]
    run.sums = ckpt["sums"].to(run.ctx.device) if ckpt["sums"] is not None else None
    run.seen, run.epoch_seconds = int(ckpt["seen"]), float(ckpt["epoch_seconds"])
    run.history = list(ckpt["history"])
    run.best = dict(ckpt["best"])
    run.train_seconds = float(ckpt["train_seconds"])
    run.run_id = ckpt["meta"].get("run_id")
    warmup = ckpt.get("warmup") or {}  # absent from checkpoints written before the warm-up rule
    run.warmup_end = None if warmup.get("end") is None else int(warmup["end"])
    run.warmup_errors = [float(e) for e in warmup.get("errors", [])]
    checkpoint.set_rng_state(ckpt["rng"])


def _save_best(run: RunState, weights: nn.Module, source: str) -> None:
    best = {
        "format": checkpoint.FORMAT,
        "meta": run.meta(),
        "config": run.cfg.to_dict(),
        "model": weights.state_dict(),
        "best": dict(run.best, weights=source),
    }
    checkpoint.save_atomic(best, run.run_dir / "best.pt")


def write_metrics(run: RunState) -> None:
    """Rewrite ``metrics.jsonl`` from the history (so a resumed run's file matches its checkpoint exactly)."""
    write_atomic(run.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in run.history))


# --- the whole run -------------------------------------------------------------------------------------------------


def _epoch_with_progress(run: RunState, stop: StopFlag, epoch_count: int, writer=None) -> bool:
    """:func:`train_one_epoch` with what watches it: a rich progress bar on a terminal (rank 0: loss, accuracy and
    images/s) and per-step TensorBoard scalars every ``cfg.log_every`` steps (:func:`_step_logger`)."""
    logger = _step_logger(run, writer)
    hooks = [logger] if logger is not None else []
    if not run.dist.main:
        return train_one_epoch(run, stop, _chain(hooks))
    if not sys.stdout.isatty():  # a log file or a pipe: a line now and then instead of a bar
        return train_one_epoch(run, stop, _chain([_progress_lines(run, epoch_count), *hooks]))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    spe, start, t0 = run.steps_per_epoch, run.batch, time.perf_counter()
    bar = Progress(
        TextColumn(f"epoch {run.epoch + 1}/{epoch_count}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        transient=True,
    )
    task = bar.add_task("train", total=min(spe, total_steps(run.cfg, spe) - run.step + start), completed=start, info="")

    def progress(b: int, loss: torch.Tensor) -> None:
        if b % 10 and b < spe:  # reading the sums waits for the device: only now and then
            bar.update(task, completed=b)
            return
        rate = (b - start) * run.data.train.batch_size * run.dist.world_size / (time.perf_counter() - t0)
        mean_loss, acc = (run.sums / max(run.seen, 1)).tolist()  # this epoch's running means
        bar.update(task, completed=b, info=f"loss {mean_loss:.4f}  acc {100 * acc:.1f}%  {rate:,.0f} img/s")

    with bar:
        return train_one_epoch(run, stop, _chain([progress, *hooks]))


PROGRESS_SECONDS = 30.0  # a progress line in a log at most this often (torchvision's reference prints every 10 steps)


def _progress_lines(run: RunState, epoch_count: int) -> Callable[[int, torch.Tensor], None]:
    """For a log or a pipe, where no bar shows: one line every ``PROGRESS_SECONDS`` inside an epoch (as
    torchvision's reference and timm log every N steps), with the epoch's running loss and accuracy, images/s and the
    time left for the epoch and for all training steps of the run (validation not counted). The running sums are
    read from the device only when a line is printed."""
    spe, start, t0 = run.steps_per_epoch, run.batch, time.perf_counter()
    total = total_steps(run.cfg, spe)
    last = {"time": t0}

    def progress(b: int, loss: torch.Tensor) -> None:
        now = time.perf_counter()
        if now - last["time"] < PROGRESS_SECONDS or b >= spe or run.step >= total:  # the epoch line follows
            return
        last["time"] = now
        per_step = (now - t0) / max(b - start, 1)
        rate = run.data.train.batch_size * run.dist.world_size / per_step
        mean_loss, acc = (run.sums / max(run.seen, 1)).tolist()
        epoch_left, run_left = (spe - b) * per_step, (total - run.step) * per_step
        run.log(
            f"epoch {run.epoch + 1}/{epoch_count}  batch {b}/{spe}  loss {mean_loss:.4f}  acc {100 * acc:.1f}%  "
            f"{rate:,.0f} img/s  eta epoch {_clock(epoch_left)}  training {_clock(run_left)}"
        )
        sys.stdout.flush()

    return progress


def _clock(seconds: float) -> str:
    """``1:02:03`` / ``2:05``: a duration as a clock reads."""
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _chain(hooks: list[Callable[[int, torch.Tensor], None]]) -> Callable[[int, torch.Tensor], None] | None:
    """One progress callback calling each of ``hooks`` (None for none: the loop then calls nothing)."""
    if not hooks:
        return None
    if len(hooks) == 1:
        return hooks[0]

    def call_all(b: int, loss: torch.Tensor) -> None:
        for hook in hooks:
            hook(b, loss)

    return call_all


def _step_logger(run: RunState, writer) -> Callable[[int, torch.Tensor], None] | None:
    """Per-step TensorBoard scalars (rank 0): ``train/loss`` (the step's objective), ``train/lr`` and
    ``train/images_per_s`` at every ``cfg.log_every``-th global step. The loss is read from the device only at those
    steps, so the other steps add no host sync; the lr is :func:`lr_at`'s (plain Python, what the step used)."""
    if writer is None:
        return None
    every = run.cfg.log_every
    images_per_step = run.data.train.batch_size * run.dist.world_size
    last = {"step": run.step, "time": time.perf_counter()}

    def log(b: int, loss: torch.Tensor) -> None:
        if run.step % every:
            return
        now = time.perf_counter()
        writer.add_scalar("train/loss", loss.item(), run.step)
        writer.add_scalar("train/lr", run.lr(run.step - 1), run.step)
        if now > last["time"] and run.step > last["step"]:
            rate = (run.step - last["step"]) * images_per_step / (now - last["time"])
            writer.add_scalar("train/images_per_s", rate, run.step)
        last.update(step=run.step, time=now)

    return log


def early_stopped(run: RunState) -> bool:
    """True when ``--early-stop`` patience is spent: the last ``cfg.early_stop`` validated epochs (from the history,
    so a resumed run decides exactly as the uninterrupted one) all came after the best one without beating it."""
    patience = run.cfg.early_stop
    if not patience or run.best["epoch"] < 1:
        return False
    since = [r for r in run.history if r["epoch"] > run.best["epoch"] and r.get("val_top1") is not None]
    return len(since) >= patience


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
            if not _epoch_with_progress(run, stop, epochs, writer):
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
            _save_best(run, new_best[1], new_best[0])
        checkpoint.save_atomic(state_dict(run), run.run_dir / "last.pt")
        record["save_seconds"] = round(time.perf_counter() - tick, 3)
        write_metrics(run)
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
            checkpoint.save_atomic(state_dict(run), run.run_dir / "last.pt")
            write_metrics(run)
        where = run.run_dir if run.run_dir is not None else "RUN_DIR"
        run.log(
            f"{stop.reason or 'stopped'}: saved epoch {run.epoch + 1} batch {run.batch} (step {run.step}) to "
            f"{where}/last.pt; resume with: cnnzoo train --resume {where}"
        )
    return {"interrupted": True, "reason": stop.reason, "signal": stop.signum}
