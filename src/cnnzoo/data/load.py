"""``load_data``: one entry point from a ``--data`` argument (a dataset name or a folder) to a :class:`DataBundle`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnzoo.data.augment import eval_transform, reference_extras, uses_pca
from cnnzoo.data.bundle import (
    AUGMENTS,
    PAPER_AUGMENTS,
    DataBundle,
    DataError,
    Stream,
    channel_stats,
    default_home,
    generator,
    to_channels,
)
from cnnzoo.data.device_loader import DeviceLoader, EmptyLoader
from cnnzoo.data.folders import SMALL_MAX, Streamed, decode_file, load_folder
from cnnzoo.data.sources import Decoded, load_cifar, load_digits, load_mnist
from cnnzoo.data.stream import IMAGENET_MEAN, IMAGENET_STD, StreamLoader

# The named datasets: name -> reader(name, data root, download) of its uint8 tensors. A new source is one entry here
# (and its reader in sources.py); any other name is read as an image folder or refused in one line.
SOURCES: dict[str, Callable[[str, Path, bool | None], Decoded]] = {
    "digits": lambda _name, _root, _download: load_digits(),
    "cifar10": load_cifar,
    "cifar100": load_cifar,
    "mnist": load_mnist,
    "fashion-mnist": load_mnist,
}
NAMED = tuple(SOURCES)


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """Where named datasets live: ``data_dir``, else ``$CNNZOO_DATA_DIR``, else ``~/.cache/cnnzoo/data``."""
    if data_dir:
        return Path(data_dir).expanduser()
    return Path(os.environ.get("CNNZOO_DATA_DIR") or default_home() / "data")


def decode(
    data: str | os.PathLike, *, data_dir: str | None = None, strict: bool = False, download: bool | None = None
) -> Decoded | Streamed:
    """Read ``data`` (a name in :data:`SOURCES` or an image folder path): uint8 tensors, or a file index if large."""
    name = str(data)
    if name in SOURCES:
        return SOURCES[name](name, data_root(data_dir), download)
    if Path(name).expanduser().exists() or os.sep in name or name.startswith("."):
        return load_folder(name, strict=strict)
    raise DataError(f"unknown dataset {name!r}: expected one of {', '.join(NAMED)} or the path of an image folder")


def carve(n: int, val_size: int | float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n)`` into (train, val) index tensors with a permutation seeded by ``seed``."""
    count = round(val_size * n) if isinstance(val_size, float) else int(val_size)
    if isinstance(val_size, float) and not 0.0 <= val_size < 1.0:
        raise DataError(f"val_size as a fraction must be in [0, 1), got {val_size}")
    if count < 0 or count >= n:
        raise DataError(f"val_size {val_size} leaves no training images (the training split has {n})")
    perm = torch.randperm(n, generator=generator("cpu", seed, Stream.VAL_SPLIT))
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
    num_workers: int | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    auto_augment: str | None = None,
    random_erase: float = 0.0,
) -> DataBundle:
    """Load ``data`` (a dataset name or an image folder) as train/val/test loaders on ``device``.

    ``image_size``: the side of the (square) batches; None = the data's own (the longer side of non-square small
    images, which are stretched to a square) or 224 for streamed folders. ``in_channels``: None = the data's own.
    ``val_size``: images carved from the training split for validation (an int, or a fraction in [0, 1)); None
    means 5,000 for CIFAR and 10% otherwise; 0 gives an empty ``val``. ``subset``: keep only this many training
    images (after the validation carve). ``augment``: ``"standard"`` = random crop with padding 4 (at 32 px) and,
    where flips keep the class, horizontal flip; ``"none"``; streamed folders: :mod:`cnnzoo.data.augment`
    (``alexnet | vgg | googlenet | resnet``: the papers' own, refused for data held on the device).
    ``cutout``: side of the cutout square, 0 = off.
    ``download``: True fetches a missing named dataset; None/False never touch the network.
    ``num_workers``: DataLoader workers for streamed (large-image) folders; default min(8, CPUs).
    ``mean``, ``std``: the normalisation to use (e.g. pretrained weights'); None = the data's own statistics
    (ImageNet's for streamed folders). ``auto_augment`` (``randaugment | trivialaugment | autoaugment``),
    ``random_erase`` (a probability): torchvision's reference augmentations, added per sample to streamed folders'
    training images (:func:`cnnzoo.data.augment.reference_extras`); refused for data held on the device.
    """
    _check_args(batch_size, eval_batch_size, augment, cutout, seed, rank, world_size)
    decoded = decode(data, data_dir=data_dir, strict=strict, download=download)
    if isinstance(decoded, Streamed):
        return _stream_bundle(
            decoded,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size or batch_size,
            device=device,
            image_size=image_size or 224,
            in_channels=in_channels,
            val_size=val_size,
            seed=seed,
            rank=rank,
            world_size=world_size,
            subset=subset,
            num_workers=num_workers,
            augment=augment or "none",
            norm=_norm(mean, std),
            auto_augment=auto_augment,
            random_erase=random_erase,
        )
    _check_batch_augments(data, augment, auto_augment, random_erase)
    return _device_bundle(
        decoded,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size or batch_size,
        device=device,
        image_size=image_size,
        in_channels=in_channels,
        val_size=val_size,
        seed=seed,
        augment=augment or "none",
        cutout=cutout,
        rank=rank,
        world_size=world_size,
        subset=subset,
        norm=_norm(mean, std),
    )


def _check_args(
    batch_size: int,
    eval_batch_size: int | None,
    augment: str | None,
    cutout: int,
    seed: int,
    rank: int,
    world_size: int,
) -> None:
    """Refuse arguments no data could be loaded with, before any is read."""
    if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
        raise DataError(f"batch sizes must be >= 1, got {batch_size} / {eval_batch_size}")
    if augment not in (*AUGMENTS, None):
        raise DataError(f"unknown augment {augment!r}: expected one of {', '.join(AUGMENTS)}")
    if cutout < 0:
        raise DataError(f"cutout must be >= 0, got {cutout}")
    if seed < 0:
        raise DataError(f"seed must be >= 0, got {seed}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"rank {rank} must be in [0, world_size={world_size})")


def _check_batch_augments(data: str, augment: str | None, auto_augment: str | None, random_erase: float) -> None:
    """Data held on the device is augmented in batches: the per-sample augmentations of streamed folders (the
    papers', torchvision reference's) are refused for it."""
    if auto_augment or random_erase:  # per-sample, like the papers' augmentations below
        raise DataError(
            f"--auto-augment and --random-erase apply to image folders streamed from disk (images over "
            f"{SMALL_MAX} px); {data} is held on the device and augmented in batches: drop them"
        )
    if augment in PAPER_AUGMENTS:  # per-sample transforms of large images; small data is augmented in batches
        raise DataError(
            f"--augment {augment} applies to image folders streamed from disk (images over {SMALL_MAX} "
            f"px); {data} is held on the device: use --augment standard or none"
        )


def _device_bundle(
    d: Decoded,
    *,
    batch_size,
    eval_batch_size,
    device,
    image_size,
    in_channels,
    val_size,
    seed,
    augment,
    cutout,
    rank,
    world_size,
    subset,
    norm,
) -> DataBundle:
    """Carve validation, convert channels, compute normalisation, and put the three splits on the device."""
    in_channels = _check_norm(norm, in_channels or d.train_images.shape[1])
    train_x, test_x = to_channels(d.train_images, in_channels), to_channels(d.test_images, in_channels)
    train_idx, val_idx = _train_val(len(train_x), d.default_val if val_size is None else val_size, seed, subset)
    mean, std = norm or channel_stats(train_x[train_idx])  # of the images trained on: validation stays unseen
    native = max(train_x.shape[-2:])  # non-square images are stretched to native x native (the nets want squares)
    size = image_size or native
    common = dict(mean=mean, std=std, device=device, image_size=size, rank=rank, world_size=world_size)
    standard = augment == "standard"
    train = DeviceLoader(
        train_x[train_idx],
        d.train_labels[train_idx],
        batch_size=batch_size,
        train=True,
        seed=seed,
        pad=max(1, round(native / 8)) if standard else 0,
        flip=standard and d.flip,
        cutout=cutout,
        **common,
    )
    val = (
        DeviceLoader(train_x[val_idx], d.train_labels[val_idx], batch_size=eval_batch_size, **common)
        if len(val_idx)
        else EmptyLoader(eval_batch_size)
    )
    test = DeviceLoader(test_x, d.test_labels, batch_size=eval_batch_size, **common)
    info = dict(d.info, train=len(train_idx), val=len(val_idx), test=len(test_x))
    return DataBundle(d.name, list(d.classes), in_channels, size, mean, std, train, val, test, info)


def _train_val(n: int, val_size: int | float, seed: int, subset: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    train_idx, val_idx = carve(n, val_size, seed)
    if subset is not None:
        if subset < 1:
            raise DataError(f"subset must be >= 1, got {subset}")
        keep = torch.randperm(len(train_idx), generator=generator("cpu", seed, Stream.SUBSET))[:subset]
        train_idx = train_idx[keep.sort().values]
    return train_idx, val_idx


def _stream_bundle(
    d: Streamed,
    *,
    batch_size,
    eval_batch_size,
    device,
    image_size,
    in_channels,
    val_size,
    seed,
    rank,
    world_size,
    subset,
    num_workers,
    augment,
    norm,
    auto_augment,
    random_erase,
) -> DataBundle:
    """Loaders that decode a large-image folder each epoch; ImageNet's normalisation (no pass over the data)."""
    in_channels = _check_norm(norm, in_channels or d.in_channels)
    if in_channels not in (1, 3):
        raise DataError(f"in_channels must be 1 or 3 for image folders, got {in_channels}")
    mean, std = norm or ((IMAGENET_MEAN, IMAGENET_STD) if in_channels == 3 else ((0.449,), (0.226,)))
    train_idx, val_idx = _train_val(len(d.train_files), d.default_val if val_size is None else val_size, seed, subset)
    common = dict(
        image_size=image_size,
        channels=in_channels,
        mean=mean,
        std=std,
        device=device,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
    )

    def split(idx: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        return [d.train_files[i] for i in idx.tolist()], d.train_labels[idx]

    if auto_augment and uses_pca(augment):
        raise DataError(
            f"--auto-augment works on uint8 images: not after --augment {augment}, whose PCA lighting "
            "makes them float; use --augment standard (torchvision's reference: crop, flip, policy)"
        )
    extra = reference_extras(auto_augment, random_erase, mean)
    train = StreamLoader(
        *split(train_idx), batch_size=batch_size, train=True, seed=seed, augment=augment, extra=extra, **common
    )
    val = (
        StreamLoader(*split(val_idx), batch_size=eval_batch_size, **common)
        if len(val_idx)
        else EmptyLoader(eval_batch_size)
    )
    test = StreamLoader(d.test_files, d.test_labels, batch_size=eval_batch_size, **common)
    info = dict(d.info, train=len(train_idx), val=len(val_idx), test=len(d.test_files), streamed=True)
    return DataBundle(d.name, list(d.classes), in_channels, image_size, mean, std, train, val, test, info)


def _norm(mean, std) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    return (tuple(mean), tuple(std)) if mean else None


def _check_norm(norm, in_channels: int) -> int:
    if norm is not None and len(norm[0]) != in_channels:
        raise DataError(
            f"the normalisation has {len(norm[0])} channels (mean {list(norm[0])}), the data {in_channels}: "
            f"pass --in-channels {len(norm[0])} or a --mean/--std of {in_channels} values"
        )
    return in_channels


def load_images(
    paths: list[str | os.PathLike],
    *,
    in_channels: int,
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> torch.Tensor:
    """Image files preprocessed the way evaluation sees them: float32 ``(N, C, image_size, image_size)``, CPU.

    Small inputs (``image_size <= 64``, the device-resident datasets) are resized to image_size x image_size as a
    whole (bilinear, antialiased); larger ones get the streamed folders' eval transform (resize the short side to
    image_size * 256 / 224, centre crop). A missing or non-image path is a :class:`DataError`.
    """
    if not paths:
        raise DataError("no image files given")
    images = []
    for path in paths:
        if not Path(path).is_file():
            raise DataError(f"{path}: no such file (expected an image file)")
        images.append(decode_file(path, 1 if in_channels == 1 else 3))
    return preprocess_images(images, in_channels=in_channels, image_size=image_size, mean=mean, std=std)


def preprocess_images(
    images: list[torch.Tensor],
    *,
    in_channels: int,
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> torch.Tensor:
    """uint8 images ``(C, H, W)`` (C 1 or 3, any size) preprocessed as :func:`load_images` does its files."""
    out = []
    for image in images:
        x = to_channels(image[None], in_channels)[0]
        if image_size > SMALL_MAX:
            x = eval_transform(image_size)(x)
        elif x.shape[1:] != (image_size, image_size):
            x = (
                F.interpolate(
                    x[None].float(), size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
                )[0]
                .round()
                .clamp(0, 255)
            )
        out.append(x.float())
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((torch.stack(out) / 255.0 - mean_t) / std_t).contiguous(memory_format=torch.channels_last)


def save_example(
    data: str | os.PathLike,
    class_name: str,
    path: str | os.PathLike,
    *,
    index: int = 0,
    data_dir: str | None = None,
    download: bool | None = None,
) -> Path:
    """Write the ``index``-th test image of class ``class_name`` of ``data`` to ``path`` as a PNG (at the size and in
    the channels the data holds), so the README's examples have an image to predict on: ``save_example("digits",
    "7", "seven.png")``. Returns the path."""
    import io

    from PIL import Image

    from cnnzoo.atomic import write_atomic

    d = decode(data, data_dir=data_dir, download=download)
    if class_name not in d.classes:
        shown = ", ".join(d.classes[:12]) + (", ..." if len(d.classes) > 12 else "")
        raise DataError(f"{class_name!r} is not a class of {d.name} ({shown})")
    which = (d.test_labels == d.classes.index(class_name)).nonzero().flatten().tolist()
    if not 0 <= index < len(which):
        raise DataError(f"{d.name} has {len(which)} test images of class {class_name!r}; index {index} is out of range")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise DataError(f"{path}: expected a .png file name")
    if isinstance(d, Streamed):
        image = decode_file(d.test_files[which[index]], d.in_channels)
    else:
        image = d.test_images[which[index]]
    array = image.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())
    return path
