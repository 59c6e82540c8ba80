"""The learning-rate schedule: the lr of every optimizer step as a pure function of the step and the config.

No torch scheduler and no scheduler state: resuming at any step needs nothing but the step, and any step's lr is
known in advance (warm-up, then constant, step, multistep, cosine, linear or one-cycle decay: one formula per name in
:data:`SCHEDULES`, which :func:`lr_at` dispatches through).
The one exception is He et al.'s warm-up rule (``warmup_until_error``), which ends when the running training error
first drops below a threshold: the loop records that step (``warmup_end``, part of the checkpoint) and the lr is a
pure function of the step and it. The loop sets the lr with :func:`cnnzoo.train.engine.set_lr` before every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from cnnzoo.errors import CnnzooError

if TYPE_CHECKING:  # config.py imports SCHEDULES from here (its choices): the config type is only a hint
    from cnnzoo.train.config import TrainConfig


def total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Optimizer steps in the whole run: ``iterations`` if set, else ``epochs * steps_per_epoch``."""
    return cfg.iterations if cfg.iterations > 0 else cfg.epochs * steps_per_epoch


def num_epochs(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Epochs the loop runs (the last one may stop early when ``iterations`` is not a multiple of an epoch)."""
    return math.ceil(total_steps(cfg, steps_per_epoch) / steps_per_epoch)


def warmup_length(cfg: TrainConfig, steps_per_epoch: int, warmup_end: int | None = None) -> int:
    """Warm-up length in steps: ``warmup_end``, the step at which the error rule ended it, when known; else the fixed
    length (``warmup_steps`` wins over ``warmup_epochs``), which is also the rule's cap (0: none)."""
    if warmup_end is not None:
        return warmup_end
    return cfg.warmup_steps if cfg.warmup_steps > 0 else round(cfg.warmup_epochs * steps_per_epoch)


def _progress(step: int, total: int, warm: int) -> float:
    """How far the decay after the warm-up has gone at ``step``: 0 at its first step, 1 at the run's last."""
    return min(1.0, (step - warm) / max(1, total - 1 - warm))


def _constant(step: int, cfg: TrainConfig, steps_per_epoch: int, total: int, warm: int) -> float:
    return cfg.lr


def _step(step: int, cfg: TrainConfig, steps_per_epoch: int, total: int, warm: int) -> float:
    return cfg.lr * cfg.gamma ** math.floor(step / (cfg.step_size * steps_per_epoch))


def _multistep(step: int, cfg: TrainConfig, steps_per_epoch: int, total: int, warm: int) -> float:
    marks = cfg.milestone_steps or [round(m * steps_per_epoch) for m in cfg.milestones]
    return cfg.lr * cfg.gamma ** sum(step >= m for m in marks)


def _cosine(step: int, cfg: TrainConfig, steps_per_epoch: int, total: int, warm: int) -> float:
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * _progress(step, total, warm))) / 2


def _linear(step: int, cfg: TrainConfig, steps_per_epoch: int, total: int, warm: int) -> float:
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * (1 - _progress(step, total, warm))


def _onecycle(step: int, cfg: TrainConfig, steps_per_epoch: int, total: int, warm: int) -> float:
    up = max(1, round(cfg.pct_start * total))
    start, low = cfg.lr / 25.0, cfg.lr / 25.0 / 1e4
    if step < up:
        return start + (cfg.lr - start) * (1 - math.cos(math.pi * step / up)) / 2
    t = min(1.0, (step - up) / max(1, total - 1 - up))
    return low + (cfg.lr - low) * (1 + math.cos(math.pi * t)) / 2


# Schedule name -> its lr after the warm-up: ``formula(step, cfg, steps_per_epoch, total, warm)``, a pure function of
# the 0-based step, the config, the steps per epoch, the run's total steps and the warm-up length (which the decay's
# progress counts from). The names are the config's choices (``TrainConfig.schedule``), in this order.
SCHEDULES: dict[str, Callable[[int, TrainConfig, int, int, int], float]] = {
    "constant": _constant,
    "step": _step,
    "multistep": _multistep,
    "cosine": _cosine,
    "linear": _linear,
    "onecycle": _onecycle,
}
# Schedules that rise from a low lr themselves: the warm-up settings do not apply to them (one-cycle's rise over
# ``pct_start`` is its warm-up).
OWN_WARMUP = frozenset({"onecycle"})


def lr_at(step: int, cfg: TrainConfig, steps_per_epoch: int, warmup_end: int | None = None) -> float:
    """The learning rate of optimizer step ``step`` (0-based): a pure function of the step, the config and, with the
    warm-up rule, the step at which the rule ended the warm-up (``warmup_end``; None while it has not).

    Warm-up (first ``warmup_length`` steps): ``warmup_lr`` if set (He et al. 2016 section 4.2: ResNet-110 trains
    at 0.01 "until the training error is below 80% (about 400 iterations), and then go back to 0.1"), else a linear
    ramp up to ``lr``. With ``warmup_until_error`` the warm-up lasts until ``warmup_end`` (or the fixed length, its
    cap); the decay's progress ``t`` then counts from ``warmup_end``. Then the formula :data:`SCHEDULES` holds for
    ``cfg.schedule`` (an unknown name is a :class:`CnnzooError`):

    ========== ======================================================================================
    constant   lr
    step       lr * gamma ** floor(epoch / step_size)       (AlexNet, VGG, GoogLeNet papers)
    multistep  lr * gamma ** (milestones passed)            (He et al. 2016: /10 at 32k and 48k steps)
    cosine     min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2,  t = progress after warm-up in [0, 1]
    linear     min_lr + (lr - min_lr) * (1 - t)
    onecycle   cosine up from lr/25 to lr over pct_start, then down to lr/25e4 (torch OneCycleLR's defaults;
               no separate warm-up: :data:`OWN_WARMUP`)
    ========== ======================================================================================
    """
    formula = SCHEDULES.get(cfg.schedule)
    if formula is None:
        raise CnnzooError(f"unknown schedule {cfg.schedule!r}: expected one of {', '.join(SCHEDULES)}")
    total = total_steps(cfg, steps_per_epoch)
    warm = warmup_length(cfg, steps_per_epoch, warmup_end)
    if cfg.warmup_until_error > 0 and warmup_end is None and warm == 0:
        return cfg.warmup_lr  # the rule has not ended the warm-up yet, and it has no cap
    if step < warm and cfg.schedule not in OWN_WARMUP:
        return cfg.warmup_lr if cfg.warmup_lr > 0 else cfg.lr * (step + 1) / warm
    return formula(step, cfg, steps_per_epoch, total, warm)
