"""What watches an epoch without changing it: a rich progress bar on a terminal, a line now and then in a log or a
pipe, and per-step TensorBoard scalars. :func:`watch_epoch` hands :func:`cnnzoo.train.loop.train_one_epoch` one
``progress(batch, loss)`` callback; everything here reads the run, nothing writes to it."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

from cnnzoo.train.schedule import total_steps

if TYPE_CHECKING:
    from cnnzoo.train.state import RunState

Progress = Callable[[int, torch.Tensor], None]  # (the batch just trained, 1-based within the epoch; its loss)
PROGRESS_SECONDS = 30.0  # a progress line in a log at most this often (torchvision's reference prints every 10 steps)


@contextlib.contextmanager
def watch_epoch(run: RunState, epoch_count: int, writer=None) -> Iterator[Progress | None]:
    """The progress callback for the epoch about to train (None when nothing watches): on rank 0 a transient rich
    bar on a terminal (loss, accuracy, images/s) or :func:`progress_lines` off one, and per-step TensorBoard scalars
    every ``cfg.log_every`` steps (:func:`step_logger`)."""
    hooks = [h for h in (step_logger(run, writer),) if h is not None]
    if not run.dist.main:
        yield chain(hooks)
    elif not sys.stdout.isatty():  # a log file or a pipe: a line now and then instead of a bar
        yield chain([progress_lines(run, epoch_count), *hooks])
    else:
        bar, update = _epoch_bar(run, epoch_count)
        with bar:
            yield chain([update, *hooks])


def _epoch_bar(run: RunState, epoch_count: int):
    """A rich bar over the epoch's batches and the callback that moves it."""
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

    def update(b: int, loss: torch.Tensor) -> None:
        if b % 10 and b < spe:  # reading the sums waits for the device: only now and then
            bar.update(task, completed=b)
            return
        rate = (b - start) * run.data.train.batch_size * run.dist.world_size / (time.perf_counter() - t0)
        mean_loss, acc = (run.sums / max(run.seen, 1)).tolist()  # this epoch's running means
        bar.update(task, completed=b, info=f"loss {mean_loss:.4f}  acc {100 * acc:.1f}%  {rate:,.0f} img/s")

    return bar, update


def progress_lines(run: RunState, epoch_count: int) -> Progress:
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
            f"{rate:,.0f} img/s  eta epoch {clock(epoch_left)}  training {clock(run_left)}"
        )
        sys.stdout.flush()

    return progress


def clock(seconds: float) -> str:
    """``1:02:03`` / ``2:05``: a duration as a clock reads."""
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def chain(hooks: list[Progress]) -> Progress | None:
    """One progress callback calling each of ``hooks`` (None for none: the loop then calls nothing)."""
    if not hooks:
        return None
    if len(hooks) == 1:
        return hooks[0]

    def call_all(b: int, loss: torch.Tensor) -> None:
        for hook in hooks:
            hook(b, loss)

    return call_all


def step_logger(run: RunState, writer) -> Progress | None:
    """Per-step TensorBoard scalars (rank 0): ``train/loss`` (the step's objective), ``train/lr`` and
    ``train/images_per_s`` at every ``cfg.log_every``-th global step. The loss is read from the device only at those
    steps, so the other steps add no host sync; the lr is :func:`~cnnzoo.train.schedule.lr_at`'s (plain Python, what
    the step used)."""
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


def eval_bar(label: str, batches: int):
    """A transient rich progress bar over ``batches`` evaluation batches, or None when stdout is no
    terminal (logs and pipes get only the epoch line)."""
    if not sys.stdout.isatty() or batches == 0:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
    bar.add_task(label, total=batches)
    return bar
