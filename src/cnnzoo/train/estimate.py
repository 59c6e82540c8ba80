"""How long a run will take, said before its first step: a short timed probe of real steps.

:func:`probe` runs a few optimizer steps and evaluation batches of the run itself (its model, optimizer, data and
device) and puts everything back as it was (weights, buffers, optimizer and scaler state, the global RNGs), so a
run with the probe trains exactly as one without it. :func:`announce` turns the timing into the one ``estimate:``
line ``cnnzoo train`` prints: the whole run's wall time (training steps, every validation pass and the final test),
and, when that is long on a CPU, what would make it shorter.

:func:`time_steps` is the one timer of training steps: this probe, a study's estimate
(:func:`cnnzoo.analysis.study.plan.time_model`) and ``compare --train-budget``'s probe
(:func:`cnnzoo.analysis.compare.budget.probe`) all time the trainer's step through it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from cnnzoo.train import checkpoint
from cnnzoo.train.engine import sync, train_step
from cnnzoo.train.schedule import num_epochs, total_steps

if TYPE_CHECKING:
    from torch import nn

    from cnnzoo.train.engine import StepContext
    from cnnzoo.train.state import RunState

LONG_ON_CPU = 15 * 60.0  # seconds: a run longer than this on a CPU gets a suggestion
_PROBE_SECONDS = 5.0  # time the probe's steps for about this long (at least one step after the warm-up)
_PROBE_STEPS = 3  # ... and at most this many timed steps
_WARMUP = 1  # untimed steps first: lazy initialisation, cuDNN autotuning, DataLoader workers starting
SHORT_RECIPE = "resnet-cifar-short"  # the lesson recipe suggested for long CIFAR runs on a CPU


@dataclass
class Estimate:
    """A probe's timings and what they add up to for the rest of a run.

    ``step_seconds``: one training step (data included); ``eval_batch_seconds``: one evaluation batch;
    ``steps``: training steps left; ``eval_batches``: evaluation batches left (every validation pass, EMA's too,
    and the final test); ``epochs``: epochs left (counting the one in progress).
    """

    step_seconds: float
    eval_batch_seconds: float
    steps: int
    eval_batches: int
    epochs: int
    device: str

    @property
    def seconds(self) -> float:
        """The whole rest of the run, in seconds (checkpoint writes not counted)."""
        return self.steps * self.step_seconds + self.eval_batches * self.eval_batch_seconds

    def seconds_for(self, steps: int, eval_batches: int) -> float:
        """The same timings applied to another length of run."""
        return steps * self.step_seconds + eval_batches * self.eval_batch_seconds


def format_seconds(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.4 h``: a duration as a reader says it."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{max(seconds, 0):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _eval_passes(run: RunState, stop: int) -> int:
    """Validation batches left when training stops at step ``stop``: every ``eval_every``-th epoch and the last
    (``loop._validate_now``) that ends by then, twice with EMA (its weights are validated too)."""
    cfg, spe = run.cfg, run.steps_per_epoch
    if run.data.val.num_samples == 0:
        return 0
    last = num_epochs(cfg, spe)
    ends = [e for e in range(run.epoch + 1, last + 1) if min(e * spe, total_steps(cfg, spe)) <= stop]
    passes = sum(1 for e in ends if e == last or e % cfg.eval_every == 0)
    return passes * (2 if run.ema is not None else 1) * len(run.data.val)


def _snapshot(run: RunState) -> dict[str, Any]:
    """Copies (on the CPU, so a GPU run needs no second copy of its weights there) of what a step changes."""
    opt_state = {
        p: {k: (v.detach().to("cpu", copy=True), v.device) if isinstance(v, torch.Tensor) else v for k, v in s.items()}
        for p, s in run.optimizer.state.items()
    }
    return {
        "model": {k: v.detach().to("cpu", copy=True) for k, v in run.model.state_dict().items()},
        "optimizer": opt_state,
        "scaler": run.ctx.scaler.state_dict(),
        "rng": checkpoint.rng_state(),
    }


@torch.no_grad()
def _restore(run: RunState, saved: dict[str, Any]) -> None:
    """Put back what :func:`_snapshot` copied, in place: the tensors the run (and a CUDA graph captured later)
    holds stay the same objects."""
    for k, v in run.model.state_dict().items():
        v.copy_(saved["model"][k])
    state = run.optimizer.state
    for p in list(state):
        if p not in saved["optimizer"]:
            del state[p]  # created by the probe's first step (e.g. SGD's momentum buffer)
            continue
        for k, v in saved["optimizer"][p].items():
            old = state[p].get(k)
            if not isinstance(v, tuple):
                state[p][k] = v
            elif isinstance(old, torch.Tensor) and old.shape == v[0].shape:
                old.copy_(v[0])
            else:
                state[p][k] = v[0].to(v[1])
    run.optimizer.zero_grad(set_to_none=True)
    run.ctx.scaler.load_state_dict(saved["scaler"])
    checkpoint.set_rng_state(saved["rng"])


@dataclass
class StepTimes:
    """Wall seconds of each step :func:`time_steps` took: the untimed warm-up steps, then the timed ones."""

    warmup: list[float]
    timed: list[float]


def time_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ctx: StepContext,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    warmup: int,
    steps: int,
    seconds: float = 0.0,
    most: int | None = None,
) -> StepTimes:
    """Time the trainer's step (:func:`train_step` of ``model``, ``optimizer``, ``ctx``) on ``batches``.

    ``warmup`` steps first, untimed (lazy initialisation, cuDNN autotuning, oneDNN kernel creation, the allocator,
    DataLoader workers starting), then timed ones: at least ``steps``, then on until they add up to ``seconds``, at
    most ``most`` (fewer when ``batches`` end; ``steps`` is at least 1). Each step is timed from the end of the one
    before, the device synchronised at both ends, so fetching its batch counts, as it does in the loop's own clock.
    Closes ``batches`` (:func:`_close`). Changes the weights and the optimizer state: a caller that trains on
    afterwards puts them back (:func:`probe`).
    """
    times, timed_seconds = StepTimes([], []), 0.0
    try:
        tick = time.perf_counter()
        for images, labels in batches:
            train_step(model, optimizer, images, labels, ctx)
            sync(ctx.device)
            now = time.perf_counter()
            if len(times.warmup) < warmup:
                times.warmup.append(now - tick)
            else:
                times.timed.append(now - tick)
                timed_seconds += now - tick
            tick = now
            done = len(times.timed) >= max(1, steps) and timed_seconds >= seconds
            if done or (most is not None and len(times.timed) >= most):
                break
    finally:
        _close(batches)
    return times


def _close(batches: Iterable) -> None:
    """Close an epoch's batches when they can be (a streaming loader's workers stop)."""
    close = getattr(batches, "close", None)
    if close is not None:
        close()


def _time_train(run: RunState) -> float:
    """Seconds per training step: real batches from where the run stands, through :func:`train_step`."""
    # Under DDP every rank must take the same steps (each one all-reduces): a count, not a clock, ends it.
    seconds = _PROBE_SECONDS if run.dist.world_size == 1 else math.inf
    batches = run.data.train.epoch(run.epoch, run.batch)
    times = time_steps(
        run.net, run.optimizer, run.ctx, batches, warmup=_WARMUP, steps=1, seconds=seconds, most=_PROBE_STEPS
    )
    if times.timed:
        return sum(times.timed) / len(times.timed)
    return times.warmup[0] if times.warmup else 0.0  # an epoch as short as the warm-up: its step is all there is


@torch.no_grad()
def _time_eval(run: RunState, loader) -> float:
    """Seconds per evaluation batch of ``loader`` (forward only, eval mode)."""
    device, model, times = run.ctx.device, run.model, []
    was_training = model.training
    model.eval()
    batches = loader.epoch(0)
    try:
        tick = time.perf_counter()
        for i, (images, _) in enumerate(batches):
            with run.ctx.autocast():
                model(run.ctx.layout(images))
                if run.ctx.tta_flip:  # the flipped view is a second forward (loop.evaluate)
                    model(run.ctx.layout(images.flip(3)))
            sync(device)
            now = time.perf_counter()
            if i >= _WARMUP or len(loader) <= _WARMUP:
                times.append(now - tick)
            tick = now
            if len(times) >= 2:
                break
    finally:
        model.train(was_training)
        _close(batches)
    return sum(times) / len(times) if times else 0.0


def probe(run: RunState, *, stop_after: int | None = None) -> Estimate | None:
    """Time a few real steps and evaluation batches of ``run`` and return what the rest of it will take (None when
    nothing is left to train). Leaves the run exactly as it found it."""
    cfg, data, spe = run.cfg, run.data, run.steps_per_epoch
    total = total_steps(cfg, spe)
    if stop_after is not None:
        total = min(total, stop_after)
    if spe == 0 or run.step >= total:
        return None
    saved = _snapshot(run)
    run.net.train()
    try:
        step_seconds = _time_train(run)
        eval_loader = data.val if data.val.num_samples else data.test
        eval_seconds = _time_eval(run, eval_loader) if eval_loader.num_samples else 0.0
    finally:
        _restore(run, saved)
    steps = total - run.step
    stopping_early = total < total_steps(cfg, spe)  # --stop-after: no final test
    eval_batches = _eval_passes(run, total) + (0 if stopping_early else len(data.test))
    epochs = math.ceil(total / spe) - run.epoch
    return Estimate(step_seconds, eval_seconds, steps, eval_batches, epochs, run.ctx.device.type)


def _suggestion(run: RunState, est: Estimate) -> str:
    """What makes a run that is long on a CPU shorter: fewer epochs (with their time), a smaller net, the lesson
    recipe (for 32x32 data, when it is shipped)."""
    from cnnzoo.train.config import recipes_dir

    cfg, spe = run.cfg, run.steps_per_epoch
    tips = []
    if cfg.iterations == 0 and cfg.epochs > 1:
        few = max(1, min(cfg.epochs // 10, 5))
        val = len(run.data.val) * few * (2 if run.ema is not None else 1) if run.data.val.num_samples else 0
        tips.append(f"--epochs {few} (about {format_seconds(est.seconds_for(few * spe, val + len(run.data.test)))})")
    small = "resnet20" if run.data.image_size <= 64 else "resnet18"
    if cfg.model != small:
        tips.append(f"a smaller net ({small})")
    if run.data.image_size <= 64 and (recipes_dir() / f"{SHORT_RECIPE}.toml").is_file() and cfg.recipe != SHORT_RECIPE:
        tips.append(f"the lesson recipe (--recipe {SHORT_RECIPE})")
    return "; long for a CPU: try " + ", ".join(tips) if tips else ""


def estimate_line(run: RunState, est: Estimate) -> str:
    """The one ``estimate:`` line for ``est``."""
    parts = [f"{est.steps:,} steps x {1000 * est.step_seconds:,.0f} ms"]
    if est.eval_batches:
        parts.append(f"{est.eval_batches:,} evaluation batches x {1000 * est.eval_batch_seconds:,.0f} ms")
    epochs = f" for {est.epochs} epoch{'s' if est.epochs != 1 else ''}" if run.cfg.iterations == 0 else ""
    line = f"estimate: about {format_seconds(est.seconds)}{epochs} on {est.device} ({', '.join(parts)}; timed now)"
    if est.device == "cpu" and est.seconds > LONG_ON_CPU:
        line += _suggestion(run, est)
    return line


def announce(run: RunState, *, stop_after: int | None = None) -> Estimate | None:
    """Probe ``run`` (every DDP rank takes part, in step) and log its ``estimate:`` line (rank 0)."""
    est = probe(run, stop_after=stop_after)
    if est is not None:
        run.log(estimate_line(run, est))
    return est
