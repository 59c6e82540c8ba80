"""Every input treated as hostile: broken dataset folders, hand-edited run directories, bad recipes and flags.

The property, for each case and each command that reads it (``data``, ``train``, ``eval``, ``predict``, ``export``,
``train --resume``): the command either succeeds or prints exactly one line on stderr, starting ``error:``, and
exits non-zero; never a traceback; and every file that existed before is byte-identical afterwards, with nothing
half-written left beside it. Cases are generated in ``tmp_path`` with tiny images; the CLI runs in-process
(``cnnzoo.cli.main``), plus one real subprocess.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnzoo.cli import main
from cnnzoo.train.api import train

TINY = dict(subset=64, val_size=32, batch_size=32, eval_batch_size=128, device="cpu", threads=2, epochs=1)


def _tree(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root`` (symlinks by target, so loops and dangling links are fine)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = os.fsencode(p.relative_to(root)).decode("utf-8", "backslashreplace")
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file() and not stat_is_fifo(p):
                try:
                    out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
                except PermissionError:
                    out[rel] = "unreadable"
            elif p.is_dir():
                out[rel] = "dir"
    return out


def stat_is_fifo(p: Path) -> bool:
    import stat

    return stat.S_ISFIFO(p.lstat().st_mode)


def _check(capsys, argv: list[str], root: Path, *, ok: bool = False) -> str:
    """Run ``cnnzoo ARGV``: one ``error:`` line and a non-zero exit (or, with ``ok``, exit 0), never a traceback,
    and the tree under ``root`` unchanged. Returns stderr."""
    before = _tree(root)
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    if ok:
        assert code == 0, (argv, err)
    else:
        assert code != 0 and err.startswith("error: ") and err.count("\n") == 1, (argv, code, err)
    after = _tree(root)
    assert {k: v for k, v in after.items() if k in before} == before, argv  # nothing pre-existing changed
    new = sorted(set(after) - set(before))
    assert ok or not new, (argv, new)  # a failure leaves nothing behind
    return err


# --- broken dataset folders ----------------------------------------------------------------------------------------


def _png(path: Path, seed: int = 0, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def _good(root: Path, classes=("cat", "dog"), per_class=3, splits=("train", "test")) -> Path:
    for s in splits:
        for c, name in enumerate(classes):
            for i in range(per_class):
                _png(root / s / name / f"{i}.png", 100 * c + i)
    return root


def _junk(path: Path, data: bytes = b"not an image") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _non_utf8(root: Path, name: bytes) -> Path:
    return Path(os.fsdecode(os.fsencode(root) + b"/" + name))


# Each builder makes a dataset folder under the given path; True = the folder is usable (`data` must succeed).
FOLDERS: dict[str, tuple[Callable[[Path], object], bool]] = {
    "missing": (lambda r: None, False),
    "empty": (lambda r: r.mkdir(), False),
    "a-file-not-a-folder": (lambda r: _junk(r), False),
    "only-non-images": (lambda r: [_junk(r / c / f"{i}.txt") for c in "ab" for i in range(2)], False),
    "corrupt-jpegs": (
        lambda r: [_junk(r / c / f"{i}.jpg", b"\xff\xd8\xff\xe0 cut") for c in "ab" for i in range(2)],
        False,
    ),
    "zero-byte-images": (lambda r: [_junk(r / c / "0.png", b"") for c in "ab"], False),
    "one-class": (lambda r: _good(r, classes=("only",)), False),
    "empty-class": (lambda r: (_good(r), (r / "train" / "emu").mkdir()), False),
    "nested-junk-only": (
        lambda r: (
            _good(r),
            [_junk(r / "train" / "dog" / "x" / f"{i}.png") for i in range(2)],
            [(r / "train" / "dog" / f"{i}.png").unlink() for i in range(3)],
        ),
        False,
    ),
    "test-without-train": (lambda r: _good(r, splits=("test",)), False),
    "train-is-a-file": (lambda r: (_good(r, splits=("test",)), _junk(r / "train")), False),
    "mismatched-classes": (lambda r: (_good(r), shutil.move(r / "test" / "dog", r / "test" / "wolf")), False),
    "non-utf8-class": (lambda r: (_good(r), _png(_non_utf8(r / "train", b"\xffbird") / "0.png")), False),
    "unreadable-only": (
        lambda r: [(_junk(r / c / "0.png", b"\x89PNG junk"), (r / c / "0.png").chmod(0)) for c in "ab"],
        False,
    ),
    "class-folder-is-a-file": (
        lambda r: (_good(r), shutil.rmtree(r / "test" / "dog"), _junk(r / "test" / "dog")),
        False,
    ),
    # Odd but usable: the bad files are skipped with reasons.
    "one-image-per-class": (lambda r: _good(r, per_class=1), True),
    "some-corrupt-some-good": (
        lambda r: (_good(r), _junk(r / "train" / "cat" / "bad.jpg"), _junk(r / "train" / "dog" / "empty.png", b"")),
        True,
    ),
    "symlink-loop": (lambda r: (_good(r), os.symlink("..", r / "train" / "cat" / "up")), True),
    "dangling-symlink": (lambda r: (_good(r), os.symlink("/nonexistent/x.png", r / "train" / "cat" / "x.png")), True),
    "fifo-named-png": (lambda r: (_good(r), os.mkfifo(r / "train" / "cat" / "f.png")), True),
    "non-utf8-file": (lambda r: (_good(r), _png(_non_utf8(r / "train" / "cat", b"\xfe\xff.png"))), True),
    "huge-header": (lambda r: (_good(r), Image.new("L", (20000, 20000)).save(r / "train" / "dog" / "big.png")), True),
}


@pytest.mark.parametrize("case", list(FOLDERS))
def test_data_on_a_broken_folder_is_one_line_or_a_report_and_changes_nothing(tmp_path, capsys, case):
    make, usable = FOLDERS[case]
    root = tmp_path / "ds"
    make(root)
    try:
        _check(capsys, ["data", str(root)], tmp_path, ok=usable)
        if not usable:  # training on it fails the same way, before any run directory is made
            _check(
                capsys, ["train", "resnet20", "--data", str(root), "--out", str(tmp_path / "run"), "--quiet"], tmp_path
            )
    finally:
        for p in root.rglob("*") if root.is_dir() else []:
            if not p.is_symlink():
                p.chmod(0o755)


# --- broken run directories ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        home = tmp_path_factory.mktemp("home")
        mp.setenv("CNNZOO_CACHE_DIR", str(home / "cache"))
        mp.setenv("CNNZOO_DATA_DIR", str(home / "data"))
        out = tmp_path_factory.mktemp("runs") / "r"
        train("resnet20", "digits", out=out, quiet=True, **TINY)
    return out


class _RunsCode:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def _evil(path: Path) -> None:
    marker = path.parent.parent / "pwned"
    good = torch.load(path, weights_only=True)
    torch.save(dict(good, extra=_RunsCode(os.system, f"touch {marker}")), path)


def _edit_ckpt(path: Path, edit) -> None:
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, path)


def _cut(path: Path) -> None:
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 3])


def _to_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _config_edit(old: str, new: str):
    def edit(run: Path) -> None:
        p = run / "config.toml"
        text = p.read_text()
        assert old in text
        p.write_text(text.replace(old, new))

    return edit


# name -> (damage to the run directory, which commands must still succeed)
RUNS: dict[str, tuple[Callable[[Path], object], set[str]]] = {
    "missing-best": (lambda r: (r / "best.pt").unlink(), {"resume"}),
    "missing-last": (lambda r: (r / "last.pt").unlink(), {"eval", "predict", "export"}),
    "missing-config": (lambda r: (r / "config.toml").unlink(), {"eval", "predict", "export"}),
    "not-a-run": (lambda r: [p.unlink() for p in r.iterdir() if p.is_file()], set()),
    "best-truncated": (lambda r: _cut(r / "best.pt"), {"resume"}),
    "best-garbage": (lambda r: (r / "best.pt").write_bytes(os.urandom(999)), {"resume"}),
    "best-empty": (lambda r: (r / "best.pt").write_bytes(b""), {"resume"}),
    "best-a-folder": (lambda r: _to_dir(r / "best.pt"), {"resume"}),
    "best-runs-code": (lambda r: _evil(r / "best.pt"), {"resume"}),
    "last-runs-code": (lambda r: _evil(r / "last.pt"), {"eval", "predict", "export"}),
    "last-truncated": (lambda r: _cut(r / "last.pt"), {"eval", "predict", "export"}),
    "last-without-optimizer": (
        lambda r: _edit_ckpt(r / "last.pt", lambda c: c.pop("optimizer")),
        {"eval", "predict", "export"},
    ),
    "best-wrong-meta": (lambda r: _edit_ckpt(r / "best.pt", lambda c: c["meta"].update(num_classes="ten")), {"resume"}),
    "best-foreign-weights": (
        lambda r: _edit_ckpt(r / "best.pt", lambda c: c.update(model={"w": torch.zeros(3)})),
        {"resume"},
    ),
    "best-config-wrong-type": (
        lambda r: _edit_ckpt(r / "best.pt", lambda c: c["config"].update(lr="fast")),
        {"resume"},
    ),
    "config-wrong-type": (_config_edit("lr = 0.1", 'lr = "fast"'), {"eval", "predict", "export"}),
    "config-unknown-key": (_config_edit("lr = 0.1", "lr = 0.1\nlearning_rate = 3"), {"eval", "predict", "export"}),
    "config-not-utf8": (lambda r: (r / "config.toml").write_bytes(b"lr = \xff\xfe\n"), {"eval", "predict", "export"}),
    "config-garbage": (lambda r: (r / "config.toml").write_bytes(os.urandom(300)), {"eval", "predict", "export"}),
    "config-a-folder": (lambda r: _to_dir(r / "config.toml"), {"eval", "predict", "export"}),
    "report-garbage": (lambda r: (r / "report.json").write_bytes(b"{x"), {"eval", "predict", "export", "resume"}),
}


def _commands(run: Path, image: Path) -> dict[str, list[str]]:
    return {
        "eval": ["eval", str(run), "--device", "cpu"],
        "predict": ["predict", str(run), str(image)],
        "export": ["export", str(run), "--format", "torchscript"],
        "resume": ["train", "--resume", str(run), "--quiet", "--stop-after", "1"],
    }


@pytest.mark.parametrize("case", list(RUNS))
def test_commands_on_a_broken_run_directory(good_run, tmp_path, capsys, case):
    damage, still_work = RUNS[case]
    run = Path(shutil.copytree(good_run, tmp_path / "run", ignore=shutil.ignore_patterns("tensorboard")))
    damage(run)
    image = tmp_path / "img.png"
    _png(image, size=32)
    for name, argv in _commands(run, image).items():
        if name in still_work:
            continue  # the damage is to a file this command does not read (it would run a full command)
        _check(capsys, argv, tmp_path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "damage",
    [
        lambda r: (r / "report.json").write_bytes(b"{x"),
        lambda r: (r / "report.json").write_bytes(b"\xff\xfe"),
        lambda r: (r / "report.json").write_text('{"model": "resnet20", "test": {"top1": "high"}}'),
        lambda r: (r / "report.json").write_text("[1, 2]"),
        lambda r: _to_dir(r / "report.json"),
        lambda r: (r / "report.json").unlink(),
    ],
    ids=["garbage", "not-utf8", "wrong-types", "a-list", "a-folder", "missing"],
)
def test_compare_on_a_broken_report_is_one_line_before_any_measuring(good_run, tmp_path, capsys, damage):
    run = Path(shutil.copytree(good_run, tmp_path / "run", ignore=shutil.ignore_patterns("tensorboard")))
    damage(run)
    _check(
        capsys,
        [
            "compare",
            "resnet20",
            "--input",
            "1x32x32",
            "--device",
            "cpu",
            "--runs",
            str(run),
            "--out",
            str(tmp_path / "cmp"),
        ],
        tmp_path,
    )


@pytest.mark.parametrize(
    "image",
    [
        lambda d: _junk(d / "x.png", b""),
        lambda d: _junk(d / "x.png"),
        lambda d: _junk(d / "x.jpg", b"\xff\xd8\xff\xe0 cut"),
        lambda d: (d / "x.png").mkdir(),
        lambda d: None,
        lambda d: Image.new("L", (15000, 15000)).save(d / "x.png"),  # 225 M pixels in a 200 kB file
    ],
    ids=["zero-byte", "not-an-image", "corrupt-jpeg", "a-folder", "missing", "decompression-bomb"],
)
def test_predict_on_a_broken_image_is_one_line(good_run, tmp_path, capsys, image):
    image(tmp_path)
    path = next(iter(tmp_path.iterdir()), tmp_path / "x.png")
    _check(capsys, ["predict", str(good_run), str(path)], tmp_path)


def test_a_broken_run_directory_in_a_real_process_prints_one_line(good_run, tmp_path):
    """The same property through the console entry point (what a shell user sees), for the code-running checkpoint."""
    run = Path(shutil.copytree(good_run, tmp_path / "run", ignore=shutil.ignore_patterns("tensorboard")))
    _evil(run / "best.pt")
    before = _tree(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    proc = subprocess.run(
        [sys.executable, "-m", "cnnzoo", "eval", str(run)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "weights_only=False" not in proc.stderr and not (tmp_path / "pwned").exists()
    assert _tree(tmp_path) == before


# --- recipes and flags: refused before any work ----------------------------------------------------------------------


RECIPES = {
    "wrong-type": b'lr = "fast"\n',
    "int-field-float": b"epochs = 2.5\n",
    "not-utf8": b"\xff\xfe lr = 0.1\n",
    "invalid-toml": b"lr = = 1\n",
    "nan": b"lr = nan\n",
    "inf-in-list": b"milestones = [1, inf]\n",
    "models-not-a-table": b"models = 3\n",
    "model-table-wrong-type": b"[models.resnet20]\nlr = [1]\n",
    "description-not-text": b"description = 4\n",
    "unknown-key": b"learning_rate = 0.1\n",
    "out-of-range": b"momentum = 2.0\n",
    "binary": bytes(range(256)) * 4,
}


@pytest.mark.parametrize("case", [*RECIPES, "a-folder", "missing", "huge"])
def test_bad_recipe_is_one_line_before_any_work(tmp_path, capsys, case):
    recipe = tmp_path / "r.toml"
    if case == "a-folder":
        recipe.mkdir()
    elif case == "huge":
        recipe.write_bytes(b"# padding\n" * 200_000)
    elif case != "missing":
        recipe.write_bytes(RECIPES[case])
    err = _check(capsys, ["train", "resnet20", "--recipe", str(recipe), "--out", str(tmp_path / "run")], tmp_path)
    assert str(recipe) in err
    assert not (tmp_path / "run").exists()


FLAGS = [
    ["--momentum", "-1"],
    ["--momentum", "2"],
    ["--nesterov", "--momentum", "0"],
    ["--optimizer", "adamw", "--nesterov"],
    ["--gamma", "0"],
    ["--gamma", "-1"],
    ["--warmup-epochs", "-1"],
    ["--warmup-steps", "-1"],
    ["--warmup-lr", "-1"],
    ["--lr", "nan"],
    ["--lr", "inf"],
    ["--lr", "0"],
    ["--min-lr", "1"],
    ["--cutout", "-1"],
    ["--subset", "0"],
    ["--image-size", "0"],
    ["--eval-batch-size", "0"],
    ["--val-size", "-1"],
    ["--val-size", "2.5"],
    ["--threads", "-1"],
    ["--epochs", "-1"],
    ["--seed", "-3"],
    ["--milestones", "1,nan"],
    ["--in-channels", "2"],
    ["--weight-decay", "inf"],
    ["--label-smoothing", "1"],
    ["--ema", "1"],
    ["--batch-size", "0"],
    ["--aux-weight", "-1"],
    ["--step-size", "0"],
    ["--pct-start", "1"],
    ["--dropout", "nan"],
]


@pytest.mark.parametrize("flags", FLAGS, ids=[" ".join(f) for f in FLAGS])
def test_out_of_range_flag_is_refused_before_any_work(tmp_path, capsys, flags, monkeypatch):
    from cnnzoo.data import load

    monkeypatch.setattr(load, "decode", lambda *a, **k: pytest.fail("data was read before the flags were checked"))
    _check(capsys, ["train", "resnet20", *flags, "--out", str(tmp_path / "run")], tmp_path)
    assert not (tmp_path / "run").exists()


def test_config_validation_refuses_wrong_types_from_the_python_api():
    from cnnzoo.errors import CnnzooError
    from cnnzoo.train.config import TrainConfig

    for bad in (dict(epochs="3"), dict(lr=None), dict(nesterov="yes"), dict(milestones=[1, "x"]), dict(model=3)):
        with pytest.raises(CnnzooError):
            TrainConfig(**bad)
    assert TrainConfig(epochs=3.0).epochs == 3 and isinstance(TrainConfig(epochs=3.0).epochs, int)
