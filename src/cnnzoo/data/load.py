"""``load_data``: one entry point from a ``--data`` argument (a dataset name or a folder) to a :class:`DataBundle`."""

from __future__ import annotations

import torch

from cnnzoo.data.bundle import DataBundle, DataError, channel_stats, generator, to_channels
from cnnzoo.data.device_loader import DeviceLoader, EmptyLoader
from cnnzoo.data.sources import Decoded, load_digits

NAMED = ("digits", "cifar10", "cifar100", "mnist", "fashion-mnist")
AUGMENTS = ("standard", "none")
_VAL_SPLIT = 2  # generator stream tag for the validation carve


def decode(data: str, *, data_dir: str | None = None, strict: bool = False, download: bool | None = None) -> Decoded:
    """Decode ``data`` (a name in ``NAMED`` or a folder path) to uint8 train and test splits."""
    if data == "digits":
        return load_digits()
    raise DataError(f"unknown dataset {data!r}: expected one of {', '.join(NAMED)} or an image folder path")


def carve(n: int, val_size: int | float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n)`` into (train, val) index tensors with a permutation seeded by ``seed``."""
    count = round(val_size * n) if isinstance(val_size, float) else int(val_size)
    if isinstance(val_size, float) and not 0.0 <= val_size < 1.0:
        raise DataError(f"val_size as a fraction must be in [0, 1), got {val_size}")
    if count < 0 or count >= n:
        raise DataError(f"val_size {val_size} leaves no training images (the training split has {n})")
    perm = torch.randperm(n, generator=generator("cpu", seed, _VAL_SPLIT))
    return perm[count:].sort().values, perm[:count].sort().values


def load_data(
    data: str,
    *,
    data_dir: str | None = None,
    batch_size: int = 128,
    eval_batch_size: int | None = None,
    device: torch.device | str = "cpu",
    image_size: int | None = None,
    in_channels: int | None = None,
    val_size: int | float | None = None,
    seed: int = 0,
    augment: str | None = "standard",
    cutout: int = 0,
    strict: bool = False,
    download: bool | None = None,
    rank: int = 0,
    world_size: int = 1,
    subset: int | None = None,
) -> DataBundle:
    """Load ``data`` (a dataset name or an image folder) as train/val/test loaders on ``device``.

    ``val_size``: images carved from the training split for validation (an int, or a fraction in [0, 1)); None
    means 5,000 for CIFAR and 10% otherwise; 0 gives an empty ``val``. ``subset``: keep only this many training
    images (after the validation carve). ``augment``: ``"standard"`` = random crop with padding 4 (at 32 px) and,
    where flips keep the class, horizontal flip; ``"none"``. ``cutout``: side of the cutout square, 0 = off.
    ``download``: True fetches a missing named dataset; None/False never touch the network.
    """
    if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
        raise DataError(f"batch sizes must be >= 1, got {batch_size} / {eval_batch_size}")
    if augment not in (*AUGMENTS, None):
        raise DataError(f"unknown augment {augment!r}: expected one of {', '.join(AUGMENTS)}")
    if cutout < 0:
        raise DataError(f"cutout must be >= 0, got {cutout}")
    if seed < 0:
        raise DataError(f"seed must be >= 0, got {seed}")
    decoded = decode(data, data_dir=data_dir, strict=strict, download=download)
    return _device_bundle(
        decoded, batch_size=batch_size, eval_batch_size=eval_batch_size or batch_size, device=device,
        image_size=image_size, in_channels=in_channels, val_size=val_size, seed=seed, augment=augment or "none",
        cutout=cutout, rank=rank, world_size=world_size, subset=subset,
    )  # fmt: skip


def _device_bundle(
    d: Decoded, *, batch_size, eval_batch_size, device, image_size, in_channels, val_size, seed, augment, cutout, rank,
    world_size, subset,
) -> DataBundle:  # fmt: skip
    """Carve validation, convert channels, compute normalisation, and put the three splits on the device."""
    in_channels = in_channels or d.train_images.shape[1]
    train_x, test_x = to_channels(d.train_images, in_channels), to_channels(d.test_images, in_channels)
    train_idx, val_idx = carve(len(train_x), d.default_val if val_size is None else val_size, seed)
    if subset is not None:
        if subset < 1:
            raise DataError(f"subset must be >= 1, got {subset}")
        keep = torch.randperm(len(train_idx), generator=generator("cpu", seed, _VAL_SPLIT + 1))[:subset]
        train_idx = train_idx[keep.sort().values]
    mean, std = channel_stats(train_x[train_idx])  # of the images trained on, so validation stays unseen
    native = train_x.shape[-1]
    size = image_size or native
    common = dict(mean=mean, std=std, device=device, image_size=size, rank=rank, world_size=world_size)
    standard = augment == "standard"
    train = DeviceLoader(
        train_x[train_idx], d.train_labels[train_idx], batch_size=batch_size, train=True, seed=seed,
        pad=max(1, round(native / 8)) if standard else 0, flip=standard and d.flip, cutout=cutout, **common,
    )  # fmt: skip
    val = (
        DeviceLoader(train_x[val_idx], d.train_labels[val_idx], batch_size=eval_batch_size, **common)
        if len(val_idx)
        else EmptyLoader(eval_batch_size)
    )
    test = DeviceLoader(test_x, d.test_labels, batch_size=eval_batch_size, **common)
    info = dict(d.info, train=len(train_idx), val=len(val_idx), test=len(test_x))
    return DataBundle(d.name, list(d.classes), in_channels, size, mean, std, train, val, test, info)
