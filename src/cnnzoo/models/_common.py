"""Small pieces shared by every family: the input check that turns a shape mismatch into a clear error."""

from __future__ import annotations

import torch

from cnnzoo.errors import InputShapeError


def check_input(
    x: torch.Tensor, *, name: str, in_channels: int, min_size: int = 1, exact_size: int | None = None
) -> None:
    """Raise :class:`InputShapeError` naming the expected shape unless ``x`` is (N, in_channels, H, W) that fits.

    ``exact_size``: the net has a fixed-size classifier (e.g. AlexNet's FC6 on 6x6x256) and needs H = W = exact_size.
    ``min_size``: the smallest H and W the net's downsampling survives.
    Skipped under torch.compile / tracing (the check is Python control flow on shapes, cheap in eager mode).
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return
    shape = tuple(x.shape)
    ok = x.dim() == 4 and shape[1] == in_channels
    if ok and exact_size is not None:
        ok = shape[2] == exact_size and shape[3] == exact_size
        want = f"(N, {in_channels}, {exact_size}, {exact_size})"
    else:
        ok = ok and shape[2] >= min_size and shape[3] >= min_size
        want = f"(N, {in_channels}, H, W) with H, W >= {min_size}"
    if not ok:
        raise InputShapeError(f"{name} expects input of shape {want}; got {shape}")
