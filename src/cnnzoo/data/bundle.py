"""What :func:`cnnzoo.data.load_data` hands the trainer: a :class:`DataBundle` of three :class:`BatchLoader` s.

The contract (docs/architecture.md, "Data"): every loader yields ``(images, labels)`` with images float32
``(N, C, H, W)``, normalised, channels_last, on the bundle's device, and labels int64 ``(N,)``; the order and the
augmentation of an epoch are a pure function of ``(seed, epoch, batch index)``, so a run resumes exactly.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # imported where used: the config reads this module's constants, and `cnnzoo --help` needs no torch
    import torch

from cnnzoo.errors import CnnzooError

PAPER_AUGMENTS = ("alexnet", "vgg", "googlenet", "resnet")  # the papers' own (cnnzoo.data.augment; streamed folders)
AUGMENTS = ("standard", "none", *PAPER_AUGMENTS)  # what ``load_data(augment=...)`` and ``--augment`` accept
AUTO_AUGMENTS = ("randaugment", "trivialaugment", "autoaugment")  # --auto-augment (augment.reference_extras)


def default_home() -> Path:
    """``~/.cache/cnnzoo``: where the decoded cache (``$CNNZOO_CACHE_DIR``) and named datasets (``$CNNZOO_DATA_DIR``,
    its ``data/`` folder) live unless those variables say otherwise."""
    return Path.home() / ".cache" / "cnnzoo"


@enum.unique
class Stream(enum.IntEnum):
    """The first key after the seed of every :func:`generator` cnnzoo draws from: one tag per use, so no two uses
    share a random stream. The values are part of every run's numbers: never renumber one."""

    PERMUTATION = 0  # an epoch's order of training samples
    AUGMENT = 1  # a batch's crops, flips and cutout (device loader) or its samples' seeds (streaming loader)
    VAL_SPLIT = 2  # the validation carve of the training split
    SUBSET = 3  # ``subset``: which training images are kept
    WORKERS = 4  # the streaming DataLoader's own generator (the samples carry their seeds, so it decides nothing)
    MIX = 7  # mixup / cutmix draws in the training loop


class DataError(CnnzooError):
    """Missing, corrupt or inconsistent data: one line naming the path and what was expected."""


@runtime_checkable
class BatchLoader(Protocol):
    """One split of a dataset, iterated one epoch at a time."""

    batch_size: int
    num_samples: int  # samples in this rank's shard of the split (before a training loader drops its last batch)

    def __len__(self) -> int:
        """Batches per epoch (training: the last partial batch is dropped; evaluation: it is kept)."""
        ...

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch`` from ``start_batch`` on, identical to those of an uninterrupted epoch."""
        ...


@dataclass
class DataBundle:
    """A dataset ready to train on: its classes, input format, normalisation and three loaders."""

    name: str
    classes: list[str]
    in_channels: int
    image_size: int
    mean: tuple[float, ...]  # per channel, of pixel values in [0, 1]: images are (x / 255 - mean) / std
    std: tuple[float, ...]
    train: BatchLoader
    val: BatchLoader  # empty (len 0, num_samples 0) when val_size=0
    test: BatchLoader
    info: dict = field(default_factory=dict)  # what `cnnzoo data` prints: sizes, modes, skipped files, split origin

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def data_counts(data: DataBundle) -> dict:
    """What a checkpoint records of its data beyond classes and format: the images in each split and the images'
    sizes as found on disk (so a resume or an eval on other data is refused even when the normalisation is fixed)."""
    info = getattr(data, "info", None) or {}
    sizes = info.get("sizes")
    return {
        "train": info.get("train"),
        "val": info.get("val"),
        "test": info.get("test"),
        "sizes": {str(k): int(v) for k, v in sizes.items()} if isinstance(sizes, dict) else None,
    }


def mix_seed(*keys: int) -> int:
    """A 63-bit seed that depends on every key (``numpy.random.SeedSequence`` hashes them; nearby keys decorrelate)."""
    import numpy as np

    hi, lo = np.random.SeedSequence([int(k) for k in keys]).generate_state(2)  # two uint32 words
    return (int(hi) << 31) | (int(lo) >> 1)


def generator(device: torch.device | str, *keys: int) -> torch.Generator:
    """A torch.Generator on ``device`` seeded by ``keys`` (device generators keep random draws off the host)."""
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(mix_seed(*keys))
    return g


def rank_order(perm: torch.Tensor, rank: int, world_size: int, batch_size: int) -> torch.Tensor:
    """This rank's training indices from an epoch's permutation ``perm``, ``batch_size`` per rank and step.

    Global batch ``b`` is ``perm[b * B * W : (b + 1) * B * W]`` (W ranks of B), and rank ``r`` serves its ``r``-th
    slice of it, so W ranks together train on the images one process of batch ``B * W`` would, step by step (what
    interleaving does for ``DistributedSampler``); the incomplete last global batch is dropped, as in training.
    """
    steps = perm.numel() // (batch_size * world_size)
    return perm[: steps * batch_size * world_size].view(steps, world_size, batch_size)[:, rank].reshape(-1)


def to_channels(images: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Convert uint8 images ``(N, C, H, W)`` with C in {1, 3} to ``in_channels`` channels.

    Grey to RGB repeats the channel; RGB to grey uses the ITU-R 601-2 luma weights (what PIL's ``convert("L")``
    and torchvision's ``rgb_to_grayscale`` use).
    """
    import torch

    c = images.shape[1]
    if c == in_channels:
        return images
    if c == 1:
        return images.expand(-1, in_channels, -1, -1).contiguous()
    if c == 3 and in_channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114], device=images.device).view(1, 3, 1, 1)
        return (images.float() * weights).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    raise DataError(f"cannot convert {c}-channel images to {in_channels} channels (1 or 3 supported)")


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images ``(N, C, H, W)`` as values in [0, 1].

    Accumulated in float64 chunks so 60,000 CIFAR images need no float copy of the whole set.
    """
    import torch

    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64, device=images.device)
    total_sq = torch.zeros(c, dtype=torch.float64, device=images.device)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].to(torch.float64) / 255.0
        total += x.sum((0, 2, 3))
        total_sq += (x * x).sum((0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(max(v, 1e-3), 4) for v in std.tolist())


@dataclass(frozen=True)
class Shard:
    """Which samples of a split one rank serves, and in which order each epoch: what both loaders share.

    Training: the whole split is permuted per epoch (a generator seeded by ``(seed, PERMUTATION, epoch)``) and cut
    by :func:`rank_order`; the last partial batch is dropped. Evaluation: samples in order, in near-equal contiguous
    slices that cover all of them once, so per-rank counts sum to exact totals.
    """

    size: int  # samples in the whole split, over all ranks
    batch_size: int
    train: bool = False
    seed: int = 0
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} out of range for world_size {self.world_size}")

    @property
    def start(self) -> int:
        """First sample of this rank's evaluation slice."""
        return self.rank * self.size // self.world_size

    @property
    def num_samples(self) -> int:
        """Samples this rank serves per epoch (before a training loader drops its last partial batch)."""
        if self.train:
            return self.size // self.world_size
        return (self.rank + 1) * self.size // self.world_size - self.start

    def __len__(self) -> int:
        """Batches per epoch: training drops the last partial batch, evaluation keeps it."""
        if self.train:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def indices(self, epoch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """This rank's sample indices for ``epoch``, in the order they are served, on ``device``."""
        import torch

        if not self.train:
            return torch.arange(self.start, self.start + self.num_samples, device=device)
        g = generator(device, self.seed, Stream.PERMUTATION, epoch)
        perm = torch.randperm(self.size, generator=g, device=device)
        return rank_order(perm, self.rank, self.world_size, self.batch_size)


def normaliser(
    mean: tuple[float, ...], std: tuple[float, ...], channels: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)``, each ``(channels,)`` float32 on ``device``, with ``(x / 255 - mean) / std == x * scale +
    shift`` for uint8 pixel values ``x``: normalisation as one multiply-add. A single mean/std serves every channel."""
    import torch

    std_t = torch.tensor(std, dtype=torch.float32, device=device).expand(channels)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).expand(channels)
    return (1.0 / (255.0 * std_t)).contiguous(), (-mean_t / std_t).contiguous()
