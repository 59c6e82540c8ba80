"""Small pieces shared by every family: the input check that turns a shape mismatch into a clear error, LRN, and the
block contract (:func:`blocks`) through which ``study gradients`` reads any residual or plain family."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnzoo.errors import InputShapeError


def blocks(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """(name, block, branch end) for every residual or plain block of ``model``, in forward order.

    The block contract (docs/architecture.md, "Blocks"): a block is a module with an attribute ``shortcut``
    (``"A"``/``"B"``: residual; ``None``: plain, no addition) and a class attribute ``branch_out``, the name of its
    submodule whose output is the branch F(x), the tensor added to the shortcut (in a plain block: the tensor the
    block passes on, before any final ReLU). Its forward takes the block's input as first argument and does not
    change that output in place, so hooks can read both. The modules with a ``shortcut`` attribute are exactly the
    blocks.
    """
    return [(n, m, m.get_submodule(m.branch_out)) for n, m in model.named_modules() if hasattr(m, "shortcut")]


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


class LocalResponseNorm(nn.LocalResponseNorm):
    """PyTorch's cross-channel LRN, applied separately to each of ``groups`` equal slices of the channels.

    ``groups=2`` is AlexNet's two towers: each GPU normalised only across its own half of the maps.
    """

    def __init__(self, size: int, alpha: float, beta: float, k: float, *, groups: int = 1) -> None:
        super().__init__(size=size, alpha=alpha, beta=beta, k=k)
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups == 1:
            return super().forward(x)
        towers = [F.local_response_norm(t, self.size, self.alpha, self.beta, self.k) for t in x.chunk(self.groups, 1)]
        return torch.cat(towers, dim=1)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", groups={self.groups}" if self.groups > 1 else "")


def lrn(*, size: int, alpha: float, beta: float, k: float, groups: int = 1) -> LocalResponseNorm:
    """Local response normalisation as the papers write it (Krizhevsky et al. 2012, section 3.3):

        b_i = a_i / (k + alpha * sum over the ``size`` maps around i of a_j^2) ** beta

    ``alpha`` multiplies the sum itself. PyTorch's ``nn.LocalResponseNorm`` (like Caffe's LRN layer and cuda-convnet's
    ``scale``) divides its alpha by ``size``, so it is given ``size * alpha`` here. Whether a paper's alpha is the
    coefficient of its equation or the value it set in code that divides by ``size`` is for each family to state.
    """
    return LocalResponseNorm(size=size, alpha=size * alpha, beta=beta, k=k, groups=groups)
