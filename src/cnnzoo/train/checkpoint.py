"""Checkpoints that survive a crash and can never run code.

- Written atomically: ``torch.save`` to a temporary file in the same directory, ``fsync``, ``os.replace`` over the
  old file (atomic on POSIX and Windows), then ``fsync`` of the directory; a kill at any moment leaves either the
  old or the new checkpoint, never a torn one.
- Read with ``torch.load(..., weights_only=True)``: only tensors and plain containers are unpickled. So the config
  is stored as a plain dict, RNG states as tensors / tuples of ints, no classes.
- Checked for the structure the loaders index (a hand-edited or foreign file is one line, not a traceback) and
  against what the caller expects (model name, class count, input channels). A file that ``weights_only`` refuses
  is named with the global it asks for; the message never suggests ``weights_only=False``.
"""

from __future__ import annotations

import math
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnzoo.atomic import check_regular, save_atomic  # noqa: F401  (re-exported: the trainer writes checkpoints with it)
from cnnzoo.errors import CnnzooError
from cnnzoo.train.config import config_from_dict

FORMAT = 1  # bump when the layout below changes


def load(
    path: str | Path,
    *,
    model: str | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``, check its structure (with ``resume``, also the training state
    a ``last.pt`` holds) and refuse one made for another model, class count or channel count."""
    path = Path(path)
    check_regular(path, "checkpoint")  # a FIFO or device would block torch.load
    if not path.is_file():
        raise CnnzooError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CnnzooError(f"{path}: {_refusal(str(e))}") from None
    except Exception as e:  # truncated zip, garbage bytes, a folder: torch raises RuntimeError, EOFError, OSError, ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        reason = reason.split(". ")[0]  # torch's first sentence says what; the rest is advice for torch's developers
        raise CnnzooError(f"{path}: not a readable checkpoint ({reason})") from None
    problem = _problem(ckpt, resume)
    if problem:
        raise CnnzooError(f"{path}: not a cnnzoo checkpoint (format {FORMAT}): {problem}")
    meta = ckpt["meta"]
    for key, want in (("model", model), ("num_classes", num_classes), ("in_channels", in_channels)):
        if want is not None and meta[key] != want:
            raise CnnzooError(f"{path}: checkpoint is for {key} {meta[key]!r}, not {want!r}")
    return ckpt


def _refusal(message: str) -> str:
    """Why ``weights_only`` refused a file, in our words: the global it names (or the unpickler's complaint), never
    torch's advice to load it with ``weights_only=False`` (which would run whatever the file asks)."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return (
            f"refused: it asks to load {found.group(1)}; a cnnzoo checkpoint holds only tensors and plain values, "
            "and loading anything else could run code, so it is not loaded"
        )
    after = message.split("WeightsUnpickler error:", 1)[-1] if "WeightsUnpickler error:" in message else ""
    lines = [line.strip() for line in after.splitlines() if line.strip() and "weights_only" not in line]
    return f"not a readable checkpoint (the safe loader stopped at: {lines[0] if lines else 'unknown content'})"


_META = {
    "model": str,
    "data": str,
    "num_classes": int,
    "in_channels": int,
    "image_size": int,
    "classes": list,
    "mean": list,
    "std": list,
}
_KIND_NAMES = {str: "a string", int: "an integer", list: "a list"}
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


def _problem(ckpt: Any, resume: bool) -> str | None:
    """What is wrong with an unpickled checkpoint's structure, or None (what the loaders index must be there)."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        return "no format marker"
    for key in ("meta", "config", "model"):
        if not isinstance(ckpt.get(key), dict):
            return f"{key!r} is missing or not a table"
    meta = ckpt["meta"]
    for key, kind in _META.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            return f"meta {key!r} is missing or not {_KIND_NAMES[kind]}"
    if meta["num_classes"] < 1 or len(meta["classes"]) != meta["num_classes"]:
        return f"meta names {len(meta['classes'])} classes for num_classes {meta['num_classes']}"
    if not all(isinstance(c, str) for c in meta["classes"]):
        return "meta 'classes' are not all names"
    if meta["in_channels"] < 1 or meta["image_size"] < 1:
        return "meta 'in_channels' and 'image_size' must be >= 1"
    for key in ("mean", "std"):
        values = meta[key]
        if len(values) != meta["in_channels"] or not all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in values
        ):
            return f"meta {key!r} must hold {meta['in_channels']} finite numbers"
    if not all(v > 0 for v in meta["std"]):
        return "meta 'std' must be positive"
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt["model"].items()):
        return "'model' is not a state dict of tensors"
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
