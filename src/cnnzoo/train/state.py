"""What a run carries between steps: :class:`RunState` (``last.pt`` is this, serialised by
:func:`cnnzoo.train.checkpoint.run_state`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnzoo.data.bundle import DataBundle, data_counts
from cnnzoo.train.config import TrainConfig
from cnnzoo.train.distributed import Dist
from cnnzoo.train.engine import GraphedStep, StepContext
from cnnzoo.train.schedule import lr_at


@dataclass
class RunState:
    """Everything a run carries between steps; ``last.pt`` is this, serialised."""

    cfg: TrainConfig
    data: DataBundle
    model: nn.Module  # the plain module (what checkpoints store)
    net: nn.Module  # what the step calls: the model, possibly DDP-wrapped and/or compiled
    optimizer: torch.optim.Optimizer
    ctx: StepContext
    run_dir: Path | None = None
    ema: nn.Module | None = None  # cnnzoo.train.ema.EMA (engine.make_ema)
    graph: GraphedStep | None = None  # --cuda-graph: replaces train_step
    dist: Dist = field(default_factory=Dist)
    epoch: int = 0  # the epoch in progress (or next to start)
    batch: int = 0  # the next batch of that epoch
    step: int = 0  # optimizer steps done
    sums: torch.Tensor | None = None  # this epoch so far, on the device, float64: [sum of loss * n, correct]
    seen: int = 0  # images trained on in this epoch so far (this rank)
    epoch_seconds: float = 0.0  # time spent training this epoch so far
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"val_top1": -1.0, "epoch": -1, "weights": "model"})
    train_seconds: float = 0.0
    run_id: str | None = None  # the run directory's identity (its marker file), stored in every checkpoint's meta
    warmup_end: int | None = None  # warm-up rule: the step at which it ended the warm-up (None: not yet, or no rule)
    warmup_errors: list[float] = field(default_factory=list)  # its window: the last batches' training errors
    log: Callable[[str], None] = print

    @property
    def steps_per_epoch(self) -> int:
        return len(self.data.train)

    @property
    def warming(self) -> bool:
        """Whether the warm-up rule (``cfg.warmup_until_error``) is still to end the warm-up."""
        return self.cfg.warmup_until_error > 0 and self.warmup_end is None

    def lr(self, step: int) -> float:
        """The lr of ``step``: :func:`lr_at` with the step at which the warm-up rule ended the warm-up, if it has."""
        return lr_at(step, self.cfg, self.steps_per_epoch, self.warmup_end)

    def meta(self) -> dict[str, Any]:
        d = self.data
        return {
            "model": self.cfg.model,
            "num_classes": d.num_classes,
            "in_channels": d.in_channels,
            "data": d.name,
            "classes": list(d.classes),
            "image_size": d.image_size,
            "mean": list(d.mean),
            "std": list(d.std),
            "run_id": self.run_id,
            "data_counts": data_counts(d),
        }
