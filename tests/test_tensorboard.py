"""TensorBoard logging, read back with tensorboard's own reader: per-step and per-epoch scalars, hparams, figures;
a resume that repeats no step; --overwrite removes the old event files."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("tensorboard")  # the `tensorboard` extra (in `dev`)

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

from cnnzoo.train.api import train  # noqa: E402
from conftest import TINY  # noqa: E402

OPTS = dict(epochs=2, log_every=1, **TINY)  # 3 steps per epoch: steps 1..6


def _events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    return acc.Reload()


def _steps(acc: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in acc.Scalars(tag)]


@pytest.mark.slow
def test_tensorboard_logs_steps_epochs_hparams_and_figures_and_a_resume_repeats_no_step(tmp_path):
    run_dir = tmp_path / "r"
    assert train("resnet20", "digits", out=run_dir, quiet=True, stop_after=4, **OPTS)["interrupted"]
    shutil.copy(run_dir / "last.pt", tmp_path / "last-at-step-4.pt")
    train(resume=run_dir, quiet=True)
    # As if killed after logging steps 5 and 6 but before saving them: resume from step 4 again.
    shutil.copy(tmp_path / "last-at-step-4.pt", run_dir / "last.pt")
    report = train(resume=run_dir, quiet=True)

    acc = _events(run_dir)
    for tag in ("train/loss", "train/lr", "train/images_per_s"):
        assert _steps(acc, tag) == [1, 2, 3, 4, 5, 6], tag  # every step once, none repeated by the resumes
    assert [e.step for e in acc.Scalars("epoch/val_top1")] == [3, 6]
    assert acc.Scalars("train/lr")[0].value > 0
    assert {"epoch/train_loss", "epoch/val_loss", "epoch/eval_seconds", "epoch/save_seconds"} <= set(
        acc.Tags()["scalars"]
    )
    assert acc.Scalars("hparam/test_top1")[-1].value == pytest.approx(report["test"]["top1"])
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["model"].string_value == "resnet20" and hparams["epochs"].number_value == 2
    assert {"curves", "confusion"} <= set(acc.Tags()["images"])
    assert not [p for p in (run_dir / "tensorboard").iterdir() if p.is_dir()]  # hparams in the run's own folder

    # --overwrite: a new run in the same folder starts a fresh log (the old event files are gone).
    train("resnet20", "digits", out=run_dir, quiet=True, overwrite=True, **dict(OPTS, epochs=1))
    files = list((run_dir / "tensorboard").iterdir())
    assert len(files) == 1
    assert _steps(_events(run_dir), "train/loss") == [1, 2, 3]
