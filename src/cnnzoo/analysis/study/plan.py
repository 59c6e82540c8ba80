"""What a study will run and how long it will take, said before it starts; its progress while it runs.

The estimate times a few real training steps and evaluation batches of each model on the study's device and data
(after untimed ones that pay for kernel selection and the allocator), then multiplies by the steps every unfinished
run has left, its validations and its one test pass. Runs trained ``jobs`` at a time on a GPU overlap; on a CPU they
share the same cores, so there the estimate is the plain sum. A study set up too short to show its finding says so
in a ``caution:`` line naming the lesson recipe.
"""

from __future__ import annotations

import datetime
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used, so `cnnzoo --help` needs no torch
    import torch

from cnnzoo.analysis.study.runs import Run, StopSignal, check_reuse, interrupted, needs_training, train_all

HOUR = 3600.0
TIMED_STEPS = 3
# Untimed steps first: they pay for cudnn's autotuning, oneDNN's kernel creation and the allocator. With bf16 on a
# CPU the first two steps of resnet20 measured 5-10x a later one, and one untimed step made an 8.8-hour estimate
# of a study that ran in under two.
UNTIMED_STEPS = 3
LESSON_RECIPE = "resnet-cifar-short"  # the shortest protocol measured to show He et al.'s findings (docs/benchmarks.md)


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
    test_images: int = 0
    eval_seconds: dict[str, float] = field(default_factory=dict)  # per evaluation image (forward only), timed

    def length(self, run: Run) -> tuple[int, int]:
        """(epochs, steps) of ``run``."""
        from cnnzoo.train.schedule import num_epochs, total_steps

        spe = max(1, self.train_images // run.config.batch_size)
        return num_epochs(run.config, spe), total_steps(run.config, spe)

    def seconds_left(self, run: Run, scale: float = 1.0) -> float:
        """Estimated seconds ``run`` still needs (0 when finished): its steps, validations and test pass left;
        ``scale`` corrects the timed steps of a run not yet started (:meth:`probe_scale`)."""
        if not needs_training(run) or run.config.model not in self.step_seconds:
            return 0.0
        epochs, steps = self.length(run)
        history = run.history()
        done_steps, done_epochs = (history[-1]["step"], len(history)) if history else (0, 0)
        model, bs = run.config.model, run.config.batch_size
        per_step = self.step_seconds[model] * scale
        per_image = self.eval_seconds.get(model, per_step / bs / 3)  # untimed: a forward pass, a third of a step
        if history and done_steps:  # measured on this run beats the few timed steps
            per_step = sum(h["seconds"] for h in history) / done_steps
            evals = [h for h in history if h.get("eval_seconds") and h.get("val_top1") is not None]
            if evals and self.val_images:
                per_image = sum(h["eval_seconds"] for h in evals) / len(evals) / self.val_images
        validations = len(range(done_epochs + 1, epochs + 1))  # every epoch: the default --eval-every 1
        if run.config.eval_every > 1:
            every = run.config.eval_every
            validations = sum(e % every == 0 or e == epochs for e in range(done_epochs + 1, epochs + 1))
        evaluated = validations * self.val_images + self.test_images
        return (steps - done_steps) * per_step + evaluated * per_image

    def probe_scale(self, runs: list[Run]) -> float:
        """Measured over timed seconds per step, the median over the runs that have ended an epoch (1 before any
        has): what the few timed steps missed (the loop around the step, a busy machine), applied to the runs that
        have not started, so the ETA improves as the study runs."""
        ratios = []
        for run in runs:
            history = run.history()
            if history and history[-1]["step"] and self.step_seconds.get(run.config.model):
                measured = sum(h["seconds"] for h in history) / history[-1]["step"]
                ratios.append(measured / self.step_seconds[run.config.model])
        return statistics.median(ratios) if ratios else 1.0

    def wall_seconds(self, runs: list[Run], jobs: int) -> float:
        """The study's estimated wall time: the sum over runs, divided by ``jobs`` on a GPU."""
        scale = self.probe_scale(runs)
        total = sum(self.seconds_left(r, scale) for r in runs)
        return total / max(1, min(jobs, len(runs))) if self.device.type == "cuda" else total


def make_plan(runs: list[Run], stop: StopSignal) -> Plan:
    """Load the study's data once on its device and time a few steps of each model that still has to train."""
    import torch

    from cnnzoo.train.distributed import Dist
    from cnnzoo.train.engine import backend_settings, resolve_device
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
        test_images=bundle.test.num_samples,
    )
    images, labels = next(iter(bundle.train.epoch(0)))
    for run in runs:
        model = run.config.model
        if model in plan.step_seconds or stop.reason or not needs_training(run):
            continue
        with backend_settings(run.config, device):
            plan.step_seconds[model], plan.eval_seconds[model] = time_model(run.config, bundle, images, labels, device)
    del bundle, images, labels
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the runs (this process's or spawned ones) need the memory, not this cache
    return plan


def time_model(cfg, bundle, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> tuple[float, float]:
    """(seconds per training step of ``cfg``'s model at its batch size, seconds per evaluated image): the trainer's
    step on one batch (:func:`cnnzoo.train.estimate.time_steps`) and an evaluation forward pass (no gradients, eval
    mode, the run's precision), timed."""
    import itertools

    import torch

    from cnnzoo.train.engine import make_optimizer, step_context, sync, use_channels_last
    from cnnzoo.train.estimate import time_steps
    from cnnzoo.train.run import build_model

    model = build_model(cfg, bundle.num_classes, bundle.in_channels).to(device)
    if use_channels_last(cfg, device):
        model = model.to(memory_format=torch.channels_last)
    optimizer, ctx = make_optimizer(model, cfg, device), step_context(cfg, device)
    model.train()
    batches = itertools.repeat((images, labels))  # the same batch each step: no loading in the time
    times = time_steps(model, optimizer, ctx, batches, warmup=UNTIMED_STEPS, steps=TIMED_STEPS, most=TIMED_STEPS)
    step = sum(times.timed) / TIMED_STEPS
    model.eval()
    with torch.no_grad(), ctx.autocast():
        for _ in range(2):  # the second pass is timed: the first selects the eval kernels
            sync(device)
            start = time.perf_counter()
            model(ctx.layout(images))
            sync(device)
    return step, (time.perf_counter() - start) / len(images)


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
    evals = "validation each epoch and one test pass included"
    lines.append(f"estimate: {hms(wall)} on {plan.device} ({how}; {evals}{overlap})")
    if wall > HOUR:
        lesson = "" if cfg.recipe == LESSON_RECIPE else f", or on a CPU the lesson: --recipe {LESSON_RECIPE}"
        lines.append(
            f"warning: this study should take more than an hour ({hms(wall)}); stop it at any time and run the same "
            f"command again to resume{lesson}"
        )
    warn = caution(study, runs, plan)
    return lines + ([warn] if warn else [])


def caution(study: str, runs: list[Run], plan: Plan) -> str | None:
    """One line starting ``caution:`` when the study is set up shorter than what can show its finding: fewer steps
    than the lesson recipe (:data:`LESSON_RECIPE`, the shortest measured to show both of He et al.'s findings on
    CIFAR-10), or a training subset (fewer images change what the nets can learn, not only how long)."""
    from cnnzoo.train.config import recipe_values

    cfg = runs[0].config
    _, steps = plan.length(runs[0])
    lesson = recipe_values(LESSON_RECIPE, cfg.model)
    lesson_steps = lesson["epochs"] * (plan.train_images // lesson["batch_size"])
    short = [f"{steps:,} iterations ({100 * steps / 64_000:.2g} % of the paper's 64k)"] if steps < lesson_steps else []
    if cfg.subset:
        short.append(f"a --subset of {plan.train_images:,} training images")
    if not short:
        return None
    finding = {"degradation": "both findings of He et al. (Figure 6)", "depth": "what depth buys"}.get(study, study)
    return (
        f"caution: {' and '.join(short)} cannot show {finding}; the lesson protocol that does: cnnzoo study "
        f"degradation --depths 20,56 --recipe {LESSON_RECIPE} (all of CIFAR-10, {lesson_steps:,} iterations)"
    )


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
