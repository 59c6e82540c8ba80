"""What a study will run and how long it will take, said before it starts; its progress while it runs.

The estimate times a few real training steps of each model on the study's device and data (after one untimed step
that pays for cudnn's autotuning and the allocator), then multiplies by the steps every unfinished run has left;
validation is counted at one third of a training step per image (a forward pass only). Runs trained ``jobs`` at a
time on a GPU overlap; on a CPU they share the same cores, so there the estimate is the plain sum.
"""

from __future__ import annotations

import datetime
import threading
import time
from dataclasses import dataclass, field

import torch

from cnnzoo.analysis.study.runs import Run, StopSignal, check_reuse, interrupted, needs_training, train_all

HOUR = 3600.0
TIMED_STEPS = 3


def hms(seconds: float) -> str:
    """``1:02:03`` (whole seconds)."""
    return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


@dataclass
class Plan:
    """Each run's length and the timed seconds per step of each model, on the study's device."""

    device: torch.device
    train_images: int
    val_images: int
    in_channels: int
    image_size: int
    num_classes: int
    step_seconds: dict[str, float] = field(default_factory=dict)

    def length(self, run: Run) -> tuple[int, int]:
        """(epochs, steps) of ``run``."""
        from cnnzoo.train.schedule import num_epochs, total_steps

        spe = max(1, self.train_images // run.config.batch_size)
        return num_epochs(run.config, spe), total_steps(run.config, spe)

    def seconds_left(self, run: Run) -> float:
        """Estimated seconds ``run`` still needs (0 when finished): its steps and validations left."""
        if not needs_training(run) or run.config.model not in self.step_seconds:
            return 0.0
        epochs, steps = self.length(run)
        history = run.history()
        done_steps, done_epochs = (history[-1]["step"], len(history)) if history else (0, 0)
        per_step = self.step_seconds[run.config.model]
        if history and done_steps:  # measured on this run beats the few timed steps
            per_step = sum(h["seconds"] for h in history) / done_steps
        per_eval = self.val_images / run.config.batch_size * per_step / 3  # a forward pass per image
        return (steps - done_steps) * per_step + (epochs - done_epochs) * per_eval

    def wall_seconds(self, runs: list[Run], jobs: int) -> float:
        """The study's estimated wall time: the sum over runs, divided by ``jobs`` on a GPU."""
        total = sum(self.seconds_left(r) for r in runs)
        return total / max(1, min(jobs, len(runs))) if self.device.type == "cuda" else total


def make_plan(runs: list[Run], stop: StopSignal) -> Plan:
    """Load the study's data once on its device and time a few steps of each model that still has to train."""
    from cnnzoo.train.engine import backend_settings, resolve_device
    from cnnzoo.train.loop import Dist
    from cnnzoo.train.run import load_bundle

    cfg = runs[0].config
    device = resolve_device(cfg.device)
    bundle = load_bundle(cfg, device, Dist())
    plan = Plan(
        device,
        bundle.train.num_samples,
        bundle.val.num_samples,
        bundle.in_channels,
        bundle.image_size,
        bundle.num_classes,
    )
    images, labels = next(iter(bundle.train.epoch(0)))
    for run in runs:
        model = run.config.model
        if model in plan.step_seconds or stop.reason or not needs_training(run):
            continue
        with backend_settings(run.config, device):
            plan.step_seconds[model] = time_steps(run.config, bundle, images, labels, device)
    del bundle, images, labels
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the runs (this process's or spawned ones) need the memory, not this cache
    return plan


def time_steps(cfg, bundle, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> float:
    """Seconds per training step of ``cfg``'s model at its batch size: the trainer's step, timed."""
    from cnnzoo.train.engine import make_optimizer, step_context, train_step, use_channels_last
    from cnnzoo.train.run import build_model

    model = build_model(cfg, bundle.num_classes, bundle.in_channels).to(device)
    if use_channels_last(cfg, device):
        model = model.to(memory_format=torch.channels_last)
    optimizer, ctx = make_optimizer(model, cfg, device), step_context(cfg, device)
    model.train()
    train_step(model, optimizer, images, labels, ctx)  # untimed: autotuning, allocation
    _sync(device)
    start = time.perf_counter()
    for _ in range(TIMED_STEPS):
        train_step(model, optimizer, images, labels, ctx)
    _sync(device)
    return (time.perf_counter() - start) / TIMED_STEPS


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe(study: str, runs: list[Run], plan: Plan, jobs: int) -> list[str]:
    """The lines a study prints before it starts: what it runs, how much is reused, and how long it should take."""
    cfg = runs[0].config
    epochs, steps = plan.length(runs[0])
    models = ", ".join(dict.fromkeys(r.config.model for r in runs))
    seeds = ", ".join(map(str, dict.fromkeys(r.config.seed for r in runs)))
    finished = sum(not needs_training(r) for r in runs)
    resumed = sum(r.started and needs_training(r) for r in runs)
    at_once = f", {min(jobs, len(runs))} at a time" if jobs > 1 else ""
    lines = [
        f"study {study}: {len(runs)} runs ({models}; seed {seeds}) of recipe {cfg.recipe} on {cfg.data}: "
        f"{epochs} epochs = {steps:,} iterations of batch {cfg.batch_size} each, on {plan.device}{at_once}",
        f"  {finished} finished (reused), {resumed} to resume, {len(runs) - finished - resumed} to train",
    ]
    wall = plan.wall_seconds(runs, jobs)
    timed = ", ".join(f"{m} {1e3 * s:.1f} ms" for m, s in plan.step_seconds.items())
    how = f"from {TIMED_STEPS} timed steps per model: {timed}" if timed else "nothing left to train"
    overlap = "; runs sharing the GPU assumed to overlap fully" if jobs > 1 and plan.device.type == "cuda" else ""
    lines.append(f"estimated time: {hms(wall)} on {plan.device} ({how}{overlap})")
    if wall > HOUR:
        lines.append(
            f"warning: this study should take more than an hour ({hms(wall)}); shorten it with --epochs, "
            "--iterations or --subset, or stop it at any time and run the same command again to resume"
        )
    return lines


class Progress:
    """Prints a line when a run starts and when one of the running runs ends an epoch: runs done, that run's epoch,
    and the study's ETA. Polls the runs' ``metrics.jsonl`` (so it works for runs in other processes too)."""

    def __init__(self, runs: list[Run], plan: Plan, jobs: int, log=print, every: float = 2.0) -> None:
        """``log`` takes one line of text."""
        self.runs, self.plan, self.jobs, self.log, self.every = runs, plan, jobs, log, every
        self.active: dict[int, tuple[Run, int]] = {}  # id(run) -> (run, epochs seen)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.poll()

    def start(self, run: Run) -> None:
        done = sum(r.finished for r in self.runs)
        verb = "resuming" if run.started else "training"
        self.log(f"[{done}/{len(self.runs)} runs done] {verb} {run.name} -> {run.run_dir}")
        self.active[id(run)] = (run, len(run.history()))

    def poll(self) -> None:
        for key, (run, seen) in list(self.active.items()):
            history = run.history()
            if len(history) != seen:
                self.active[key] = (run, len(history))
                epochs, _ = self.plan.length(run)
                done = sum(r.finished for r in self.runs)
                eta = hms(self.plan.wall_seconds(self.runs, self.jobs))
                self.log(
                    f"[{done}/{len(self.runs)} runs done] {run.name}: epoch {len(history)}/{epochs}, study ETA {eta}"
                )
            if run.finished:
                del self.active[key]

    def _loop(self) -> None:
        while not self._done.wait(self.every):
            self.poll()


def execute(
    study: str, runs: list[Run], *, jobs: int = 1, overwrite: bool = False, stop_after: int | None = None, log=print
) -> Plan:
    """Check every run against the folder, say what will run and how long it should take, then train what is left,
    with progress lines; Ctrl-C / SIGTERM at any point raises :class:`StudyInterrupted` (one resume hint)."""
    check_reuse(runs, overwrite=overwrite)
    with StopSignal() as stop:
        plan = make_plan(runs, stop)
        for line in describe(study, runs, plan, jobs):
            log(line)
        if stop.reason:
            raise interrupted(stop.reason, runs)
        with Progress(runs, plan, jobs, log) as progress:
            train_all(runs, jobs=jobs, stop=stop, stop_after=stop_after, progress=progress)
    return plan
