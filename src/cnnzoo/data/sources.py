"""The named datasets: ``digits`` (bundled, the offline default), ``cifar10``/``cifar100``, ``mnist``/``fashion-mnist``.

Each source returns a :class:`Decoded`: the train and test splits as uint8 tensors ``(N, C, H, W)`` in the
dataset's native channels, plus what ``cnnzoo data`` reports. Splitting off validation, channel conversion and
normalisation happen in :func:`cnnzoo.data.load.load_data`, the same for every source.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import datasets

from cnnzoo.data.bundle import DataError

DIGITS_TEST_FRACTION = 0.2  # scikit-learn's digits has no test split; we hold out a fixed, stratified 20%
DIGITS_SPLIT_SEED = 0  # fixed, not the run's seed: every run reports on the same test images
CIFAR_VAL = 5000  # the validation images carved from CIFAR's 50,000 training images (He et al. 2016, 45k/5k)


@dataclass
class Decoded:
    """A dataset decoded to uint8, before validation is carved from its training split."""

    name: str
    classes: list[str]
    train_images: torch.Tensor  # uint8 (N, C, H, W)
    train_labels: torch.Tensor  # int64 (N,)
    test_images: torch.Tensor
    test_labels: torch.Tensor
    flip: bool = True  # whether horizontal flips preserve the class (not for digits)
    default_val: int | float = 0.1  # images (int) or fraction of the training split (float)
    info: dict = field(default_factory=dict)


def load_digits() -> Decoded:
    """scikit-learn's bundled handwritten digits (UCI optdigits test set: 1,797 8x8 images of 0..9, no download).

    Pixel values 0..16 become uint8 0..255; the 8x8 images are upsampled once to 32x32 (bilinear) so the CIFAR nets
    run on them unchanged. The test split is a stratified 20% (360 images) chosen with a fixed seed.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    x = torch.from_numpy(bunch.images).float().unsqueeze(1) * (255.0 / 16.0)  # (1797, 1, 8, 8) in [0, 255]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8)
    y = torch.from_numpy(bunch.target).long()
    train_idx, test_idx = train_test_split(
        torch.arange(len(y)).numpy(), test_size=DIGITS_TEST_FRACTION, stratify=y.numpy(), random_state=DIGITS_SPLIT_SEED
    )
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return Decoded(
        name="digits",
        classes=[str(d) for d in range(10)],
        train_images=x[train_idx],
        train_labels=y[train_idx],
        test_images=x[test_idx],
        test_labels=y[test_idx],
        flip=False,
        info={
            "source": "scikit-learn load_digits (bundled), 8x8 upsampled to 32x32",
            "test_split": f"stratified {DIGITS_TEST_FRACTION:.0%} of the 1,797 images, fixed seed {DIGITS_SPLIT_SEED}",
            "sizes": {"8x8": len(y)},
            "modes": {"L": len(y)},
        },
    )


def load_cifar(name: str, root: Path, download: bool | None) -> Decoded:
    """CIFAR-10 or CIFAR-100 from the python-pickle release under ``root`` (the layout torchvision reads).

    The file names, URL and archive checksum are torchvision's (``datasets.CIFAR10.train_list`` etc.), and download
    is torchvision's own download-and-md5 code. Reading is ours, a few lines mirroring torchvision's reader: its
    ``CIFAR10(download=False)`` md5-checks every file on each construction (``_check_integrity`` and
    ``_load_meta``) with no way to turn that off, which rejects any re-packaged copy (and the tiny files the tests
    write). We check that every file is present and has the release's structure instead; the checksum still guards
    every download (``download_and_extract_archive(..., md5=tgz_md5)``).
    """
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    folder = root / cls.base_folder
    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    _fetch_if_missing(name, folder, files, root, download, lambda: cls(str(root), train=True, download=True),
                      f"extract {cls.filename} ({cls.url}) into {root}")  # fmt: skip
    label_key = "labels" if name == "cifar10" else "fine_labels"
    names_key = cls.meta["key"]  # "label_names" / "fine_label_names"

    def read(batch_files: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for f, _ in batch_files:
            entry = _unpickle(folder / f)
            try:
                xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))  # rows are R, G, B planes
                ys.append(np.asarray(entry[label_key], dtype=np.int64))
            except (KeyError, ValueError, TypeError) as e:
                raise DataError(f"{folder / f}: not a {name} batch file ({e})") from None
            if len(xs[-1]) != len(ys[-1]):
                raise DataError(f"{folder / f}: {len(xs[-1])} images but {len(ys[-1])} labels")
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    train_x, train_y = read(cls.train_list)
    test_x, test_y = read(cls.test_list)
    meta = _unpickle(folder / cls.meta["filename"])
    classes = [str(c) for c in meta.get(names_key, [])] if isinstance(meta, dict) else []
    if not classes or int(max(train_y.max(), test_y.max())) >= len(classes):
        raise DataError(f"{folder / cls.meta['filename']}: expected {names_key!r} naming every label")
    return Decoded(
        name, classes, train_x, train_y, test_x, test_y, flip=True, default_val=CIFAR_VAL,
        info={"source": f"{folder} (python-pickle release)", "sizes": {"32x32": len(train_x) + len(test_x)},
              "modes": {"RGB": len(train_x) + len(test_x)}},
    )  # fmt: skip


def load_mnist(name: str, root: Path, download: bool | None) -> Decoded:
    """MNIST or Fashion-MNIST from the four idx files under ``root/<MNIST|FashionMNIST>/raw`` (torchvision's layout).

    torchvision's reader is used as is: without ``download`` it only checks that the files exist (no md5), and it
    reads the idx format itself (``read_image_file``/``read_label_file``).
    """
    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    folder = root / cls.__name__ / "raw"
    files = [Path(url).stem for url, _ in cls.resources]  # the .gz names without .gz
    _fetch_if_missing(name, folder, files, root, download, lambda: cls(str(root), train=True, download=True),
                      f"download the four .gz files from {cls.mirrors[0]} and gunzip them there")  # fmt: skip
    try:
        train, test = cls(str(root), train=True), cls(str(root), train=False)
    except (RuntimeError, ValueError, OSError, AssertionError) as e:
        raise DataError(f"{folder}: could not read the idx files ({str(e).splitlines()[0]})") from None
    if len(train.data) != len(train.targets) or len(test.data) != len(test.targets):
        raise DataError(f"{folder}: image and label files disagree on the number of samples")
    n = len(train.data) + len(test.data)
    return Decoded(
        name, list(cls.classes), train.data.unsqueeze(1), train.targets.long(), test.data.unsqueeze(1),
        test.targets.long(), flip=name == "fashion-mnist", default_val=0.1,
        info={"source": f"{folder} (idx files)", "sizes": {"28x28": n}, "modes": {"L": n}},
    )  # fmt: skip


def _fetch_if_missing(name, folder: Path, files: list[str], root: Path, download: bool | None, fetch, how: str) -> None:
    """Download with torchvision's code when asked; otherwise a missing file is a one-line error saying what to do."""
    missing = [f for f in files if not (folder / f).is_file()]
    if not missing:
        return
    if not download:
        raise DataError(
            f"{name} not found: missing {', '.join(missing)} in {folder}; {how}, or pass --download "
            f"(download=True) to fetch it"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
        fetch()
    except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError
        raise DataError(f"could not download {name} into {root}: {str(e).splitlines()[0] if str(e) else e!r}") from None


def _unpickle(path: Path):
    """One CIFAR pickle (a Python 2 pickle of numpy arrays, hence latin1), corrupt files as DataError."""
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise DataError(f"{path}: truncated or not a CIFAR pickle ({type(e).__name__})") from None
