"""The data sources and bad data: tiny CIFAR pickles, idx files and image folders written here; the decoded cache.

Nothing touches the network: the named datasets are written in their exact release layout (tiny), and every
bad-data case checks the one-line message and, through ``cnnzoo.cli.main``, exit status 2 without a traceback.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from cnnzoo.cli import main
from cnnzoo.data import DataError, folders, load_data, load_images
from cnnzoo.data import cache as cache_mod
from cnnzoo.data.stream import StreamLoader

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _fails_cleanly(capsys, argv: list[str], *fragments: str) -> str:
    """``cnnzoo ARGV`` exits 2 with one ``error: ...`` line containing every fragment, and no traceback."""
    code, _, err = _run_cli(capsys, *argv)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def _unnormalise(bundle, x: torch.Tensor) -> torch.Tensor:
    """Back from a normalised float batch to uint8 pixel values (exact up to float rounding)."""
    mean = torch.tensor(bundle.mean).view(1, -1, 1, 1)
    std = torch.tensor(bundle.std).view(1, -1, 1, 1)
    return ((x * std + mean) * 255).round().to(torch.uint8)


def _eval_images(bundle, loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader.epoch(0), strict=True)
    return _unnormalise(bundle, torch.cat(xs)), torch.cat(ys)


# --- CIFAR: the python-pickle release, tiny --------------------------------------------------------------------


def _write_cifar(root, name="cifar10", per_file=3, seed=0):
    """The release layout torchvision reads (cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta), tiny."""
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        folder, train_files, test_files = (
            root / "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            ["test_batch"],
        )
        label_key, meta_file, meta = "labels", "batches.meta", {"label_names": CIFAR10_CLASSES, "num_vis": 3072}
        n_classes = 10
    else:
        folder, train_files, test_files = root / "cifar-100-python", ["train"], ["test"]
        label_key, meta_file = "fine_labels", "meta"
        meta = {"fine_label_names": [f"c{i:02d}" for i in range(100)], "coarse_label_names": ["x"] * 20}
        n_classes = 100
    folder.mkdir(parents=True)
    written = {}
    for f in train_files + test_files:
        data = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)  # rows: 1024 R, 1024 G, 1024 B, row-major
        labels = [int(v) for v in rng.integers(0, n_classes, per_file)]
        with open(folder / f, "wb") as fh:
            pickle.dump({"batch_label": f, label_key: labels, "data": data, "filenames": ["x.png"] * per_file}, fh)
        written[f] = (data, labels)
    with open(folder / meta_file, "wb") as fh:
        pickle.dump(meta, fh)
    return folder, written


def test_cifar10_reads_the_pickle_release_pixel_exact(tmp_path):
    _, written = _write_cifar(tmp_path)
    b = load_data("cifar10", data_dir=str(tmp_path), val_size=0, batch_size=4, eval_batch_size=2)
    assert b.classes == CIFAR10_CLASSES and b.in_channels == 3 and b.image_size == 32
    assert (b.train.num_samples, b.test.num_samples) == (15, 3)
    x, y = _eval_images(b, b.test)
    data, labels = written["test_batch"]
    assert torch.equal(x, torch.from_numpy(data).view(3, 3, 32, 32)) and y.tolist() == labels


def test_cifar100_fine_labels_and_default_validation_is_5000(tmp_path):
    _write_cifar(tmp_path, "cifar100", per_file=6)
    b = load_data("cifar100", data_dir=str(tmp_path), val_size=2, batch_size=2)
    assert len(b.classes) == 100 and b.classes[7] == "c07"
    assert (b.train.num_samples, b.val.num_samples, b.test.num_samples) == (4, 2, 6)
    with pytest.raises(DataError, match="val_size 5000 leaves no training images"):  # the CIFAR default, 45k/5k
        load_data("cifar100", data_dir=str(tmp_path))


def test_missing_cifar_says_which_files_where_and_how(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torchvision.datasets.utils.download_url", lambda *a, **k: pytest.fail("network touched"))
    where = tmp_path / "cifar-10-batches-py"
    with pytest.raises(DataError) as e:
        load_data("cifar10", data_dir=str(tmp_path))
    msg = str(e.value)
    assert "data_batch_1" in msg and "test_batch" in msg and str(where) in msg and "--download" in msg
    assert "cifar-10-python.tar.gz" in msg
    _fails_cleanly(capsys, ["data", "cifar10", "--data-dir", str(tmp_path)], "cifar10 not found", str(where))


def test_download_failure_offline_is_one_line(tmp_path, capsys, monkeypatch):
    # --download goes through torchvision's own download-and-md5 code; offline, that fails: one line, no traceback.
    def offline(self):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("torchvision.datasets.CIFAR10.download", offline)
    _fails_cleanly(
        capsys,
        ["data", "cifar10", "--data-dir", str(tmp_path), "--download"],
        f"could not download cifar10 into {tmp_path}",
        "name resolution",
    )


def test_truncated_cifar_batch_is_a_clear_error(tmp_path, capsys):
    folder, _ = _write_cifar(tmp_path)
    blob = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(blob[: len(blob) // 2])
    _fails_cleanly(capsys, ["data", "cifar10", "--data-dir", str(tmp_path)], "data_batch_3", "truncated")


class _RunsCode:
    """A pickle payload that runs ``func(arg)`` when unpickled (what a tampered data_batch_1 could hold)."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("how", ["os.system", "exec", "nested"])
def test_cifar_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, capsys, how):
    folder, written = _write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    if how == "os.system":
        payload = {"data": _RunsCode(os.system, f"touch {marker}"), "labels": [0, 1, 2]}
    elif how == "exec":
        payload = {"data": written["data_batch_1"][0], "labels": _RunsCode(exec, f"open({str(marker)!r}, 'w')")}
    else:  # hidden inside a list inside the dict, after valid arrays
        payload = {"data": written["data_batch_1"][0], "labels": [0, 1, _RunsCode(os.system, f"touch {marker}")]}
    with open(folder / "data_batch_1", "wb") as fh:
        pickle.dump(payload, fh, protocol=2)
    _fails_cleanly(capsys, ["data", "cifar10", "--data-dir", str(tmp_path)], "data_batch_1", "refused global")
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_pickles_of_every_protocol_still_read(tmp_path, protocol):
    """The restricted unpickler admits what numpy arrays need in each protocol (the release is a protocol-2 pickle)."""
    folder, written = _write_cifar(tmp_path)
    data, labels = written["test_batch"]
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump(
            {
                "batch_label": b"testing batch 1 of 1",
                "labels": labels,
                "data": data,
                "filenames": [b"x.png"] * 3,
                "scalar": np.int64(3),
            },
            fh,
            protocol=protocol,
        )
    b = load_data("cifar10", data_dir=str(tmp_path), val_size=0, batch_size=4, eval_batch_size=3)
    x, y = _eval_images(b, b.test)
    assert torch.equal(x, torch.from_numpy(data).view(3, 3, 32, 32)) and y.tolist() == labels


def test_cifar_md5_differing_from_the_release_warns_once_and_matching_is_silent(tmp_path, caplog, monkeypatch):
    from torchvision import datasets
    from torchvision.datasets.utils import calculate_md5

    folder, _ = _write_cifar(tmp_path)
    with caplog.at_level(logging.WARNING, logger="cnnzoo.data"):
        load_data("cifar10", data_dir=str(tmp_path), val_size=0, batch_size=4)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert "data_batch_1" in warnings[0] and "batches.meta" in warnings[0] and "md5" in warnings[0]
    caplog.clear()
    real = {f: calculate_md5(str(folder / f)) for f in os.listdir(folder)}  # pretend these are the release's sums
    cls = datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[f, real[f]] for f, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[f, real[f]] for f, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", dict(cls.meta, md5=real["batches.meta"]))
    with caplog.at_level(logging.WARNING, logger="cnnzoo.data"):
        load_data("cifar10", data_dir=str(tmp_path), val_size=0, batch_size=4)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    "payload, fragment",
    [
        ([1, 2, 3], "not a cifar10 batch file"),
        ({"data": "text", "labels": [0]}, "not a cifar10 batch file"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "2 images but 1 labels"),
        ({"data": np.zeros((1, 3072), np.uint8), "labels": [-1]}, "naming every label"),
        ({"data": np.zeros((1, 3072), np.uint8), "labels": [10]}, "naming every label"),
    ],
)
def test_cifar_batch_of_the_wrong_shape_is_one_line(tmp_path, capsys, payload, fragment):
    folder, _ = _write_cifar(tmp_path)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump(payload, fh)
    _fails_cleanly(capsys, ["data", "cifar10", "--data-dir", str(tmp_path)], fragment)


# --- MNIST: idx files, tiny ------------------------------------------------------------------------------------


def _write_idx(root, cls_folder="MNIST", n_train=6, n_test=4, seed=0):
    """root/<MNIST|FashionMNIST>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (big-endian idx headers)."""
    rng = np.random.default_rng(seed)
    raw = root / cls_folder / "raw"
    raw.mkdir(parents=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        # magic: two zero bytes, type 0x08 (unsigned byte), number of dimensions; then each dimension as int32 BE
        header = struct.pack(">BBBBiii", 0, 0, 8, 3, n, 28, 28)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">BBBBi", 0, 0, 8, 1, n) + labels.tobytes())
        out[prefix] = (images, labels)
    return raw, out


def test_mnist_reads_idx_files_pixel_exact(tmp_path):
    _, written = _write_idx(tmp_path)
    b = load_data("mnist", data_dir=str(tmp_path), val_size=0, batch_size=2, eval_batch_size=3)
    assert b.classes[0].startswith("0") and b.in_channels == 1 and b.image_size == 28
    x, y = _eval_images(b, b.test)
    images, labels = written["t10k"]
    assert torch.equal(x[:, 0], torch.from_numpy(images)) and y.tolist() == labels.tolist()
    assert b.train.num_samples == 6


def test_fashion_mnist_classes_and_three_channels(tmp_path):
    _write_idx(tmp_path, "FashionMNIST")
    b = load_data("fashion-mnist", data_dir=str(tmp_path), val_size=0, batch_size=2, in_channels=3, image_size=32)
    assert b.classes[0] == "T-shirt/top" and len(b.classes) == 10
    x, _ = next(b.test.epoch(0))
    assert x.shape == (2, 3, 32, 32) and torch.equal(x[:, 0], x[:, 2])


def test_missing_and_corrupt_mnist(tmp_path, capsys):
    _fails_cleanly(
        capsys,
        ["data", "mnist", "--data-dir", str(tmp_path)],
        "mnist not found",
        "train-images-idx3-ubyte",
        str(tmp_path / "MNIST" / "raw"),
        "--download",
    )
    raw, _ = _write_idx(tmp_path)
    (raw / "train-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03garbage")
    _fails_cleanly(capsys, ["data", "mnist", "--data-dir", str(tmp_path)], "train-images-idx3-ubyte", "truncated")


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("which", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
def test_idx_file_of_random_bytes_is_one_line_not_a_traceback(tmp_path, capsys, which, seed):
    """Random bytes (today a traceback from deep in torchvision's reader), with and without a valid magic."""
    raw, _ = _write_idx(tmp_path)
    rng = np.random.default_rng(seed)
    junk = rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes()
    if seed % 2:  # a plausible magic and absurd dimensions: the header must be checked against the file size
        junk = bytes((0, 0, 8, 3 if "images" in which else 1)) + junk
    (raw / which).write_bytes(junk)
    _fails_cleanly(capsys, ["data", "mnist", "--data-dir", str(tmp_path)], which)


def test_idx_header_claiming_more_data_than_the_file_holds(tmp_path, capsys):
    raw, _ = _write_idx(tmp_path)
    (raw / "t10k-images-idx3-ubyte").write_bytes(struct.pack(">BBBBiii", 0, 0, 8, 3, 2**31 - 1, 28, 28) + b"x" * 99)
    _fails_cleanly(capsys, ["data", "mnist", "--data-dir", str(tmp_path)], "the header says", "truncated")
    (raw / "t10k-images-idx3-ubyte").write_bytes(struct.pack(">BBBBiii", 0, 0, 8, 3, -5, 28, 28))
    _fails_cleanly(capsys, ["data", "mnist", "--data-dir", str(tmp_path)], "impossible dimensions")


# --- Image folders --------------------------------------------------------------------------------------------


def _image(seed: int, size=(12, 12), grey=False) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if grey else (size[1], size[0], 3)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))


def _folder(root, classes=("cat", "dog"), per_class=3, splits=("train", "test"), size=(12, 12)):
    """root/<split>/<class>/<i>.png of random RGB images; returns root."""
    for s, split in enumerate(splits):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                _image(100 * s + 10 * c + i, size).save(root / split / name / f"{i}.png")
    return root


def test_folder_reads_every_format_and_mode_and_skips_bad_files_with_one_warning(tmp_path, caplog):
    root = _folder(tmp_path / "pets", per_class=1, size=(12, 12))
    cat, dog = root / "train" / "cat", root / "train" / "dog"
    base = _image(7, size=(12, 12))
    base.save(cat / "a.jpg", quality=95)
    base.save(cat / "b.bmp")
    base.save(cat / "c.webp", lossless=True)
    base.convert("L").save(cat / "grey.png")
    base.convert("RGBA").save(cat / "rgba.png")
    base.convert("P").save(dog / "palette.png")
    base.convert("CMYK").save(dog / "cmyk.jpg")
    (dog / "notes.txt").write_text("not an image")
    (dog / "fake.jpg").write_text("not an image either")
    (dog / ".hidden.png").write_bytes((cat / "grey.png").read_bytes())
    blob = (cat / "rgba.png").read_bytes()
    (dog / "truncated.png").write_bytes(blob[: len(blob) // 2])
    with caplog.at_level(logging.WARNING, logger="cnnzoo.data"):
        b = load_data(str(root), val_size=0, batch_size=9, augment="none")  # one batch of 9: none dropped
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1  # one line for all of them
    msg = warnings[0].getMessage()
    assert "skipped 4 file(s)" in msg and "hidden file" in msg and "not an image" in msg and "and 1 more" in msg
    assert b.classes == ["cat", "dog"] and b.in_channels == 3 and b.image_size == 12 and b.train.num_samples == 9
    skipped = dict(b.info["skipped"])
    assert set(skipped) == {f"train/dog/{f}" for f in ("notes.txt", "fake.jpg", ".hidden.png", "truncated.png")}
    assert skipped["train/dog/truncated.png"].startswith("truncated or corrupt")
    assert b.info["modes"] == {"RGB": 7, "L": 1, "RGBA": 1, "P": 1, "CMYK": 1}  # of the images used, test too
    # Lossless files decode to the same pixels whatever their format or alpha.
    x, y = _eval_images(b, b.train)
    ref = torch.from_numpy(np.array(base)).permute(2, 0, 1)
    exact = sum(bool(torch.equal(img, ref)) for img in x)
    assert exact == 3  # b.bmp, c.webp (lossless), rgba.png (alpha dropped)
    grey = torch.from_numpy(np.array(base.convert("L")))
    assert any(torch.equal(img[0], grey) and torch.equal(img[0], img[2]) for img in x)  # grey -> 3 equal channels


def test_folder_as_grey_and_strict(tmp_path, capsys):
    root = _folder(tmp_path / "pets", size=(12, 10))
    b = load_data(str(root), in_channels=1, val_size=0, batch_size=2)
    # 12x10 images: stretched to 12x12 (the longer side), since every net takes square inputs.
    assert b.in_channels == 1 and len(b.mean) == 1 and b.image_size == 12
    assert next(b.train.epoch(0))[0].shape == (2, 1, 12, 12)
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    _fails_cleanly(capsys, ["data", str(root), "--strict"], str(root), "1 file(s) cannot be used", "broken.jpg")
    code, out, _ = _run_cli(capsys, "data", str(root))
    assert code == 0 and "files skipped: 1" in out and "broken.jpg" in out


def test_all_grey_folder_is_one_channel_and_single_folder_gets_a_stratified_test_split(tmp_path):
    root = tmp_path / "letters"
    for c, name in enumerate("abc"):
        (root / name).mkdir(parents=True)
        for i in range(10):
            _image(10 * c + i, grey=True).save(root / name / f"{i}.png")
    b = load_data(str(root), val_size=0, batch_size=4)
    assert b.classes == ["a", "b", "c"] and b.in_channels == 1
    assert (b.train.num_samples, b.test.num_samples) == (24, 6)
    _, y = _eval_images(b, b.test)
    assert torch.bincount(y).tolist() == [2, 2, 2]  # stratified 20%
    again = load_data(str(root), val_size=0, batch_size=4, seed=5)  # the test split does not depend on the seed
    assert torch.equal(_eval_images(again, again.test)[0], _eval_images(b, b.test)[0])


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (lambda r: _folder(r, classes=("only",)), ["found 1 class folder(s); expected at least two"]),
        (lambda r: (_folder(r), (r / "train" / "emu").mkdir()), ["train/emu: empty class folder"]),
        (
            lambda r: (
                _folder(r),
                (r / "train" / "dog" / "0.png").write_text("x"),
                (r / "train" / "dog" / "1.png").write_text("x"),
                (r / "train" / "dog" / "2.png").write_text("x"),
            ),
            ["train/dog: no usable image in this class folder"],
        ),
        (
            lambda r: (_folder(r), shutil.move(r / "test" / "dog", r / "test" / "wolf")),
            ["its classes differ from the training split's (missing: dog; extra: wolf)"],
        ),
    ],
    ids=["one-class", "empty-class", "class-without-usable-images", "test-classes-differ"],
)
def test_bad_folders_are_one_line_errors(tmp_path, capsys, make, fragments):
    root = tmp_path / "bad"
    make(root)
    with pytest.raises(DataError) as e:
        load_data(str(root), batch_size=2)
    assert str(root) in str(e.value) and all(f in str(e.value) for f in fragments)
    _fails_cleanly(capsys, ["data", str(root)], str(root), *fragments)


def test_missing_path_and_unknown_name(tmp_path, capsys):
    _fails_cleanly(capsys, ["data", str(tmp_path / "nope")], str(tmp_path / "nope"), "no such folder")
    _fails_cleanly(capsys, ["data", "cifar11"], "unknown dataset 'cifar11'", "cifar10", "digits")


def test_data_command_shows_classes_sizes_and_modes(tmp_path, capsys):
    root = _folder(tmp_path / "pets", per_class=2, size=(12, 10))
    _image(3, size=(8, 8)).convert("L").save(root / "train" / "dog" / "small.png")
    code, out, _ = _run_cli(capsys, "data", str(root))
    assert code == 0
    assert "pets: 2 classes, 5 training and 4 test images" in out
    assert "12x10 x8" in out and "8x8 x1" in out and "RGB x8" in out and "L x1" in out and "files skipped: 0" in out
    code, out, _ = _run_cli(capsys, "data", "digits")
    assert code == 0 and "1,437 training and 360 test images" in out


# --- The decoded cache --------------------------------------------------------------------------------------------


def _count_builds(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = folders._build

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(folders, "_build", counting)
    return calls


def _cache_file(root):
    return cache_mod.cache_path(root, "folders")


def test_cache_is_used_then_rebuilt_when_the_folder_changes(tmp_path, monkeypatch):
    root = _folder(tmp_path / "pets")
    builds = _count_builds(monkeypatch)
    first = load_data(str(root), val_size=0, batch_size=2)
    assert len(builds) == 1 and _cache_file(root).is_file()
    assert str(_cache_file(root)).startswith(os.environ["CNNZOO_CACHE_DIR"])
    load_data(str(root), val_size=0, batch_size=2)
    assert len(builds) == 1  # second run: straight from the cache
    f = root / "train" / "cat" / "0.png"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))  # touched
    load_data(str(root), val_size=0, batch_size=2)
    assert len(builds) == 2
    _image(999).save(f)  # modified: the new pixels are served, not the cached ones
    changed = load_data(str(root), val_size=0, batch_size=2, augment="none")
    assert len(builds) == 3
    ref = torch.from_numpy(np.array(_image(999))).permute(2, 0, 1)
    assert any(torch.equal(img, ref) for img in _eval_images(changed, changed.train)[0])
    assert not any(torch.equal(img, ref) for img in _eval_images(first, first.train)[0])
    (root / "train" / "dog" / "3.png").write_bytes(f.read_bytes())  # a file added
    assert load_data(str(root), val_size=0, batch_size=2).train.num_samples == 7 and len(builds) == 4


@pytest.mark.parametrize(
    "damage",
    [
        "truncated",
        "garbage",
        "other-version",
        "other-key",
        "runs-code",
        "labels-edited",
        "file-outside",
        "images-dtype",
        "payload-not-dict",
        "a-folder",
    ],
)
def test_damaged_or_foreign_cache_is_rebuilt_never_used(tmp_path, monkeypatch, caplog, damage):
    root = _folder(tmp_path / "pets")
    builds = _count_builds(monkeypatch)
    load_data(str(root), val_size=0, batch_size=2)
    path = _cache_file(root)
    blob = path.read_bytes()
    marker = tmp_path / "pwned"
    if damage == "truncated":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\0" * 100)
    elif damage == "runs-code":  # a cache file is a torch pickle: weights_only refuses globals like os.system
        torch.save({"format": cache_mod.FORMAT, "payload": _RunsCode(os.system, f"touch {marker}")}, path)
    elif damage == "a-folder":
        path.unlink()
        path.mkdir()
    elif damage in ("labels-edited", "file-outside", "images-dtype", "payload-not-dict"):
        obj = torch.load(path, weights_only=True)  # the right header and key, a hand-edited payload
        if damage == "labels-edited":
            obj["payload"]["train_labels"] = torch.full_like(obj["payload"]["train_labels"], 7)
        elif damage == "file-outside":
            obj["payload"]["train_files"][0] = "../../etc/passwd"
        elif damage == "images-dtype":
            obj["payload"]["train_images"] = obj["payload"]["train_images"].float()
        else:
            obj["payload"] = [1, 2, 3]
        torch.save(obj, path)
    else:
        obj = torch.load(path, weights_only=True)
        if damage == "other-version":
            obj["version"] = cache_mod.VERSION + 1
        else:
            obj["key"] = "0" * 64
            obj["payload"]["train_images"] = torch.zeros_like(obj["payload"]["train_images"])  # would be served
        torch.save(obj, path)
    with caplog.at_level(logging.INFO, logger="cnnzoo.data"):
        b = load_data(str(root), val_size=0, batch_size=2, augment="none")
    said = "could not write the decoded cache" if damage == "a-folder" else "rebuilding"
    assert len(builds) == 2 and said in caplog.text and not marker.exists()
    assert _eval_images(b, b.train)[0].float().std() > 30  # real random pixels, not the zeros
    assert sorted(torch.bincount(_eval_images(b, b.train)[1]).tolist()) == [3, 3]
    if damage == "a-folder":  # a cache that cannot be written costs only the log line
        return
    assert torch.load(path, weights_only=True)["version"] == cache_mod.VERSION  # the rebuilt file replaced it
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary left behind


# --- Streamed (large-image) folders ------------------------------------------------------------------------------


def test_large_images_stream_deterministically_without_touching_the_global_rng(tmp_path):
    root = _folder(tmp_path / "big", per_class=4, size=(80, 72))
    b = load_data(str(root), val_size=0, batch_size=2, image_size=40, num_workers=0, seed=3)
    assert isinstance(b.train, StreamLoader) and b.info["streamed"] and b.mean == (0.485, 0.456, 0.406)
    state = torch.get_rng_state()
    e0 = list(b.train.epoch(0))
    assert torch.equal(torch.get_rng_state(), state)  # the trainer's RNG is left alone
    assert len(e0) == 4 and e0[0][0].shape == (2, 3, 40, 40)
    assert e0[0][0].is_contiguous(memory_format=torch.channels_last)
    again = list(b.train.epoch(0))
    resumed = list(b.train.epoch(0, start_batch=2))
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(e0, again, strict=True))
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(e0[2:], resumed, strict=True))
    e1 = list(b.train.epoch(1))
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(e0, e1, strict=True))
    # Two ranks at batch 1 serve the halves of the one process's batches, augmented alike.
    ranks = [
        load_data(str(root), val_size=0, batch_size=1, image_size=40, num_workers=0, seed=3, rank=r, world_size=2).train
        for r in (0, 1)
    ]
    halves = [list(r.epoch(0)) for r in ranks]
    for step, (x, y) in enumerate(e0):
        assert torch.equal(torch.cat([halves[0][step][0], halves[1][step][0]]), x)
        assert torch.equal(torch.cat([halves[0][step][1], halves[1][step][1]]), y)
    x, _ = next(b.test.epoch(0))  # evaluation: resize short side + centre crop, no randomness
    assert x.shape == (2, 3, 40, 40) and torch.equal(x, next(b.test.epoch(0))[0])


# --- load_images (what `cnnzoo predict` feeds the model) ---------------------------------------------------------


def test_load_images_preprocesses_like_evaluation(tmp_path, capsys):
    root = _folder(tmp_path / "pets", size=(32, 32))
    b = load_data(str(root), val_size=0, batch_size=2, eval_batch_size=6)
    files = sorted((root / "test").rglob("*.png"))
    x = load_images(files, in_channels=3, image_size=32, mean=b.mean, std=b.std)
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.cat([x for x, _ in b.test.epoch(0)]))  # same pixels, same normalisation
    grey = load_images(files[:1], in_channels=1, image_size=64, mean=(0.5,), std=(0.5,))
    assert grey.shape == (1, 1, 64, 64)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="notes.txt: not an image"):
        load_images([tmp_path / "notes.txt"], in_channels=3, image_size=32, mean=b.mean, std=b.std)
    with pytest.raises(DataError, match="missing.png: no such file"):
        load_images([tmp_path / "missing.png"], in_channels=3, image_size=32, mean=b.mean, std=b.std)


# --- The real CIFAR-10 (JPEG q75) folder, when ../shared/data has it ------------------------------------------------


def test_real_cifar10_jpeg_folder(cifar10_jpeg_slice):
    # A slice of the real files (20 per class for training, 5 for test): the real JPEG decode, in seconds.
    root = cifar10_jpeg_slice
    b = load_data(str(root), batch_size=16, val_size=20, seed=0)
    assert b.classes == CIFAR10_CLASSES  # sorted folder names are CIFAR-10's label order
    assert (b.in_channels, b.image_size) == (3, 32) and b.info["sizes"] == {"32x32": 250}
    assert (b.train.num_samples, b.val.num_samples, b.test.num_samples) == (180, 20, 50)
    x, y = next(b.train.epoch(0))
    assert x.shape == (16, 3, 32, 32) and y.max() < 10 and x.is_contiguous(memory_format=torch.channels_last)
    # Real photographs, normalised with the slice's own statistics: roughly zero mean and unit spread.
    xs = torch.cat([x for x, _ in b.test.epoch(0)])
    assert abs(xs.mean().item()) < 0.3 and 0.7 < xs.std().item() < 1.3
