"""Image folders: ``PATH/train/<class>/<image>`` + ``PATH/test/<class>/...`` (or ``val/``), or ``PATH/<class>/...``.

Scanning, checking and decoding, the way a careful user expects:

- Classes are the sorted names of the (non-hidden) subfolders of the training split; files below a class folder are
  found recursively, as torchvision's ``ImageFolder``. JPEG, PNG, BMP and WebP are read.
- Hidden files, files without an image suffix, and image files that cannot be decoded (truncated, corrupt) are
  skipped with one warning counting them and naming the first few; ``strict=True`` makes that a :class:`DataError`.
- A missing path, fewer than two classes, a class folder with no usable image, and a test split whose classes
  differ from the training split's are a one-line :class:`DataError` naming the path and what was expected.
- Decoding uses ``torchvision.io.decode_image`` (RGB or GRAY, which also converts palette, RGBA and CMYK images),
  falling back to PIL for what it cannot read (BMP). Alpha is dropped, not composited. A folder is read as grey
  (1 channel) when every image is greyscale, else as RGB; the loader converts to the model's channel count.
- Small images (every side <= ``SMALL_MAX`` px, e.g. CIFAR JPEGs) are decoded once into one uint8 tensor, cached
  (:mod:`cnnzoo.data.cache`) and served from the device; images of another size than the most common one are
  resized to it (bilinear, antialiased). Larger images (ImageNet-style) are only indexed (file list, sizes, modes,
  cached the same way) and streamed by :mod:`cnnzoo.data.stream`.
- A single folder without ``train/`` gets a fixed, stratified 20% test split (seed 0, the same in every run).
"""

from __future__ import annotations

import io
import logging
import os
import stat
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from rich.console import Console
from rich.progress import Progress
from torchvision.transforms import v2

from cnnzoo.data.bundle import DataError, to_channels
from cnnzoo.data.cache import cache_path, content_key, load_or_build
from cnnzoo.data.sources import Decoded
from cnnzoo.errors import is_utf8, shown

log = logging.getLogger("cnnzoo.data")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
PIL_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "WEBP")  # MPO: JPEGs with extra frames, as some cameras write
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
SMALL_MAX = 64  # images with both sides <= this many pixels go to the device-resident path
FOLDER_TEST_FRACTION = 0.2
FOLDER_SPLIT_SEED = 0
SHOW_SKIPPED = 3  # how many skipped files the warning names


@dataclass
class Streamed:
    """A large-image folder, indexed but not decoded: the streaming loader reads the files each epoch."""

    name: str
    classes: list[str]
    train_files: list[str]  # absolute paths
    train_labels: torch.Tensor
    test_files: list[str]
    test_labels: torch.Tensor
    in_channels: int
    default_val: int | float = 0.1
    info: dict = field(default_factory=dict)


def load_folder(root: str | Path, *, strict: bool = False) -> Decoded | Streamed:
    """Scan, check and (for small images) decode the folder ``root``, through the decoded cache."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (expected a dataset name or an image folder of class subfolders)")
    train_dir, test_dir = _split_dirs(root)
    classes, train, skipped, stats = _list_split(train_dir, root, None)
    test: list[tuple[str, int]] = []
    if test_dir is not None:
        _, test, test_skipped, test_stats = _list_split(test_dir, root, classes)
        skipped += test_skipped
        stats += test_stats
    key = content_key(stats, "folder", str(train_dir.relative_to(root)), test_dir and str(test_dir.relative_to(root)))
    payload = load_or_build(
        cache_path(root, "folders"),
        key,
        lambda: _build(root, classes, train, test),
        check=lambda p: _payload_ok(p, train, test),
    )
    skipped += [tuple(s) for s in payload["skipped"]]

    labels = {s: torch.as_tensor(payload[f"{s}_labels"], dtype=torch.int64) for s in ("train", "test")}
    for split, split_dir in (("train", train_dir), ("test", test_dir)):
        if split_dir is None:
            continue
        counts = torch.bincount(labels[split], minlength=len(classes))
        if (counts == 0).any():
            empty = classes[int((counts == 0).nonzero()[0])]
            raise DataError(f"{split_dir / empty}: no usable image in this class folder (expected at least one)")
    _report_skipped(root, skipped, strict)  # after the errors above: a failing command prints its one line only
    info = {
        "source": shown(str(root)),  # printable and storable even when the folder's name is not UTF-8
        "sizes": dict(payload["sizes"]),
        "modes": dict(payload["modes"]),
        "skipped": [list(s) for s in skipped],
        "test_split": shown(str(test_dir) if test_dir else f"stratified {FOLDER_TEST_FRACTION:.0%} of {root}, seed 0"),
    }
    if payload["small"]:
        train_x, train_y = payload["train_images"], labels["train"]
        test_x, test_y = payload["test_images"], labels["test"]
        if test_dir is None:
            (train_x, train_y), (test_x, test_y) = _split_test(train_x, train_y)
        name = shown(root.name)
        return Decoded(name, classes, train_x, train_y, test_x, test_y, flip=True, default_val=0.1, info=info)
    files = {s: [str(root / rel) for rel in payload[f"{s}_files"]] for s in ("train", "test")}
    train_f, train_y, test_f, test_y = files["train"], labels["train"], files["test"], labels["test"]
    if test_dir is None:
        (train_f, train_y), (test_f, test_y) = _split_test(train_f, train_y)
    return Streamed(shown(root.name), classes, train_f, train_y, test_f, test_y, payload["channels"], info=info)


def decode_file(path: str | Path, channels: int) -> torch.Tensor:
    """Decode one image file to uint8 ``(channels, H, W)`` (channels 1 or 3); :class:`DataError` if it is not one."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    _check_pixels(path, data)
    webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    try:
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of torchcodec
            warnings.simplefilter("ignore", DeprecationWarning)
            # libwebp cannot decode to grey (torchvision then warns and returns RGB): read RGB, convert below.
            mode = ImageReadMode.GRAY if channels == 1 and not webp else ImageReadMode.RGB
            x = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode)
    except (RuntimeError, ValueError):
        pass  # not a format torchvision.io reads (BMP), or corrupt: let PIL decide
    else:
        if x.dtype != torch.uint8:  # 16-bit PNGs decode to uint16: rescale 0..65535 -> 0..255
            x = v2.functional.to_dtype(x, torch.uint8, scale=True)
        return to_channels(x[None], channels)[0]
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format not in PIL_FORMATS:
                raise DataError(f"{path}: {im.format} images are not supported (JPEG, PNG, BMP, WebP are)")
            im = im.convert("L" if channels == 1 else "RGB")
            x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
            return x.view(im.height, im.width, channels).permute(2, 0, 1).contiguous()
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image (unrecognised content; JPEG, PNG, BMP, WebP are read)") from None
    except Exception as e:  # PIL raises many types for bad data (OSError, SyntaxError, ValueError, ...)
        raise DataError(f"{path}: truncated or corrupt ({type(e).__name__}: {e})") from None


def _check_pixels(path: str | Path, data: bytes) -> None:
    """Refuse a decompression bomb before decoding: a small file whose header claims more pixels than PIL's limit
    (``Image.MAX_IMAGE_PIXELS``, about 179 million) would take gigabytes to decode. Reads only the header."""
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # raises DecompressionBombError itself past twice the limit
                size = im.size
    except Image.DecompressionBombError:
        size = None
    except Exception:  # not readable by PIL: the decoders below say why
        return
    if size is None or (limit and size[0] * size[1] > limit):
        claimed = f"{size[0]}x{size[1]} pixels" if size else "its header claims"
        raise DataError(f"{path}: {claimed}, more than the {limit:,} pixels an image may have (a decompression bomb?)")
    problem = shape_problem(size)
    if problem:
        raise DataError(f"{path}: {problem}")


MAX_IMAGE_SIDE = 16384  # pixels, either side
MAX_ASPECT = 50  # longer side / shorter side: resizing the shorter side to 256 keeps the longer one in bounds


def shape_problem(size: tuple[int, int]) -> str | None:
    """Why an image of ``size`` (width, height) is refused before decoding, or None. The area alone is not enough:
    a 1 x 1,000,000 image passes an area check, and resizing its shorter side to the network's input asks for
    gigabytes. Every reader (the folder scan, predict, the streamed loaders) calls this."""
    w, h = size
    if w < 1 or h < 1:
        return f"{w}x{h} pixels: an empty image"
    if max(w, h) > MAX_IMAGE_SIDE:
        return f"{w}x{h} pixels: a side longer than {MAX_IMAGE_SIDE:,} pixels (a decompression bomb?)"
    if max(w, h) > MAX_ASPECT * min(w, h):
        return f"{w}x{h} pixels: one side more than {MAX_ASPECT} times the other (resizing it would need gigabytes)"
    return None


def _split_dirs(root: Path) -> tuple[Path, Path | None]:
    if (root / "train").is_dir():
        for name in ("test", "val"):
            if (root / name).is_dir():
                return root / "train", root / name
        return root / "train", None
    return root, None


def _list_split(split_dir: Path, root: Path, expected: list[str] | None):
    """Classes, ``(relative path, label)`` of candidate image files, skipped files, and stat entries for the key."""
    try:
        classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError as e:
        raise DataError(f"{split_dir}: cannot list this folder ({e.strerror or e})") from None
    for name in classes:
        if not is_utf8(name):
            raise DataError(f"{split_dir / shown(name)}: a class folder whose name is not valid UTF-8; rename it")
    if expected is not None and classes != expected:
        missing, extra = sorted(set(expected) - set(classes)), sorted(set(classes) - set(expected))
        raise DataError(
            f"{split_dir}: its classes differ from the training split's (missing: {', '.join(missing) or '-'}; "
            f"extra: {', '.join(extra) or '-'})"
        )
    if len(classes) < 2:
        raise DataError(f"{split_dir}: found {len(classes)} class folder(s); expected at least two class subfolders")
    files, skipped, stats = [], [], []
    for label, name in enumerate(classes):
        found = _scan_class(split_dir, name, root, skipped, stats)
        if not found:
            raise DataError(f"{split_dir / name}: empty class folder (expected image files: JPEG, PNG, BMP, WebP)")
        files += [(rel, label) for rel in found]
    return classes, files, skipped, stats


def _scan_class(split_dir: Path, name: str, root: Path, skipped: list, stats: list) -> list[str]:
    """The candidate image files below ``split_dir/name`` (relative to ``root``), recursively and following
    symlinks as ``ImageFolder`` does, but each folder once (a symlink loop ends there). What cannot be used (hidden,
    not an image suffix, not a regular file, unreadable, a name that is not UTF-8) goes to ``skipped``."""
    found: list[str] = []
    seen: set[tuple[int, int]] = set()

    def unreadable(e: OSError) -> None:
        skipped.append((shown(str(Path(e.filename).relative_to(root))), f"cannot read folder ({e.strerror})"))

    for dirpath, dirnames, filenames in os.walk(split_dir / name, followlinks=True, onerror=unreadable):
        here = Path(dirpath)
        try:
            st = here.stat()
        except OSError:
            dirnames.clear()
            continue
        if (st.st_dev, st.st_ino) in seen:  # reached again through a symlink: a loop, or a second way in
            skipped.append((shown(str(here.relative_to(root))), "folder seen before (symlink loop)"))
            dirnames.clear()
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames.sort()
        for fname in sorted(filenames):
            path = here / fname
            rel = str(path.relative_to(root))
            reason = _unusable(path, split_dir, stats, rel)
            if reason:
                skipped.append((shown(rel), reason))
            else:
                found.append(rel)
    return found


def _unusable(path: Path, split_dir: Path, stats: list, rel: str) -> str | None:
    """Why the file at ``path`` cannot be a training image, or None; records its stat entry for the cache key."""
    try:
        st = path.stat()
    except OSError as e:  # a dangling symlink, a symlink loop, no permission
        stats.append((rel, -1, -1))
        return f"cannot read ({e.strerror})"
    stats.append((rel, st.st_size, st.st_mtime_ns))
    if any(part.startswith(".") for part in path.relative_to(split_dir).parts):
        return "hidden file"
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return "not an image"
    if not stat.S_ISREG(st.st_mode):  # a FIFO named x.png would block the reader forever
        return "not a regular file"
    if not is_utf8(rel):
        return "name is not valid UTF-8"
    if not os.access(path, os.R_OK):
        return "cannot read (permission denied)"
    return None


def _probe(path: Path) -> tuple[tuple[int, int], str]:
    """(width, height) and PIL mode from the file's header; raises DataError (the reason a skip reports) if unusable."""
    try:
        if path.stat().st_size == 0:
            raise DataError("empty file (0 bytes)")
        with Image.open(path) as im:
            if im.format not in PIL_FORMATS:
                raise DataError(f"unsupported format ({im.format}; JPEG, PNG, BMP, WebP are read)")
            problem = shape_problem(im.size)
            if problem:
                raise DataError(problem)
            return im.size, im.mode
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError("not an image (unrecognised content)") from None
    except Exception as e:  # a header cut short, a broken chunk: PIL raises OSError, SyntaxError, ValueError, ...
        raise DataError(f"truncated or corrupt ({type(e).__name__}: {e})") from None


def _parallel(fn, items: list, what: str) -> list:
    """``[fn(x) for x in items]`` on a thread pool (the decoders release the GIL), with a progress bar on a tty."""
    console = Console(stderr=True)
    out = []
    with (
        ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool,
        Progress(console=console, transient=True, disable=not console.is_terminal or len(items) < 1000) as bar,
    ):
        task = bar.add_task(what, total=len(items))
        for result in pool.map(fn, items, chunksize=256):
            out.append(result)
            bar.advance(task)
    return out


def _try(fn):
    def wrapped(x):
        try:
            return fn(x)
        except DataError as e:
            return e

    return wrapped


def _build(root: Path, classes: list[str], train: list[tuple[str, int]], test: list[tuple[str, int]]) -> dict:
    """Probe every file's header; decode small images into tensors. The payload stored in the cache."""
    entries = [("train", rel, label) for rel, label in train] + [("test", rel, label) for rel, label in test]
    probes = _parallel(_try(lambda e: _probe(root / e[1])), entries, f"reading {root.name} headers")
    skipped = [(e[1], str(p)) for e, p in zip(entries, probes, strict=True) if isinstance(p, DataError)]
    good = [(e, p) for e, p in zip(entries, probes, strict=True) if not isinstance(p, DataError)]
    sizes = Counter(f"{w}x{h}" for _, ((w, h), _) in good)
    modes = Counter(mode for _, (_, mode) in good)
    channels = 1 if good and all(mode in GREY_MODES for _, (_, mode) in good) else 3
    small = bool(good) and all(max(size) <= SMALL_MAX for _, (size, _) in good)
    payload = {"sizes": dict(sizes), "modes": dict(modes), "channels": channels, "small": small}
    if small:
        (w, h), _ = Counter(size for _, (size, _) in good).most_common(1)[0]
        decoded = _parallel(
            _try(lambda e: _decode_small(root / e[0][1], channels, h, w)), good, f"decoding {root.name}"
        )
        skipped += [
            (e[1], str(x).removeprefix(f"{root / e[1]}: "))
            for (e, _), x in zip(good, decoded, strict=True)
            if isinstance(x, DataError)
        ]
        good_x = [(e, x) for (e, _), x in zip(good, decoded, strict=True) if not isinstance(x, DataError)]
        kept = [probe for (_, probe), x in zip(good, decoded, strict=True) if not isinstance(x, DataError)]
        payload["sizes"] = dict(Counter(f"{w}x{h}" for (w, h), _ in kept))  # what `cnnzoo data` reports: used files
        payload["modes"] = dict(Counter(mode for _, mode in kept))
        for split in ("train", "test"):
            xs = [x for e, x in good_x if e[0] == split]
            payload[f"{split}_images"] = torch.stack(xs) if xs else torch.empty(0, channels, h, w, dtype=torch.uint8)
            payload[f"{split}_labels"] = torch.tensor([e[2] for e, _ in good_x if e[0] == split], dtype=torch.int64)
            payload[f"{split}_files"] = [e[1] for e, _ in good_x if e[0] == split]
    else:
        for split in ("train", "test"):
            payload[f"{split}_labels"] = torch.tensor([e[2] for e, _ in good if e[0] == split], dtype=torch.int64)
            payload[f"{split}_files"] = [e[1] for e, _ in good if e[0] == split]
    payload["skipped"] = [list(s) for s in skipped]
    return payload


def _payload_ok(p: dict, train: list[tuple[str, int]], test: list[tuple[str, int]]) -> bool:
    """Whether a cached payload is one :func:`_build` could have made from this scan: every file it names is a
    scanned file with the scanned label, and the tensors have the shapes and types the loaders expect."""
    if not (
        isinstance(p.get("sizes"), dict)
        and isinstance(p.get("modes"), dict)
        and p.get("channels") in (1, 3)
        and isinstance(p.get("small"), bool)
        and isinstance(p.get("skipped"), list)
    ):
        return False
    if not all(
        isinstance(s, (list, tuple)) and len(s) == 2 and all(isinstance(v, str) for v in s) for s in p["skipped"]
    ):
        return False
    for split, scanned in (("train", dict(train)), ("test", dict(test))):
        files, labels = p.get(f"{split}_files"), p.get(f"{split}_labels")
        if not (
            isinstance(files, list)
            and isinstance(labels, torch.Tensor)
            and labels.dtype == torch.int64
            and labels.shape == (len(files),)
        ):
            return False
        if any(not isinstance(f, str) or scanned.get(f) != int(y) for f, y in zip(files, labels.tolist(), strict=True)):
            return False
        images = p.get(f"{split}_images")
        if p["small"] and not (
            isinstance(images, torch.Tensor)
            and images.dtype == torch.uint8
            and images.ndim == 4
            and images.shape[:2] == (len(files), p["channels"])
        ):
            return False
    return not p["small"] or p["train_images"].shape[2:] == p["test_images"].shape[2:]


def _decode_small(path: Path, channels: int, h: int, w: int) -> torch.Tensor:
    x = decode_file(path, channels)
    if x.shape[1:] != (h, w):
        x = F.interpolate(x[None].float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
        x = x.round().clamp(0, 255).to(torch.uint8)
    return x


def _split_test(x, y: torch.Tensor):
    """A fixed stratified test split of a folder that has none: ((train_x, train_y), (test_x, test_y))."""
    from sklearn.model_selection import train_test_split

    counts = torch.bincount(y)
    stratify = y.numpy() if counts.min() >= 2 else None
    idx = torch.arange(len(y)).numpy()
    train_idx, test_idx = train_test_split(
        idx, test_size=FOLDER_TEST_FRACTION, stratify=stratify, random_state=FOLDER_SPLIT_SEED
    )
    train_idx.sort()
    test_idx.sort()

    def take(items, index):
        return items[torch.from_numpy(index)] if isinstance(items, torch.Tensor) else [items[i] for i in index]

    return (take(x, train_idx), take(y, train_idx)), (take(x, test_idx), take(y, test_idx))


def _report_skipped(root: Path, skipped: list[tuple[str, str]], strict: bool) -> None:
    """One warning (or, with strict, one error) for every file that was left out, naming the first few."""
    if not skipped:
        return
    reasons = Counter(reason.split(" (")[0] for _, reason in skipped)
    first = "; ".join(f"{rel} ({reason})" for rel, reason in skipped[:SHOW_SKIPPED])
    more = f"; and {len(skipped) - SHOW_SKIPPED} more" if len(skipped) > SHOW_SKIPPED else ""
    counts = ", ".join(f"{n} {r}" for r, n in reasons.items())
    if strict:
        raise DataError(f"{root}: {len(skipped)} file(s) cannot be used ({counts}): {first}{more}")
    log.warning("%s: skipped %d file(s) (%s): %s%s", root, len(skipped), counts, first, more)
