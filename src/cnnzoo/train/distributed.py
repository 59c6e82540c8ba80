"""Where this process sits in a DDP job: :class:`Dist`, and :func:`init_distributed` from torchrun's environment."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from cnnzoo.errors import CnnzooError
from cnnzoo.train.config import TrainConfig
from cnnzoo.train.engine import resolve_device


@dataclass
class Dist:
    """This process's rank in a DDP job (world_size 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes the run directory and logs."""
        return self.rank == 0

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over ranks in place (a no-op for one process)."""
        if self.world_size > 1:
            import torch.distributed as tdist

            tdist.all_reduce(t)
        return t


def init_distributed(cfg: TrainConfig) -> tuple[Dist, torch.device]:
    """Join the DDP job described by torchrun's environment (``WORLD_SIZE`` > 1), else a single process.

    Backend: NCCL on CUDA (one GPU per process, ``LOCAL_RANK``), gloo on the CPU.
    """
    world = env_int("WORLD_SIZE", 1, 1)
    rank = env_int("RANK", 0, 0)
    local_rank = env_int("LOCAL_RANK", 0, 0)
    device = resolve_device(cfg.device)
    if world <= 1:
        if rank != 0:
            raise CnnzooError(f"RANK={rank} with WORLD_SIZE={world}: a rank must be below the world size (unset RANK)")
        return Dist(), device
    if rank >= world:
        raise CnnzooError(f"RANK={rank} is not below WORLD_SIZE={world} (start several processes with torchrun)")
    if not os.environ.get("MASTER_ADDR") or not os.environ.get("MASTER_PORT"):
        raise CnnzooError(
            f"WORLD_SIZE={world} without MASTER_ADDR and MASTER_PORT: start several processes with torchrun "
            "(or unset WORLD_SIZE to train in one process)"
        )
    env_int("MASTER_PORT", 0, 1, 65535)
    import torch.distributed as tdist

    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise CnnzooError(f"LOCAL_RANK={local_rank}, but this machine has {torch.cuda.device_count()} GPU(s)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(tdist.get_rank(), tdist.get_world_size()), device


def env_int(name: str, default: int, minimum: int, maximum: int = 2**31 - 1) -> int:
    """An integer environment variable (torchrun's ``WORLD_SIZE``, ``RANK``, ...) checked to lie in
    ``[minimum, maximum]``; anything else is one line naming it."""
    text = os.environ.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        value = int(text.strip())
    except ValueError:
        value = None
    if value is None or not minimum <= value <= maximum:
        raise CnnzooError(f"environment variable {name}={text[:40]!r}: expected an integer in [{minimum}, {maximum}]")
    return value
