"""Checkpoints that survive a crash and can never run code.

- Written atomically: ``torch.save`` to a temporary file in the same directory, ``fsync``, ``os.replace`` over the
  old file (atomic on POSIX and Windows), then ``fsync`` of the directory; a kill at any moment leaves either the
  old or the new checkpoint, never a torn one.
- A run's state (:class:`~cnnzoo.train.loop.RunState`) goes into ``last.pt`` with :func:`run_state` and comes back
  with :func:`restore_run`; :func:`save_last`, :func:`save_best` and :func:`write_metrics` write a run's files.
- Read by :func:`cnnzoo.serialize.load` (``torch.load(..., weights_only=True)``: only tensors and plain containers
  are unpickled; so the config is stored as a plain dict, RNG states as tensors / tuples of ints, no classes),
  checked for the structure the loaders index, then here for a valid config and, to resume, the training state; a
  hand-edited or foreign file is one line, not a traceback.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cnnzoo import serialize
from cnnzoo.atomic import check_regular, save_atomic, write_atomic
from cnnzoo.data.bundle import data_counts
from cnnzoo.errors import CnnzooError
from cnnzoo.serialize import FORMAT
from cnnzoo.train.config import config_from_dict

if TYPE_CHECKING:
    from cnnzoo.train.state import RunState


def load(
    path: str | Path,
    *,
    model: str | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (:func:`cnnzoo.serialize.load`), check its structure and config
    (with ``resume``, also the training state a ``last.pt`` holds) and refuse one made for another model, class
    count or channel count."""
    check_regular(Path(path), "checkpoint")  # a FIFO or device would block torch.load
    return serialize.load(
        path,
        model=model,
        num_classes=num_classes,
        in_channels=in_channels,
        check=lambda ckpt: _train_problem(ckpt, resume),
    )


_RESUME = {
    "optimizer": dict,
    "scaler": dict,
    "ema": (dict, type(None)),
    "position": dict,
    "sums": (torch.Tensor, type(None)),
    "seen": int,
    "epoch_seconds": (int, float),
    "history": list,
    "best": dict,
    "train_seconds": (int, float),
    "rng": dict,
}


def _train_problem(ckpt: dict[str, Any], resume: bool) -> str | None:
    """What is wrong with a checkpoint for the trainer beyond :mod:`cnnzoo.serialize`'s structure: its config, and
    with ``resume`` the training state a ``last.pt`` holds; or None."""
    try:
        config_from_dict(ckpt["config"])
    except CnnzooError as e:
        return f"its config: {e}"
    if resume:
        for key, kind in _RESUME.items():
            if key not in ckpt or not isinstance(ckpt[key], kind):
                return f"{key!r} (the training state a last.pt holds) is missing or of the wrong type"
        if not all(
            isinstance(ckpt["position"].get(k), int) and ckpt["position"][k] >= 0 for k in ("epoch", "batch", "step")
        ):
            return "'position' must hold epoch, batch and step as integers >= 0"
    return None


def load_weights(module: torch.nn.Module, state: dict[str, Any], where: str | Path) -> None:
    """``module.load_state_dict(state)``, with weights that do not fit (a hand-edited or foreign checkpoint) as one
    line that starts with ``where`` (the checkpoint's path, or what it is) and counts what differs."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or reshaped:
        first = (missing or unexpected or reshaped)[0]
        counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(reshaped)} of another shape"
        raise CnnzooError(f"{where}: its weights do not fit {type(module).__name__} ({counts}; first: {first})")
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError) as e:  # e.g. a dtype that cannot be copied
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CnnzooError(f"{where}: its weights do not fit {type(module).__name__} ({first_line})") from None


# --- RNG state as weights_only-safe values ---------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every global RNG the run touches: torch CPU (and CUDA), Python ``random``, NumPy's legacy global."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),  # (version, tuple of ints, None): plain values
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- a run's state ---------------------------------------------------------------------------------------------------


def run_state(run: RunState) -> dict[str, Any]:
    """The resumable state of ``run`` (only tensors and plain containers: loads with weights_only=True)."""
    return {
        "format": FORMAT,
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
        "rng": rng_state(),
    }


def _plain_lr(optimizer_state: dict[str, Any]) -> dict[str, Any]:
    """The optimizer's state with float learning rates (a --cuda-graph run holds them as device tensors), so any run
    can resume from it; the lr is set from :func:`~cnnzoo.train.schedule.lr_at` before every step anyway."""
    for group in optimizer_state["param_groups"]:  # state_dict() returns fresh group dicts: safe to change
        group["lr"] = float(group["lr"])
    return optimizer_state


def restore_run(run: RunState, ckpt: dict[str, Any]) -> None:
    """Restore ``run`` from a ``last.pt`` dict (the inverse of :func:`run_state`)."""
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
    set_rng_state(ckpt["rng"])


def save_last(run: RunState) -> None:
    """``last.pt``: everything to resume at the exact batch reached (write ``metrics.jsonl`` after it:
    :func:`write_metrics`)."""
    save_atomic(run_state(run), run.run_dir / "last.pt")


def save_best(run: RunState, weights: torch.nn.Module, source: str) -> None:
    """``best.pt``: ``weights`` (the model's, or the EMA's when ``source`` is "ema") with the run's meta and config."""
    best = {
        "format": FORMAT,
        "meta": run.meta(),
        "config": run.cfg.to_dict(),
        "model": weights.state_dict(),
        "best": dict(run.best, weights=source),
    }
    save_atomic(best, run.run_dir / "best.pt")


def write_metrics(run: RunState) -> None:
    """Rewrite ``metrics.jsonl`` from the history (so a resumed run's file matches its checkpoint exactly)."""
    write_atomic(run.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in run.history))


def check_data_matches(meta: dict[str, Any], data, where: str | Path) -> None:
    """Refuse data (a :class:`~cnnzoo.data.DataBundle`) that differs from what a checkpoint was trained on (its
    ``meta``: class names, channels, image size, normalisation), in one line that says how it differs."""
    diffs = _class_differences(list(meta["classes"]), list(data.classes))
    if meta["in_channels"] != data.in_channels:
        diffs.append(f"{data.in_channels} channels, not {meta['in_channels']}")
    if meta["image_size"] != data.image_size:
        diffs.append(f"image size {data.image_size}, not {meta['image_size']}")
    then_counts, now_counts = meta.get("data_counts"), data_counts(data)
    if isinstance(then_counts, dict):  # what the data holds, whatever the normalisation (--mean/--std fix it)
        for key in ("train", "val", "test"):
            if then_counts.get(key) != now_counts.get(key):
                diffs.append(f"{now_counts.get(key)} {key} images, not {then_counts.get(key)}")
        if then_counts.get("sizes") != now_counts.get("sizes"):
            diffs.append("images of other sizes")
    for key in ("mean", "std"):
        a, b = [float(v) for v in meta[key]], [float(v) for v in getattr(data, key)]
        if len(a) != len(b) or any(abs(x - y) > 1e-6 * max(1.0, abs(x)) for x, y in zip(a, b, strict=True)):
            diffs.append(f"normalisation {key} {_floats(b)}, not {_floats(a)}")
    if diffs:
        raise CnnzooError(f"{where}: the data is not what the run was trained on ({meta['data']}): {'; '.join(diffs)}")


def _class_differences(then: list[str], now: list[str]) -> list[str]:
    if then == now:
        return []
    missing, new = [c for c in then if c not in now], [c for c in now if c not in then]
    diffs = [] if missing or new else ["the same classes in another order"]
    return diffs + [
        f"{label} {_names(names)}" for label, names in (("missing classes", missing), ("new classes", new)) if names
    ]


def _names(names: list[str], most: int = 3) -> str:
    shown = ", ".join(repr(n) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _floats(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"
