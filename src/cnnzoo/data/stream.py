"""The streaming path for image folders too large to hold decoded (ImageNet-style): a DataLoader with workers.

Training (``augment="standard"``; the papers' own: cnnzoo.data.augment): ``RandomResizedCrop(image_size)``
(scale 0.08-1, aspect 3/4-4/3, Szegedy et al. 2015's crop, as torchvision's ImageNet recipe) and a horizontal
flip; evaluation: ``Resize(image_size * 256 / 224)`` then
``CenterCrop(image_size)`` (the 256 -> 224 single-crop test of Krizhevsky et al. 2012, Simonyan & Zisserman 2015).
The transforms (torchvision.transforms.v2) run in worker processes on uint8 tensors; normalisation and the
channels_last layout happen on the device, batched. Batches come through pinned memory on CUDA.

Determinism: the order of an epoch is a permutation seeded by ``(seed, epoch)``, sharded over ranks like the
device-resident loader, and each sample carries its own seed ``(seed, epoch)`` + its position in the global batch
order (the same on N ranks as in one process), with which the
worker seeds torch before transforming it, so the augmentation does not depend on which worker gets which sample,
and ``epoch(e, start_batch)`` starts at that batch without decoding the ones before it.

Departure: a file found corrupt while streaming (the index only reads headers; decoding a million images to check
them up front would take hours) is replaced by the next file of the split, with a log line naming it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from cnnzoo.data.augment import eval_transform, pixel_pca, train_transform, uses_pca
from cnnzoo.data.bundle import DataError, Shard, Stream, generator, mix_seed, normaliser, rank_order
from cnnzoo.data.folders import decode_file

log = logging.getLogger("cnnzoo.data")

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet statistics, used for streamed folders
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Files(Dataset):
    """Items are ``(index, sample_seed)``; returns the transformed uint8 image and its label."""

    def __init__(self, files: list[str], labels: torch.Tensor, channels: int, transform: v2.Transform) -> None:
        self.files, self.labels, self.channels, self.transform = files, labels, channels, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, sample_seed = item
        for attempt in range(len(self.files)):
            i = (index + attempt) % len(self.files)
            try:
                image = decode_file(self.files[i], self.channels)
                break
            except DataError as e:
                log.warning("skipping %s while streaming: %s", self.files[i], e)
        else:
            raise DataError("no readable image in the split")
        # The transforms draw from torch's global RNG: seed it per sample, so the augmentation does not depend on
        # which worker gets which sample; fork_rng restores it after, for num_workers=0 runs in the trainer's process.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            return self.transform(image), self.labels[i]


class StreamLoader:
    """A split of image files decoded per epoch by DataLoader workers; the same interface as ``DeviceLoader``."""

    def __init__(
        self,
        files: list[str],
        labels: torch.Tensor,
        *,
        batch_size: int,
        image_size: int,
        channels: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: torch.device | str = "cpu",
        train: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int | None = None,
        augment: str = "standard",
        extra: list[v2.Transform] | None = None,
    ) -> None:
        self.shard = Shard(len(files), batch_size, train, seed, rank, world_size)
        self.device = torch.device(device)
        self.batch_size, self.num_samples = batch_size, self.shard.num_samples
        self.train, self.seed = train, seed
        self.rank, self.world_size = rank, world_size
        self.num_workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
        # ``augment``: a name of cnnzoo.data.augment (the papers' recipes); the PCA lighting's eigenvectors come from
        # a seeded sample of this split's pixels.
        pca = pixel_pca(files, channels, seed=seed) if train and uses_pca(augment) else None
        transform = train_transform(augment, image_size, pca=pca) if train else eval_transform(image_size)
        if extra:  # --auto-augment, --random-erase: augment.reference_extras
            transform = v2.Compose([transform, *extra])
        self.dataset = _Files(files, labels, channels, transform)
        scale, shift = normaliser(mean, std, channels, self.device)
        self._scale, self._shift = scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1)  # NCHW batches

    def __len__(self) -> int:
        return len(self.shard)

    def indices(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for ``epoch``, in the order they are served (on the CPU: they go to workers)."""
        return self.shard.indices(epoch)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images, labels)`` for batches ``start_batch .. len(self) - 1`` of ``epoch``."""
        base = mix_seed(self.seed, Stream.AUGMENT, epoch) >> 1  # leaves room for + position below 2**63
        order = self.indices(epoch).tolist()
        # Each training sample's seed is keyed by its position in the global batch order, as one process would see
        # it: the same sharding applied to the positions 0..N-1. (Evaluation draws nothing: any seeds will do.)
        positions = torch.arange(len(self.dataset))
        where = rank_order(positions, self.rank, self.world_size, self.batch_size) if self.train else positions
        where = where[: len(order)].tolist()
        items = [(i, base + pos) for i, pos in zip(order, where, strict=True)][start_batch * self.batch_size :]
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=items,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            generator=generator("cpu", self.seed, Stream.WORKERS, epoch),  # else DataLoader draws from the global RNG
        )
        for images, labels in loader:
            images = images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            yield images.float() * self._scale + self._shift, labels.to(self.device, non_blocking=True)
