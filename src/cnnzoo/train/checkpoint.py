"""Checkpoints that survive a crash and can never run code.

- Written atomically: ``torch.save`` to a temporary file in the same directory, ``fsync``, ``os.replace`` over the
  old file (atomic on POSIX and Windows), then ``fsync`` of the directory; a kill at any moment leaves either the
  old or the new checkpoint, never a torn one.
- Read by :func:`cnnzoo.serialize.load` (``torch.load(..., weights_only=True)``: only tensors and plain containers
  are unpickled; so the config is stored as a plain dict, RNG states as tensors / tuples of ints, no classes),
  checked for the structure the loaders index, then here for a valid config and, to resume, the training state; a
  hand-edited or foreign file is one line, not a traceback.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnzoo import serialize
from cnnzoo.atomic import check_regular, save_atomic  # noqa: F401  (re-exported: the trainer writes checkpoints with it)
from cnnzoo.errors import CnnzooError
from cnnzoo.serialize import FORMAT  # noqa: F401  (re-exported: the trainer writes this format)
from cnnzoo.train.config import config_from_dict


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
