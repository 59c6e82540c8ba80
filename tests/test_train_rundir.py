"""A run directory is one unit, and nothing a user owns is lost: each test is the failure its rule prevents.

Most cases are refused before any training (cheap); the ones that train share the session's runs (conftest.py).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cnnzoo.atomic import write_atomic
from cnnzoo.cli import main
from cnnzoo.errors import CnnzooError
from cnnzoo.train.api import train
from cnnzoo.train.checkpoint import check_data_matches
from cnnzoo.train.rundir import MARKER, check_out
from conftest import TINY

TINY_FLAGS = ["--subset", "96", "--val-size", "48", "--batch-size", "32", "--device", "cpu", "--threads", "2"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_error(capsys, code: int, expected: str) -> str:
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err, err
    return err


# --- --out writes only into a new or empty folder or a run directory of cnnzoo's own ----------------------------------


def test_out_into_a_folder_of_the_users_own_files_is_refused(tmp_path, capsys):
    mine = tmp_path / "experiments"
    mine.mkdir()
    (mine / "config.toml").write_text("# my own notes, not a cnnzoo config\n")
    (mine / "data.csv").write_text("a,b\n1,2\n")
    before = _snapshot(mine)
    for extra in ([], ["--overwrite"]):  # --overwrite replaces cnnzoo runs only, never a stranger's folder
        code = main(["train", "resnet20", "--data", "digits", "--out", str(mine), "--epochs", "1", *extra])
        _one_line_error(capsys, code, "not a cnnzoo run directory")
    assert _snapshot(mine) == before


def test_out_naming_a_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("keep me\n")
    _one_line_error(capsys, main(["train", "resnet20", "--out", str(path), "--epochs", "1"]), "is a file")
    _one_line_error(capsys, main(["train", "resnet20", "--out", str(path / "run"), "--epochs", "1"]), "cannot write")
    assert path.read_text() == "keep me\n"


def test_finished_run_whose_last_pt_was_deleted_is_not_overwritten(tiny_run, copy_run, capsys):
    out = copy_run(tiny_run[0])
    (out / "last.pt").unlink()
    before = _snapshot(out)
    code = main(["train", "resnet20", "--data", "digits", "--out", str(out), "--epochs", "1", *TINY_FLAGS])
    _one_line_error(capsys, code, "already holds a run")
    assert _snapshot(out) == before  # best.pt and report.json untouched


def test_a_run_directory_without_results_may_be_reused(tmp_path):
    # What a kill before the first epoch leaves (marker + config.toml): nothing to lose, so no --overwrite needed
    # (`cnnzoo study` retrains such runs). With a checkpoint or a report it is a run that --overwrite must name.
    write_atomic(tmp_path / MARKER, json.dumps({"cnnzoo_run": 1, "id": "abc"}))
    (tmp_path / "config.toml").write_text("model = 'resnet20'\n")
    check_out(tmp_path)
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(CnnzooError, match="already holds a run"):
        check_out(tmp_path)
    check_out(tmp_path, overwrite=True)
    (tmp_path / MARKER).write_text('{"cnnzoo_run": "yes"}')  # a marker that is not one
    with pytest.raises(CnnzooError, match="not a cnnzoo run directory"):
        check_out(tmp_path, overwrite=True)


# --- --overwrite replaces a run only once the new one is known to be valid -----------------------------------------


@pytest.mark.parametrize(
    ("mistake", "expected"),
    [(dict(data="digitz"), "digitz"), (dict(data="digits", dropout=0.3), "no dropout layers")],
    ids=["typo-in-data", "model-option-the-model-lacks"],
)
def test_overwrite_with_a_mistake_keeps_the_old_run(tiny_run, copy_run, mistake, expected):
    out = copy_run(tiny_run[0])
    before = _snapshot(out)
    with pytest.raises(CnnzooError, match=expected):
        train("resnet20", out=out, overwrite=True, epochs=1, quiet=True, **mistake, **TINY)
    assert _snapshot(out) == before


# --- every file atomic; what a kill leaves is cleaned up; resume trusts the checkpoint ------------------------------


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_atomic(path, "old\n")
    with pytest.raises(TypeError):
        write_atomic(path, 12345)  # not text or bytes: fails mid-write
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
    write_atomic(path, b"new\n")
    assert path.read_bytes() == b"new\n"


def test_write_atomic_gives_the_mode_a_plain_write_would(tmp_path):
    # mkstemp's 0600 must not leak into a user's report.json or figures (others could no longer read them).
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "new.json", "{}")
        assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o644
        (tmp_path / "kept.json").write_text("{}")
        (tmp_path / "kept.json").chmod(0o640)
        write_atomic(tmp_path / "kept.json", "[]")
        assert (tmp_path / "kept.json").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_temp_files_a_kill_left_are_removed_at_the_next_resume(tiny_run, copy_run):
    # A kill during an atomic write leaves ".<name>.<random>.tmp" beside the file; resume removes them. The resume also
    # switches --cuda-graph on (a speed setting, like --compile, that a resume may change).
    out = copy_run(tiny_run[0])
    left = [out / ".last.pt.k1ll3d.tmp", out / ".metrics.jsonl.x7.tmp", out / ".config.toml.q.tmp"]
    for path in left:
        path.write_bytes(b"half a file")
    result = train(resume=out, epochs=3, stop_after=7, cuda_graph=True, quiet=True)
    assert result["interrupted"] and result["step"] == 7
    assert not any(path.exists() for path in left)
    assert not (out / "report.json").exists()  # the finished 2-epoch run's report no longer describes this run
    assert torch.load(out / "last.pt", weights_only=True)["config"]["cuda_graph"] is True


def test_resume_refuses_a_hand_edited_config(tiny_run, copy_run):
    out = copy_run(tiny_run[0])
    config = out / "config.toml"
    text = config.read_text()
    assert "\nlr = 0.1\n" in text
    config.write_text(text.replace("\nlr = 0.1\n", "\nlr = 0.5\n"))
    with pytest.raises(CnnzooError, match="config.toml disagrees with last.pt on lr"):
        train(resume=out, epochs=3, quiet=True)


def test_resume_refuses_a_checkpoint_of_another_run(tiny_run, exact_run, copy_run):
    out = copy_run(tiny_run[0])
    (out / "last.pt").write_bytes((exact_run[0] / "last.pt").read_bytes())
    with pytest.raises(CnnzooError, match="last.pt is not the checkpoint of the run"):
        train(resume=out, epochs=3, quiet=True)
    out = copy_run(exact_run[0])
    (out / "best.pt").write_bytes((tiny_run[0] / "best.pt").read_bytes())
    with pytest.raises(CnnzooError, match="best.pt is missing or not this run's"):
        train(resume=out, epochs=4, quiet=True)


def test_resume_of_a_folder_that_is_no_run_is_one_line(tmp_path, capsys):
    _one_line_error(capsys, main(["train", "--resume", str(tmp_path / "nope")]), "no such run directory")
    (tmp_path / "config.toml").write_text("model = 'resnet20'\n")
    _one_line_error(capsys, main(["train", "--resume", str(tmp_path)]), "not a cnnzoo run directory")


# --- a run remembers what it was trained on -------------------------------------------------------------------------


def test_data_that_differs_from_the_checkpoints_is_refused_saying_how():
    meta = {
        "data": "shapes",
        "classes": ["circle", "square", "star"],
        "in_channels": 3,
        "image_size": 32,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
    }
    same = SimpleNamespace(
        classes=["circle", "square", "star"], in_channels=3, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3
    )
    check_data_matches(meta, same, "run")
    cases = [
        (dict(classes=["circle", "square"]), "missing classes 'star'"),
        (dict(classes=["circle", "square", "star", "moon"]), "new classes 'moon'"),
        (dict(classes=["square", "circle", "star"]), "the same classes in another order"),
        (dict(in_channels=1, mean=(0.5,), std=(0.25,)), "1 channels, not 3"),
        (dict(image_size=28), "image size 28, not 32"),
        (dict(mean=(0.4, 0.5, 0.5)), "normalisation mean [0.4, 0.5, 0.5], not [0.5, 0.5, 0.5]"),
    ]
    for change, expected in cases:
        with pytest.raises(CnnzooError, match=r"^run: the data is not what the run was trained on \(shapes\): ") as e:
            check_data_matches(meta, SimpleNamespace(**{**vars(same), **change}), "run")
        assert expected in str(e.value) and "\n" not in str(e.value)


# --- exit status tells the truth -------------------------------------------------------------------------------------


def test_sigterm_saves_the_checkpoint_and_exits_143(tmp_path, monkeypatch, capsys):
    """A SIGTERM mid-run (sent by the process to itself after 2 steps, caught by the trainer's handler): last.pt
    at the step reached, the resume hint, no report, and exit status 143, so `train && export` stops."""
    from cnnzoo.train import loop

    steps = []

    def step_then_terminate(*args, **kwargs):
        steps.append(1)
        if len(steps) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(*args, **kwargs)

    real_step = loop.train_step
    monkeypatch.setattr(loop, "train_step", step_then_terminate)
    out = tmp_path / "run"
    code = main(["train", "resnet20", "--data", "digits", "--out", str(out), "--epochs", "5", *TINY_FLAGS])
    output = capsys.readouterr().out
    assert code == 143, output
    assert "SIGTERM received" in output and f"resume with: cnnzoo train --resume {out}" in output
    assert torch.load(out / "last.pt", weights_only=True)["position"]["step"] == 2
    assert not (out / "report.json").exists()


def test_all_arguments_are_checked_before_any_work(tmp_path, capsys):
    out = tmp_path / "seeds"
    _one_line_error(capsys, main(["train", "resnet20", "--seeds", "0,-1", "--out", str(out)]), "seeds must be")
    _one_line_error(capsys, main(["train", "resnet20", "--seeds", "1,1", "--out", str(out)]), "seeds must differ")
    _one_line_error(capsys, main(["train", "resnet20", "--stop-after", "0", "--out", str(out)]), "--stop-after")
    assert not out.exists()  # nothing trained, nothing written
    # A later seed's folder that may not be written is refused before the first seed trains.
    (out / "seed-1").mkdir(parents=True)
    (out / "seed-1" / "mine.txt").write_text("x")
    _one_line_error(capsys, main(["train", "resnet20", "--seeds", "0,1", "--out", str(out)]), "seed-1")
    assert sorted(p.name for p in out.iterdir()) == ["seed-1"]
