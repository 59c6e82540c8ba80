"""The learning-rate schedule: the lr of every optimizer step as a pure function of the step and the config.

No torch scheduler and no scheduler state: resuming at any step needs nothing but the step, and any step's lr is
known in advance (warm-up, then constant, step, multistep, cosine, linear or one-cycle decay; see :func:`lr_at`).
The one exception is He et al.'s warm-up rule (``warmup_until_error``), which ends when the running training error
first drops below a threshold: the loop records that step (``warmup_end``, part of the checkpoint) and the lr is a
pure function of the step and it. The loop sets the lr with :func:`cnnzoo.train.engine.set_lr` before every step.
"""

from __future__ import annotations

import math

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


def lr_at(step: int, cfg: TrainConfig, steps_per_epoch: int, warmup_end: int | None = None) -> float:
    """The learning rate of optimizer step ``step`` (0-based): a pure function of the step, the config and, with the
    warm-up rule, the step at which the rule ended the warm-up (``warmup_end``; None while it has not).

    Warm-up (first ``warmup_length`` steps): ``warmup_lr`` if set (He et al. 2016 section 4.2: ResNet-110 trains
    at 0.01 "until the training error is below 80% (about 400 iterations), and then go back to 0.1"), else a linear
    ramp up to ``lr``. With ``warmup_until_error`` the warm-up lasts until ``warmup_end`` (or the fixed length, its
    cap); the decay's progress ``t`` then counts from ``warmup_end``. Then:

    ========== ======================================================================================
    constant   lr
    step       lr * gamma ** floor(epoch / step_size)       (AlexNet, VGG, GoogLeNet papers)
    multistep  lr * gamma ** (milestones passed)            (He et al. 2016: /10 at 32k and 48k steps)
    cosine     min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2,  t = progress after warm-up in [0, 1]
    linear     min_lr + (lr - min_lr) * (1 - t)
    onecycle   cosine up from lr/25 to lr over pct_start, then down to lr/25e4 (torch OneCycleLR's defaults)
    ========== ======================================================================================
    """
    total = total_steps(cfg, steps_per_epoch)
    warm = warmup_length(cfg, steps_per_epoch, warmup_end)
    if cfg.warmup_until_error > 0 and warmup_end is None and warm == 0:
        return cfg.warmup_lr  # the rule has not ended the warm-up yet, and it has no cap
    if cfg.schedule == "onecycle":
        up = max(1, round(cfg.pct_start * total))
        start, low = cfg.lr / 25.0, cfg.lr / 25.0 / 1e4
        if step < up:
            return start + (cfg.lr - start) * (1 - math.cos(math.pi * step / up)) / 2
        t = min(1.0, (step - up) / max(1, total - 1 - up))
        return low + (cfg.lr - low) * (1 + math.cos(math.pi * t)) / 2
    if step < warm:
        return cfg.warmup_lr if cfg.warmup_lr > 0 else cfg.lr * (step + 1) / warm
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** math.floor(step / (cfg.step_size * steps_per_epoch))
    if cfg.schedule == "multistep":
        marks = cfg.milestone_steps or [round(m * steps_per_epoch) for m in cfg.milestones]
        return cfg.lr * cfg.gamma ** sum(step >= m for m in marks)
    t = min(1.0, (step - warm) / max(1, total - 1 - warm))
    if cfg.schedule == "cosine":
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * t)) / 2
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * (1 - t)  # linear
