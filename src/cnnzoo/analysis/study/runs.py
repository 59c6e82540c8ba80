"""The training runs of a study: which are asked for, which can be reused, and training the rest, resumably.

A run lives in ``OUT/<model>/seed-<K>`` as a trainer run directory. Before anything trains, every run already in the
folder is checked against the configuration asked for (model, data, recipe, every override, seed): a finished run
(``report.json``) is reused and an unfinished one (``last.pt``) resumed only if they are equal; otherwise the study
stops with one line naming the difference, or, with ``overwrite``, retrains it. So a quick look followed by a full
run into the same folder can never print the quick look's numbers.

Ctrl-C or SIGTERM stops every run at its current step with ``last.pt`` written (the trainer's own stop), and the
study raises :class:`StudyInterrupted` with one resume hint; running the same command again loses nothing.
"""

from __future__ import annotations

import json
import multiprocessing
import signal
import threading
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from cnnzoo.errors import CnnzooError
from cnnzoo.train.config import RESUME_OVERRIDES, TrainConfig, build_config, read_config

# Where and how fast a run trains, not what it computes: a stored run may differ from the asked one in these.
PLACE_FIELDS = ("device", "threads", "compile", "compile_mode", "data_dir", "download", "label")


class StudyInterrupted(CnnzooError):
    """Ctrl-C / SIGTERM (or ``stop_after``): every unfinished run is saved at its last step."""

    exit_code = 130


@dataclass
class Run:
    """One training run of a study: what is asked for and where it lives."""

    config: TrainConfig
    run_dir: Path

    @property
    def name(self) -> str:
        return f"{self.config.model} seed {self.config.seed}"

    @property
    def finished(self) -> bool:
        return (self.run_dir / "report.json").is_file()

    @property
    def started(self) -> bool:
        return (self.run_dir / "last.pt").is_file()

    def report(self) -> dict[str, Any]:
        """The run's ``report.json``, checked (:func:`~cnnzoo.train.trained.read_report`, and the numbers a study
        reads); a malformed one, edited or damaged, is one line."""
        from cnnzoo.train.trained import read_report

        path = self.run_dir / "report.json"
        report = read_report(path)
        numbers = {"best_val_top1": report.get("best_val_top1"), "train_seconds": report.get("train_seconds")}
        bad = [k for k, v in numbers.items() if not _number(v, none=k == "best_val_top1")]
        if bad:
            raise CnnzooError(
                f"{path}: not a cnnzoo report ({bad[0]} is not a number): remove its folder to retrain it"
            )
        return report

    def history(self) -> list[dict[str, Any]]:
        """The per-epoch lines of ``metrics.jsonl`` (none before the first epoch ends); a line that is not a JSON
        object is one error naming the file."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return []
        try:
            lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CnnzooError(f"{path}: not a cnnzoo metrics file ({str(e).splitlines()[0]})") from None
        if not all(isinstance(line, dict) for line in lines):
            raise CnnzooError(f"{path}: not a cnnzoo metrics file (a line is not a JSON object)")
        return lines


def _number(value: Any, *, none: bool = False) -> bool:
    """A finite int or float (not a bool); None too with ``none``."""
    if value is None:
        return none
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and value == value
        and abs(value) != float("inf")
    )


def plan_runs(
    models: list[str],
    seeds: list[int],
    out: Path,
    *,
    data: str,
    recipe: str,
    data_dir: str | None = None,
    overrides: dict | None = None,
) -> list[Run]:
    """One :class:`Run` per (model, seed), in ``out/<model>/seed-<seed>``, with its fully resolved config."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    return [
        Run(
            build_config(m, data, recipe=recipe, data_dir=data_dir, **{"label": f"{m} seed {s}", **given, "seed": s}),
            out / m / f"seed-{s}",
        )
        for m in models
        for s in seeds
    ]


def config_difference(stored: dict[str, Any], asked: dict[str, Any]) -> list[str]:
    """``"key: A there, B asked"`` for every field (but :data:`PLACE_FIELDS`) where a stored config differs."""
    keys = [k for k in asked if k not in PLACE_FIELDS and stored.get(k) != asked[k]]
    return [f"{k}: {stored.get(k)!r} there, {asked[k]!r} asked" for k in keys]


def check_reuse(runs: list[Run], *, overwrite: bool = False) -> None:
    """Refuse (one line) a run folder that holds a run of another configuration, unless ``overwrite``.

    A folder with a ``config.toml`` but neither checkpoint nor report (stopped before its first epoch ended) holds
    nothing to lose and is trained afresh.
    """
    for run in runs:
        if not (run.finished or run.started):
            continue
        diff = config_difference(read_config(run.run_dir / "config.toml").to_dict(), run.config.to_dict())
        if diff and not overwrite:
            more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
            raise CnnzooError(
                f"{run.run_dir} holds a run of another configuration ({'; '.join(diff[:3])}{more}): "
                "add --overwrite to retrain it, or choose another --out"
            )


def needs_training(run: Run) -> bool:
    """Not finished, or finished under another configuration (which ``overwrite`` retrains)."""
    if not run.finished:
        return True
    return bool(config_difference(read_config(run.run_dir / "config.toml").to_dict(), run.config.to_dict()))


def train_run(run: Run, *, stop_after: int | None = None) -> dict[str, Any]:
    """Train ``run`` to its end: reuse it if finished, resume it from ``last.pt`` if the stored config is the one
    asked for, else train it from scratch (replacing a run of another config: :func:`check_reuse` has allowed it)."""
    from cnnzoo.train.api import train

    cfg = run.config
    if not needs_training(run):
        return run.report()
    if run.started and not config_difference(read_config(run.run_dir / "config.toml").to_dict(), cfg.to_dict()):
        place = {k: getattr(cfg, k) for k in PLACE_FIELDS if k in RESUME_OVERRIDES}  # where it runs may change
        return train(resume=run.run_dir, stop_after=stop_after, quiet=True, **place)
    values = {k: v for k, v in cfg.to_dict().items() if k not in ("model", "data", "recipe")}
    return train(
        cfg.model,
        cfg.data,
        recipe=cfg.recipe,
        out=run.run_dir,
        stop_after=stop_after,
        overwrite=True,
        quiet=True,
        **values,
    )


# --- stopping ------------------------------------------------------------------------------------------------------


class StopSignal:
    """While active, SIGINT and SIGTERM set :attr:`reason` instead of killing the study (the trainer installs its own
    handler during each run and puts this one back after)."""

    def __init__(self) -> None:
        self.reason = ""
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: object) -> None:
        self.reason = f"{signal.Signals(signum).name} received"


def interrupted(reason: str, runs: list[Run]) -> StudyInterrupted:
    """The study's one resume hint."""
    done = sum(r.finished for r in runs)
    return StudyInterrupted(
        f"{reason or 'stopped'}: {done} of {len(runs)} runs finished, the others saved at their "
        "last step; run the same command again to resume"
    )


# --- training them all ---------------------------------------------------------------------------------------------


def train_all(
    runs: list[Run], *, jobs: int = 1, stop: StopSignal, stop_after: int | None = None, progress=None
) -> None:
    """Train every run that needs it: one after the other in this process, or ``jobs`` at a time in spawned
    processes sharing the device. Raises :class:`StudyInterrupted` when stopped (``last.pt`` kept for each run)."""
    todo = [r for r in runs if needs_training(r)]
    if jobs <= 1:
        for run in todo:
            if stop.reason:
                raise interrupted(stop.reason, runs)
            if progress is not None:
                progress.start(run)
            report = train_run(run, stop_after=stop_after)
            if report.get("interrupted"):
                raise interrupted(stop.reason or report.get("reason", ""), runs)
        return
    _train_parallel(runs, todo, jobs=jobs, stop=stop, stop_after=stop_after, progress=progress)


def _child(run: Run, stop_after: int | None, errors) -> None:
    """A spawned worker: Ctrl-C reaches the whole process group, so the child ignores SIGINT until its trainer
    takes over (the parent forwards a SIGTERM, which the trainer turns into a clean stop)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        report = train_run(run, stop_after=stop_after)
    except CnnzooError as e:
        errors.put(f"{run.name}: {e}")
        raise SystemExit(2) from None
    raise SystemExit(3 if report.get("interrupted") else 0)


def _train_parallel(
    runs: list[Run], todo: list[Run], *, jobs: int, stop: StopSignal, stop_after: int | None, progress
) -> None:
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    errors = ctx.SimpleQueue()
    pending, active = list(todo), {}
    failure = ""
    while pending or active:
        while pending and len(active) < jobs and not (stop.reason or failure):
            run = pending.pop(0)
            proc = ctx.Process(target=_child, args=(run, stop_after, errors), daemon=False)
            proc.start()
            active[proc.sentinel] = (proc, run)
            if progress is not None:
                progress.start(run)
        if not active:
            break
        for sentinel in wait(list(active), timeout=1.0):
            proc, run = active.pop(sentinel)
            proc.join()
            if proc.exitcode == 3:  # the trainer stopped it (stop_after): an interruption
                stop.reason = stop.reason or "stopped"
            elif proc.exitcode != 0 and not (stop.reason or failure):
                failure = errors.get() if not errors.empty() else f"{run.name}: crashed (exit code {proc.exitcode})"
        if stop.reason or failure:
            for proc, _ in active.values():
                if proc.is_alive():
                    proc.terminate()  # SIGTERM: the trainer saves last.pt at its current step and returns
            for proc, _ in active.values():
                proc.join()
            active.clear()
    if failure:
        raise CnnzooError(failure)
    if stop.reason:
        raise interrupted(stop.reason, runs)
