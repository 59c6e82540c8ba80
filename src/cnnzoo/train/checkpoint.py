"""Checkpoints that survive a crash and can never run code.

- Written atomically: ``torch.save`` to a temporary file in the same directory, ``fsync``, ``os.replace`` over the
  old file (atomic on POSIX and Windows), then ``fsync`` of the directory; a kill at any moment leaves either the
  old or the new checkpoint, never a torn one.
- Read with ``torch.load(..., weights_only=True)``: only tensors and plain containers are unpickled. So the config
  is stored as a plain dict, RNG states as tensors / tuples of ints, no classes.
- Checked against what the caller expects (model name, class count, input channels) with a one-line error.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnzoo.atomic import save_atomic  # noqa: F401  (re-exported: the trainer writes checkpoints with it)
from cnnzoo.errors import CnnzooError

FORMAT = 1  # bump when the layout below changes


def load(path: str | Path, *, model: str | None = None, num_classes: int | None = None,
         in_channels: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Load a checkpoint with ``weights_only=True`` and refuse one made for another model or class count."""
    path = Path(path)
    if not path.is_file():
        raise CnnzooError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CnnzooError(f"{path}: refused: not loadable with weights_only=True: {first}") from None
    except (RuntimeError, EOFError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CnnzooError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise CnnzooError(f"{path}: not a cnnzoo checkpoint (format {FORMAT})")
    meta = ckpt["meta"]
    for key, want in (("model", model), ("num_classes", num_classes), ("in_channels", in_channels)):
        if want is not None and meta[key] != want:
            raise CnnzooError(f"{path}: checkpoint is for {key} {meta[key]!r}, not {want!r}")
    return ckpt


# --- RNG state as weights_only-safe values ---------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every global RNG the run touches: torch CPU (and CUDA), Python ``random``, NumPy's legacy global."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),  # (version, tuple of ints, None): plain values
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},  # fmt: skip
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
