"""Reading a cnnzoo checkpoint file safely, below the trainer: what ``models.weights`` (a run directory as starting
weights) and ``train.checkpoint`` (resume, eval, predict) both need.

- Read with ``torch.load(..., weights_only=True)``: only tensors and plain containers are unpickled.
- Checked for the structure the loaders index (format marker, ``meta``, ``config`` and ``model`` tables, the meta
  fields and a state dict of tensors), so a hand-edited or foreign file is one line, not a traceback; a file that
  ``weights_only`` refuses is named with the global it asks for, and the message never suggests
  ``weights_only=False``. The trainer adds its own checks (the config, the training state) through ``check``.
"""

from __future__ import annotations

import math
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cnnzoo.errors import CnnzooError

FORMAT = 1  # bump when the layout below changes


def load(
    path: str | Path,
    *,
    model: str | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    check: Callable[[dict[str, Any]], str | None] | None = None,
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``, check its structure (then ``check``'s, which returns what is
    wrong or None) and refuse one made for another model, class count or channel count."""
    path = Path(path)
    if not path.is_file():
        raise CnnzooError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CnnzooError(f"{path}: {refusal(str(e))}") from None
    except Exception as e:  # truncated zip, garbage bytes, a folder: torch raises RuntimeError, EOFError, OSError, ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        reason = reason.split(". ")[0]  # torch's first sentence says what; the rest is advice for torch's developers
        raise CnnzooError(f"{path}: not a readable checkpoint ({reason})") from None
    problem = _problem(ckpt) or (check(ckpt) if check is not None else None)
    if problem:
        raise CnnzooError(f"{path}: not a cnnzoo checkpoint (format {FORMAT}): {problem}")
    meta = ckpt["meta"]
    for key, want in (("model", model), ("num_classes", num_classes), ("in_channels", in_channels)):
        if want is not None and meta[key] != want:
            raise CnnzooError(f"{path}: checkpoint is for {key} {meta[key]!r}, not {want!r}")
    return ckpt


def refusal(message: str, what: str = "cnnzoo checkpoint") -> str:
    """Why ``weights_only`` refused a file (``message``: the unpickler's error) in our words: the global it names, or
    the unpickler's complaint; never torch's advice to load it with ``weights_only=False`` (which would run whatever
    the file asks). ``what`` names the kind of file, e.g. "weights file"."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return (
            f"refused: it asks to load {found.group(1)}; a {what} holds only tensors and plain values, "
            "and loading anything else could run code, so it is not loaded"
        )
    after = message.split("WeightsUnpickler error:", 1)[-1] if "WeightsUnpickler error:" in message else ""
    lines = [line.strip() for line in after.splitlines() if line.strip() and "weights_only" not in line]
    return f"not a readable {what} (the safe loader stopped at: {lines[0] if lines else 'unknown content'})"


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


def _problem(ckpt: Any) -> str | None:
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
    return None
