"""The named datasets: ``digits`` (bundled, the offline default), ``cifar10``/``cifar100``, ``mnist``/``fashion-mnist``.

Each source returns a :class:`Decoded`: the train and test splits as uint8 tensors ``(N, C, H, W)`` in the
dataset's native channels, plus what ``cnnzoo data`` reports. Splitting off validation, channel conversion and
normalisation happen in :func:`cnnzoo.data.load.load_data`, the same for every source.
"""

from __future__ import annotations

import logging
import math
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import datasets

from cnnzoo.data.bundle import DataError

log = logging.getLogger("cnnzoo.data")

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

    The file names, URL and checksums are torchvision's (``datasets.CIFAR10.train_list`` etc.), and download is
    torchvision's own download-and-md5 code. Reading is ours, a few lines mirroring torchvision's reader: its
    ``CIFAR10(download=False)`` refuses any file whose md5 differs (a re-packaged copy, the tiny files the tests
    write) and then reads with plain ``pickle.load``, which runs whatever a tampered file asks. We warn (one line)
    when a file's md5 is not the release's, and read every file through a restricted unpickler that admits only
    numpy arrays and plain values, so a data file can never run code.
    """
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    folder = root / cls.base_folder
    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    _fetch_if_missing(
        name,
        folder,
        files,
        root,
        download,
        lambda: cls(str(root), train=True, download=True),
        f"extract {cls.filename} ({cls.url}) into {root}",
    )
    _check_md5(name, folder, [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])])
    train_x, train_y = _read_cifar_batches(name, folder, cls.train_list)
    test_x, test_y = _read_cifar_batches(name, folder, cls.test_list)
    classes = _cifar_classes(folder, cls.meta, train_y, test_y)
    return Decoded(
        name,
        classes,
        train_x,
        train_y,
        test_x,
        test_y,
        flip=True,
        default_val=CIFAR_VAL,
        info={
            "source": f"{folder} (python-pickle release)",
            "sizes": {"32x32": len(train_x) + len(test_x)},
            "modes": {"RGB": len(train_x) + len(test_x)},
        },
    )


def _read_cifar_batches(
    name: str, folder: Path, batch_files: list[tuple[str, str]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The images (uint8 ``(N, 3, 32, 32)``) and labels of CIFAR batch files (``(file name, md5)`` pairs), joined."""
    label_key = "labels" if name == "cifar10" else "fine_labels"
    xs, ys = [], []
    for f, _ in batch_files:
        entry = _unpickle(folder / f)
        try:
            xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))  # rows are R, G, B planes
            ys.append(np.asarray(entry[label_key], dtype=np.int64))
        except (KeyError, ValueError, TypeError, OverflowError, IndexError) as e:
            raise DataError(f"{folder / f}: not a {name} batch file ({type(e).__name__}: {e})") from None
        if len(xs[-1]) != len(ys[-1]):
            raise DataError(f"{folder / f}: {len(xs[-1])} images but {len(ys[-1])} labels")
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _cifar_classes(folder: Path, meta_info: dict, train_y: torch.Tensor, test_y: torch.Tensor) -> list[str]:
    """The class names in the release's meta file (``meta_info``: torchvision's ``cls.meta``), once both splits have
    images and every label names one of them."""
    names_key = meta_info["key"]  # "label_names" / "fine_label_names"
    meta = _unpickle(folder / meta_info["filename"])
    names = meta.get(names_key) if isinstance(meta, dict) else None
    classes = [str(c) for c in names] if isinstance(names, (list, tuple)) else []
    labels = torch.cat([train_y, test_y])
    if not classes or not len(train_y) or not len(test_y) or labels.min() < 0 or labels.max() >= len(classes):
        raise DataError(
            f"{folder}: expected images in every split and {names_key!r} in {meta_info['filename']} naming every label"
        )
    return classes


def load_mnist(name: str, root: Path, download: bool | None) -> Decoded:
    """MNIST or Fashion-MNIST from the four idx files under ``root/<MNIST|FashionMNIST>/raw`` (torchvision's layout).

    File names, mirrors and download are torchvision's; the idx files are read by :func:`read_idx`, which checks
    the header against the file's size before reading a byte of data (torchvision's reader trusts the header).
    """
    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    folder = root / cls.__name__ / "raw"
    files = [Path(url).stem for url, _ in cls.resources]  # the .gz names without .gz
    _fetch_if_missing(
        name,
        folder,
        files,
        root,
        download,
        lambda: cls(str(root), train=True, download=True),
        f"download the four .gz files from {cls.mirrors[0]} and gunzip them there",
    )
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(folder / f"{prefix}-images-idx3-ubyte", ndim=3)
        labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte", ndim=1).long()
        if len(images) != len(labels):
            raise DataError(
                f"{folder}: {prefix} image and label files disagree on the number of samples "
                f"({len(images)} vs {len(labels)})"
            )
        if len(labels) and int(labels.max()) >= len(cls.classes):
            raise DataError(
                f"{folder / f'{prefix}-labels-idx1-ubyte'}: label {int(labels.max())} out of range "
                f"(expected 0..{len(cls.classes) - 1})"
            )
        splits[split] = images.unsqueeze(1), labels
    if not len(splits["train"][1]) or not len(splits["test"][1]):
        raise DataError(f"{folder}: expected images in both the train and the t10k files")
    if splits["train"][0].shape[-2:] != splits["test"][0].shape[-2:]:
        raise DataError(f"{folder}: the train and t10k images differ in size")
    n = len(splits["train"][1]) + len(splits["test"][1])
    h, w = splits["train"][0].shape[-2:]
    return Decoded(
        name,
        list(cls.classes),
        *splits["train"],
        *splits["test"],
        flip=name == "fashion-mnist",
        default_val=0.1,
        info={"source": f"{folder} (idx files)", "sizes": {f"{w}x{h}": n}, "modes": {"L": n}},
    )


IDX_UBYTE = 0x08  # the idx type code of unsigned bytes, the only one the MNIST releases use


def read_idx(path: Path, *, ndim: int) -> torch.Tensor:
    """An idx file of unsigned bytes with ``ndim`` dimensions as a uint8 tensor (LeCun's format: two zero bytes,
    the type code, the number of dimensions, each dimension as a big-endian int32, then the data).

    Magic, type, dimensions and the file's size are checked first: random bytes are a one-line DataError.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    expected = f"an idx file of unsigned bytes with {ndim} dimension(s)"
    header = 4 + 4 * ndim
    if data[:4] != bytes((0, 0, IDX_UBYTE, ndim)):
        raise DataError(f"{path}: not {expected} (the first 4 bytes should be 00 00 08 {ndim:02x})")
    if len(data) < header:
        raise DataError(f"{path}: truncated: {len(data)} bytes, shorter than the {header}-byte idx header")
    dims = struct.unpack(f">{ndim}i", data[4:header])
    if any(d < 0 for d in dims) or (ndim == 3 and 0 in dims[1:]):
        raise DataError(f"{path}: {expected} with impossible dimensions {dims}")
    size = math.prod(dims)
    if len(data) != header + size:
        raise DataError(
            f"{path}: the header says {' x '.join(map(str, dims))} = {size:,} bytes of data, the file "
            f"holds {len(data) - header:,} (truncated or not {expected})"
        )
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy())


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


# What numpy arrays need to unpickle (numpy 1.x spells the module ``numpy.core``, 2.x ``numpy._core``), and
# ``_codecs.encode``, with which Python 3 pickles bytes at protocol 2. Nothing else may be named in a CIFAR pickle:
# no global here can run code, so a tampered file is refused instead of executed.
_CIFAR_GLOBALS = {
    (core, name) for core in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("_reconstruct", "scalar")
} | {
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Admits only plain values (dicts, lists, strings, bytes, numbers) and numpy arrays: what the release holds."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path):
    """One CIFAR pickle (a Python 2 pickle of numpy arrays, hence latin1) through :class:`_CifarUnpickler`.

    A file that names any other global (``os.system``, a class) is refused, never run; corrupt files are DataError.
    """
    try:
        with open(path, "rb") as f:
            return _CifarUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        if str(e).startswith("refused global"):
            raise DataError(f"{path}: {e}: a CIFAR pickle holds only numpy arrays and plain values") from None
        raise DataError(f"{path}: truncated or not a CIFAR pickle (UnpicklingError)") from None
    except (
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        ImportError,
        IndexError,
        KeyError,
        MemoryError,
        RecursionError,
        OverflowError,
        UnicodeDecodeError,
    ) as e:
        raise DataError(f"{path}: truncated or not a CIFAR pickle ({type(e).__name__})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def _check_md5(name: str, folder: Path, files: list[tuple[str, str]]) -> None:
    """One warning naming the files whose md5 differs from the official release's (torchvision's sums).

    A re-packaged copy may be fine (it is still read through the restricted unpickler), so this warns, not refuses.
    """
    from torchvision.datasets.utils import calculate_md5

    differ = []
    for f, md5 in files:
        try:
            if calculate_md5(str(folder / f)) != md5:
                differ.append(f)
        except OSError:
            differ.append(f)
    if differ:
        log.warning(
            "%s: %s differ(s) from the official %s release (md5); reading anyway, with numpy arrays and "
            "plain values only",
            folder,
            ", ".join(differ),
            name,
        )
