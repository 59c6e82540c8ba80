"""The fast path: a dataset that lives on the device as uint8 and is augmented a whole batch at a time.

Hand-written on purpose rather than a ``torch.utils.data.DataLoader``: for 32x32 images the per-image PIL/tensor
transforms in worker processes cost more than the network's step on a GPU (tens of microseconds of Python per
image against a few microseconds of GPU time), and the workers must pickle every batch back. Here the whole split is
one uint8 tensor on the device (CIFAR-10's 50,000 images are 150 MiB) and each batch is a handful of tensor ops:

1. the batch's indices from the epoch's permutation (``torch.randperm`` with a generator on the device);
2. random crop with zero padding and horizontal flip as ONE gather: each sample's rows and columns are its own
   shifted (and, if flipped, reversed) ``arange``; positions in the padding read as 0 (black), as torchvision's
   ``RandomCrop(32, padding=4)`` pads (He et al. 2016, section 4.2: "4 pixels are padded on each side, and a
   32x32 crop is randomly sampled from the padded image or its horizontal flip"; the paper does not say zero or
   reflect; zero is the fb.resnet.torch / torchvision convention);
3. uint8 -> float32 and normalisation fused into one multiply-add (``torch.addcmul``);
4. optional cutout (DeVries & Taylor 2017, arXiv:1708.04552): a square of side ``cutout`` centred anywhere in the
   image (so it may hang over the edge) set to 0 after normalisation, i.e. to the dataset mean, as their code does.

Images are stored NHWC, so the float batch comes out channels_last without a copy. Randomness is a pure function of
``(seed, epoch, batch index)``: the permutation of an epoch is drawn from a generator seeded by ``(seed, epoch)`` and
each global batch's augmentation from one seeded by ``(seed, epoch, batch)``, so starting an epoch at
``start_batch`` reproduces the rest of an uninterrupted epoch exactly.

DDP: each global batch of an epoch's permutation is cut into ``world_size`` slices, one per rank
(:func:`~cnnzoo.data.bundle.rank_order`), and each rank draws the augmentation of the whole global batch and keeps
its slice, so N ranks train on exactly the batches, augmented alike, of one process of N times the batch; the
incomplete last batch is dropped, as in training. Evaluation splits the samples in order into near-equal contiguous
slices that cover all of them once, so per-rank counts sum to exact totals.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from cnnzoo.data.bundle import Shard, Stream, generator, normaliser


class DeviceLoader:
    """A split held on ``device`` as uint8; yields normalised, augmented, channels_last float32 batches."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: torch.device | str = "cpu",
        train: bool = False,
        seed: int = 0,
        pad: int = 0,
        flip: bool = False,
        cutout: int = 0,
        image_size: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        """``images`` uint8 (N, C, H, W), ``labels`` int64 (N,). ``pad``/``flip``/``cutout`` act only if ``train``.

        ``image_size``: output side; a batch is resized (bilinear) after augmentation when it differs from H, so a
        32x32 dataset can feed a 224x224 net without a 224x224 copy of the dataset in memory.
        """
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        n, c, h, w = images.shape
        self.shard = Shard(n, int(batch_size), train, int(seed), rank, world_size)
        self.device = torch.device(device)
        self.batch_size, self.num_samples = self.shard.batch_size, self.shard.num_samples
        self.train, self.seed = train, int(seed)
        self.pad, self.flip, self.cutout = (pad, flip, cutout) if train else (0, False, 0)
        self.rank, self.world_size = rank, world_size
        # Stored NHWC and, for a training split, already zero-padded by ``pad`` on each side (CIFAR: 40x40, 1.56x the
        # memory): a random crop is then a plain gather, with no masks or clamping per batch. ``images`` is the
        # unpadded view.
        p = self.pad
        self._padded = F.pad(images.to(self.device).permute(0, 2, 3, 1), (0, 0, p, p, p, p)).contiguous()
        self.images = self._padded[:, p : p + h, p : p + w]  # (N, H, W, C)
        self.labels = labels.to(self.device, torch.int64)
        self.image_size = image_size or h
        self._resize = self.image_size != h or self.image_size != w
        self._scale, self._shift = normaliser(mean, std, c, self.device)  # on the last (channel) dim of NHWC batches
        self._rows = torch.arange(h, device=self.device)
        self._cols = torch.arange(w, device=self.device)

    def __len__(self) -> int:
        return len(self.shard)

    def indices(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for ``epoch``, in the order they are served."""
        return self.shard.indices(epoch, self.device)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images, labels)`` for batches ``start_batch .. len(self) - 1`` of ``epoch``."""
        order = self.indices(epoch)
        for b in range(start_batch, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self._batch(idx, epoch, b), self.labels[idx]

    def _batch(self, idx: torch.Tensor, epoch: int, b: int) -> torch.Tensor:
        if self.train and (self.pad or self.flip or self.cutout):
            g = generator(self.device, self.seed, Stream.AUGMENT, epoch, b)
            x = self._augment(idx, g)
        else:
            x = self.images[idx]
        x = torch.addcmul(self._shift, x, self._scale)  # uint8 -> float32 and normalise in one op, (B, H, W, C)
        if self.train and self.cutout:
            x.masked_fill_(self._cutout_mask(x.shape[0], g).unsqueeze(-1), 0.0)
        x = x.permute(0, 3, 1, 2)  # (B, C, H, W) view with channels_last strides
        if self._resize:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return x.contiguous(memory_format=torch.channels_last)

    def _augment(self, idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Random crop of the zero-padded images and random horizontal flip, as one batched gather (uint8 out)."""
        bsz, (hp, wp, c), p = idx.shape[0], self._padded.shape[1:], self.pad
        dy = self._draw(2 * p + 1, bsz, g)  # crop offset in the padded image, (B, 1)
        dx = self._draw(2 * p + 1, bsz, g)
        rows = self._rows + dy  # (B, H): padded row of each output row
        cols = self._cols + dx  # (B, W)
        if self.flip:
            flipped = self._draw(2, bsz, g).bool()
            cols = torch.where(flipped, cols.flip(1), cols)
        # One index_select of whole pixels (C bytes each) by flat position (n * Hp + row) * Wp + col: 2-3x faster on
        # the CPU than advanced indexing with three index tensors, and a single kernel on a GPU.
        flat = ((idx[:, None] * hp + rows)[:, :, None] * wp + cols[:, None, :]).view(-1)
        return self._padded.view(-1, c).index_select(0, flat).view(bsz, rows.shape[1], cols.shape[1], c)

    def _draw(self, high: int, bsz: int, g: torch.Generator) -> torch.Tensor:
        """(B, 1) integers in [0, high) for this rank's slice of the global batch: the draw is made for all
        ``world_size`` slices, so every sample gets the augmentation it would get in one process."""
        every = torch.randint(0, high, (bsz * self.world_size, 1), generator=g, device=self.device)
        return every[self.rank * bsz : (self.rank + 1) * bsz]

    def _cutout_mask(self, bsz: int, g: torch.Generator) -> torch.Tensor:
        """(B, H, W) bool: a ``cutout`` x ``cutout`` square per image, centre uniform over the image."""
        h, w = self.images.shape[1:3]
        cy = self._draw(h, bsz, g)
        cx = self._draw(w, bsz, g)
        top, left = cy - self.cutout // 2, cx - self.cutout // 2
        in_rows = (self._rows >= top) & (self._rows < top + self.cutout)  # (B, H)
        in_cols = (self._cols >= left) & (self._cols < left + self.cutout)  # (B, W)
        return in_rows.unsqueeze(2) & in_cols.unsqueeze(1)


class EmptyLoader:
    """A split with no samples (``val_size=0``): zero batches, so loops over it simply do nothing."""

    batch_size: int
    num_samples: int = 0

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size

    def __len__(self) -> int:
        return 0

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(())
