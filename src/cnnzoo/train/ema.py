"""An exponential moving average of a model's weights and BN buffers with no host work per step (``--ema``).

``torch.optim.swa_utils.AveragedModel`` reads its counter on the host twice per update (``bool(n_averaged == 0)``,
``n_averaged > 0``: two device synchronisations) and walks ~330 tensors in Python for resnet56 (2-4 ms per step on
an H100, measured by benchmarks/step_profile.py). :class:`EMA` computes the same average with a fixed handful of
foreach kernels over tensor lists gathered once, its decay and its counter on the device, and no branch on a device
value, so an update never waits for the GPU and can be captured inside a CUDA graph with the training step.

Same numbers as ``AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)``:

- the first update copies the model (``n_averaged == 0``); every later one is ``ema = decay * ema + (1 - decay) *
  model`` for floating tensors (AveragedModel's ``_foreach_lerp_``, here ``ema * keep + model * w``: equal up to
  float rounding, ~1e-7) and ``long(float32(ema) * decay + float32(model) * (1 - decay))`` for integer buffers
  (``num_batches_tracked``), bit for bit. The first-update copy is the same formula with ``keep = 0, w = 1``
  (``where`` on the device counter), which is exact for finite values;
- the same ``state_dict``: ``n_averaged`` and ``module.<name>`` for every parameter and buffer, so checkpoints
  written with an ``AveragedModel`` load into an :class:`EMA` and the other way round;
- ``.module`` is the averaged copy to evaluate; ``update_parameters(model)`` is the call the loop makes.

The lists point at the source model's tensors as they are when the EMA is built (training updates them in place:
the optimizer's step, BN's running statistics, ``load_state_dict``): build it after moving the model to its device
and memory format.
"""

from __future__ import annotations

import copy
import weakref

import torch
from torch import nn


class EMA(nn.Module):
    """EMA of ``model``'s parameters and buffers, ``decay`` per :meth:`update_parameters` call."""

    n_averaged: torch.Tensor

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model)
        device = next(iter(self._tensors(self.module)), torch.empty(0)).device
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long, device=device))
        # float32, as AveragedModel's Python-float factors become in float32 arithmetic: float32(1 - decay) is not
        # always 1 - float32(decay). Non-persistent: the state_dict stays AveragedModel's.
        self.register_buffer("_keep", torch.tensor(decay, dtype=torch.float32, device=device), persistent=False)
        self.register_buffer("_weight", torch.tensor(1.0 - decay, dtype=torch.float32, device=device), persistent=False)
        self._bind(model)

    @staticmethod
    def _tensors(module: nn.Module) -> list[torch.Tensor]:
        """Parameters then buffers, detached (AveragedModel's ``use_buffers=True`` order)."""
        return [t.detach() for t in (*module.parameters(), *module.buffers())]

    def _bind(self, model: nn.Module) -> None:
        """Gather the (EMA, model) tensor pairs once: floating ones grouped by (device, dtype), as the foreach
        kernels want; integer ones as flat views, averaged in one float32 tensor per step."""
        self._source = weakref.ref(model)  # not a submodule: not in the state_dict, not moved with .to()
        ema, src = self._tensors(self.module), self._tensors(model)
        if len(ema) != len(src) or any(
            e.shape != s.shape or e.device != s.device for e, s in zip(ema, src, strict=False)
        ):
            raise ValueError("EMA: the model's parameters and buffers do not match the averaged copy's (shape, device)")
        self._groups: dict[tuple, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        self._ints: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        for e, s in zip(ema, src, strict=True):
            if e.is_floating_point() or e.is_complex():
                pair = self._groups.setdefault((e.device, e.dtype), ([], []))
                pair[0].append(e)
                pair[1].append(s)
            else:  # flat views, made once: per step one cat of each side and one foreach copy back
                self._ints[0].append(e.view(-1))
                self._ints[1].append(s.view(-1))
        self._int_sizes = [e.numel() for e in self._ints[0]]

    @torch.no_grad()
    def update_parameters(self, model: nn.Module | None = None) -> None:
        """One EMA step toward ``model`` (default: the model it was built from): a fixed few kernels, no sync."""
        if model is not None and model is not self._source():
            self._bind(model)
        first = self.n_averaged == 0
        keep = torch.where(first, 0.0, self._keep)  # first update: ema * 0 + model * 1, AveragedModel's copy
        weight = torch.where(first, 1.0, self._weight)
        for ema, src in self._groups.values():
            torch._foreach_mul_(ema, keep.to(ema[0].dtype))
            torch._foreach_add_(ema, torch._foreach_mul(src, weight.to(ema[0].dtype)))
        if self._ints[0]:
            ema, src = self._ints
            old = torch.cat(ema)
            new = (old * keep + torch.cat(src) * weight).to(old.dtype)  # float32 then truncation, as copy_ does
            torch._foreach_copy_(ema, list(new.split(self._int_sizes)))
        self.n_averaged += 1

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
