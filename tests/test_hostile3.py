"""Hostile inputs, third round: paths that are not UTF-8, images of every format the folder scan accepts carried
through every later step, malformed files inside a study, and what killed writes leave in the data cache.

The property is the one of ``test_hostile.py``: it works, or it ends in one ``error:`` line with the README's exit
status and no traceback.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnzoo.cli import main
from cnnzoo.errors import CnnzooError, is_utf8, shown
from test_hostile import _good
from test_hostile2 import TINY_FLAGS

NOT_UTF8 = os.fsdecode(b"caf\xe9")  # Latin-1 "cafe", as an old file system or archive would name it


def _one_line(capsys, argv: list[str], code: int = 2) -> str:
    got = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err and got == code and err.startswith("error: ") and err.count("\n") == 1, (got, err)
    return err


# --- paths that are not UTF-8 ----------------------------------------------------------------------------------------


def test_the_shown_form_of_a_name_that_is_not_utf8_is_printable():
    assert not is_utf8(NOT_UTF8) and is_utf8("café")
    assert shown(NOT_UTF8) == "caf\\xe9" and shown("café") == "café"
    assert shown(Path("/tmp") / NOT_UTF8).encode("utf-8")  # printable and storable as UTF-8


def test_a_run_into_an_out_folder_whose_name_is_not_utf8_works(tmp_path, capsys):
    """The run directory's name is only ever a path (never stored as TOML text): the run trains, its lines print
    with the bytes escaped, and the run evaluates and resumes from there."""
    out = tmp_path / NOT_UTF8 / "run"
    assert main(["train", "resnet20", "--data", "digits", "--epochs", "1", "--out", str(out), *TINY_FLAGS]) == 0
    printed = capsys.readouterr().out
    assert "caf\\xe9" in printed
    events = list((out / "tensorboard").glob("events.*")) if (out / "tensorboard").is_dir() else []
    assert events or "no TensorBoard log: its writer needs a UTF-8 path" in printed
    assert json.loads((out / "report.json").read_text())["run_dir"] == str(out)
    assert main(["eval", str(out), "--device", "cpu"]) == 0
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0


def test_a_data_folder_whose_path_is_not_utf8_is_one_line_and_its_cache_key_works(tmp_path, capsys):
    """A data path is stored as text in config.toml: training from it is refused in one line (rename or link it);
    reading it (`cnnzoo data`, the decoded cache named after the folder) works."""
    root = _good(tmp_path / NOT_UTF8 / "pets")
    err = _one_line(capsys, ["train", "resnet20", "--data", str(root), "--out", str(tmp_path / "r"), *TINY_FLAGS])
    assert "not valid UTF-8" in err and "caf\\xe9" in err and not (tmp_path / "r").exists()
    assert main(["data", str(root)]) == 0
    assert "pets" in capsys.readouterr().out
    from cnnzoo.data.cache import cache_path

    named = cache_path(root, "folders")
    assert named.name.startswith("pets-") and is_utf8(str(named))
    elsewhere = cache_path(tmp_path / "cafe" / "pets", "folders")
    assert elsewhere.name != named.name  # the key is the path's bytes: the two folders do not share a cache file


# --- every accepted image passes every later step --------------------------------------------------------------------


def _formats(folder: Path) -> list[Path]:
    """One image in each mode and format a user's folder may hold, 12x10 pixels."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
    folder.mkdir(parents=True, exist_ok=True)
    images = {
        "rgb.jpg": rgb,
        "cmyk.jpg": rgb.convert("CMYK"),
        "grey.jpg": rgb.convert("L"),
        "rgba.png": rgb.convert("RGBA"),
        "la.png": rgb.convert("LA"),
        "palette.png": rgb.convert("P"),
        "grey16.png": Image.fromarray((rng.integers(0, 65536, (10, 12))).astype(np.uint16)),
        "bilevel.bmp": rgb.convert("1"),
        "rgb.bmp": rgb,
        "rgb.webp": rgb,
        "rgba.webp": rgb.convert("RGBA"),
    }
    paths = []
    for name, image in images.items():
        image.save(folder / name)
        paths.append(folder / name)
    return paths


def test_every_image_the_scan_accepts_trains_predicts_and_shows(tmp_path, capsys):
    """A folder of every format: the scan accepts each file or names it as skipped, and what it accepts trains, is
    predicted (each file on its own) and is shown (`show mistakes` draws the test images)."""
    root = tmp_path / "formats"
    for split in ("train", "test"):
        for label in ("a", "b"):
            _formats(root / split / label)
    assert main(["data", str(root)]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    flags = ["--epochs", "1", "--batch-size", "4", "--device", "cpu", "--threads", "1", "--val-size", "4"]
    assert main(["train", "resnet20", "--data", str(root), "--out", str(run), *flags]) == 0, out
    images = sorted((root / "test" / "a").iterdir())
    for image in images:
        assert main(["predict", str(run), str(image)]) == 0, image.name
    assert main(["show", "cam", str(run), *map(str, images), "--out", str(tmp_path / "cam.png")]) == 0
    assert main(["show", "mistakes", str(run), "--device", "cpu", "--out", str(tmp_path / "m.png")]) == 0
    for chart in ("cam.png", "m.png"):
        assert (tmp_path / chart).read_bytes()[:4] == b"\x89PNG"


# --- malformed files inside a study ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "report",
    [b"{not json", b"\xff\xfe", b"[]", b'{"model": "resnet20", "data": "digits", "test": {"top1": "high"}}', b"null"],
    ids=["garbage", "not-utf8", "list", "text-top1", "null"],
)
def test_a_study_over_a_malformed_report_is_one_line(tmp_path, report):
    from cnnzoo.analysis.study.runs import Run
    from cnnzoo.train.config import build_config

    run = Run(build_config("resnet20", "digits"), tmp_path / "resnet20" / "seed-0")
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "report.json").write_bytes(report)
    with pytest.raises(CnnzooError, match="report"):
        run.report()


def test_a_study_report_without_the_numbers_a_study_reads_is_one_line(tmp_path):
    from cnnzoo.analysis.study.runs import Run
    from cnnzoo.train.config import build_config

    run = Run(build_config("resnet20", "digits"), tmp_path / "seed-0")
    run.run_dir.mkdir()
    good = {"model": "resnet20", "data": "digits", "test": {"top1": 0.5}, "best_val_top1": 0.4, "train_seconds": 3}
    (run.run_dir / "report.json").write_text(json.dumps(good))
    assert run.report()["train_seconds"] == 3
    (run.run_dir / "report.json").write_text(json.dumps(good | {"train_seconds": "3 s"}))
    with pytest.raises(CnnzooError, match="train_seconds is not a number"):
        run.report()
    (run.run_dir / "metrics.jsonl").write_text('{"epoch": 1}\n[1, 2]\n')
    with pytest.raises(CnnzooError, match="not a cnnzoo metrics file"):
        run.history()


def test_study_depth_over_a_run_whose_report_is_malformed_is_one_line(tmp_path, capsys):
    """The study reuses a finished run only through a report it can read: a damaged one is named, nothing trains."""
    out = tmp_path / "depth"
    args = ["study", "depth", "--depths", "20,32", "--data", "digits", "--recipe", "demo", "--out", str(out)]
    args += ["--subset", "64", "--val-size", "32", "--epochs", "1", "--device", "cpu"]
    assert main(args) == 0
    capsys.readouterr()
    report = out / "resnet20" / "seed-0" / "report.json"
    report.write_text("{ damaged")
    before = (out / "depth.csv").read_bytes()
    err = _one_line(capsys, args)
    assert "report.json" in err and (out / "depth.csv").read_bytes() == before


# --- what killed writes leave in the data cache ----------------------------------------------------------------------


def test_the_cache_removes_what_a_killed_writer_left_but_not_a_living_writers_file(tmp_path):
    """A cache write in progress is ``.<name>.<pid>.<random>.tmp``: the next use of the cache removes the files of
    writers that are gone (a SIGTERM or a kill during the write), at once, and never a living process's."""
    from cnnzoo.data.cache import load_or_build

    path = tmp_path / "cache" / "digits-0123.pt"
    path.parent.mkdir()
    dead = path.parent / f".{path.name}.{2**22 + 12345}.abc123.tmp"  # above Linux's pid_max default: no such process
    alive = path.parent / f".{path.name}.{os.getpid()}.def456.tmp"
    old = path.parent / f".{path.name}.ghi789.tmp"  # an older version's name, without a pid
    for p in (dead, alive, old):
        p.write_bytes(b"half a cache file")
    assert torch.equal(load_or_build(path, "key", lambda: {"x": torch.ones(2)})["x"], torch.ones(2))
    assert not dead.exists() and alive.exists() and old.exists()  # a file without a pid waits until it is old
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    load_or_build(path, "key", lambda: {"x": torch.zeros(2)})  # served from the cache: the cleanup runs anyway
    assert not old.exists() and alive.exists()


def test_a_sigterm_during_a_cache_write_leaves_nothing_after_the_next_use(tmp_path):
    """A real process killed with SIGTERM while it writes the cache (a slow payload); the next use cleans up."""
    import signal
    import subprocess
    import sys

    from test_hostile2 import ENV

    path = tmp_path / "c.pt"
    script = (
        "import time, torch\n"
        "from cnnzoo.data import cache\n"
        "class Slow:\n"
        "    def __reduce__(self):\n"
        "        time.sleep(60)\n"
        "        return (int, ())\n"
        f"cache.load_or_build(__import__('pathlib').Path({str(path)!r}), 'k', lambda: {{'x': Slow()}})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env=ENV)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".c.pt.*.tmp")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert list(tmp_path.glob(".c.pt.*.tmp")), "the writer never started its temporary file"
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    assert list(tmp_path.glob(".c.pt.*.tmp"))  # SIGTERM's default action: no Python cleanup ran
    from cnnzoo.data.cache import load_or_build

    load_or_build(path, "k", lambda: {"x": 1})
    assert not list(tmp_path.glob(".*.tmp")) and path.is_file()
