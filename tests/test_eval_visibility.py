"""Evaluation a user can see and afford: timings per epoch, --eval-every, --early-stop, the eval progress bar."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
import torch

from cnnzoo.errors import CnnzooError
from cnnzoo.train import loop, progress
from cnnzoo.train.api import train
from cnnzoo.train.config import TrainConfig
from cnnzoo.train.distributed import Dist
from conftest import TINY


def _lines(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_eval_every_validates_every_nth_and_the_last_epoch_and_times_each_part(tmp_path):
    report = train("resnet20", "digits", out=tmp_path / "r", quiet=True, epochs=3, eval_every=2, **TINY)
    lines = _lines(tmp_path / "r")
    assert [r["val_top1"] is not None for r in lines] == [False, True, True]  # epoch 2 (every 2nd) and 3 (the last)
    assert report["best_epoch"] in (2, 3)  # chosen among validated epochs only
    for r in lines:
        assert r["train_seconds"] > 0 and r["eval_seconds"] >= 0 and r["save_seconds"] > 0
    assert lines[0]["eval_seconds"] < lines[1]["eval_seconds"]  # nothing evaluated after epoch 1
    # --subset shrank only the training split: the test figure is on the whole digits test split, and says so.
    assert report["test"]["n"] == 360
    assert json.loads((tmp_path / "r" / "report.json").read_text())["test"]["n"] == 360


def _history(*val_top1):
    return [{"epoch": i + 1, "val_top1": v} for i, v in enumerate(val_top1)]


@pytest.mark.parametrize(
    ("history", "best_epoch", "patience", "stopped"),
    [
        (_history(0.5, 0.4, 0.4), 1, 2, True),  # two validated epochs since the best
        (_history(0.5, 0.4), 1, 2, False),
        (_history(0.5, None, 0.4), 1, 2, False),  # epoch 2 was not validated: it does not count
        (_history(0.5, 0.4, 0.4), 1, 0, False),  # off
    ],
)
def test_early_stop_counts_validated_epochs_since_the_best_from_the_history(history, best_epoch, patience, stopped):
    run = SimpleNamespace(cfg=SimpleNamespace(early_stop=patience), history=history, best={"epoch": best_epoch})
    assert loop.early_stopped(run) is stopped


@pytest.fixture
def flat_validation(monkeypatch):
    """Validation top-1 that never improves after epoch 1 (so patience runs out at a known epoch)."""
    monkeypatch.setattr(loop, "_val", lambda run, model: {"loss": 1.0, "top1": 0.5, "top5": 1.0})


def test_early_stop_is_a_normal_finish_and_survives_resume(tmp_path, flat_validation):
    opts = dict(epochs=6, early_stop=2, **TINY)
    cut = train("resnet20", "digits", out=tmp_path / "r", quiet=True, stop_after=5, **opts)  # mid epoch 2
    assert cut["interrupted"]
    report = train(resume=tmp_path / "r", quiet=True)
    assert report["early_stopped"] is True and report["stopped_epoch"] == 3 and report["epochs"] == 3
    assert report["best_epoch"] == 1 and report["test"]["n"] == 360
    saved = json.loads((tmp_path / "r" / "report.json").read_text())
    assert saved["early_stopped"] is True and saved["stopped_epoch"] == 3
    assert len(_lines(tmp_path / "r")) == 3


def test_early_stop_without_a_validation_split_is_refused():
    with pytest.raises(CnnzooError, match="--early-stop needs a validation split") as e:
        TrainConfig(early_stop=3, val_size=0)
    assert "\n" not in str(e.value)


def test_evaluation_shows_a_progress_bar_on_a_terminal_and_measures_the_same(monkeypatch, tiny_run):
    from cnnzoo.train.engine import step_context
    from cnnzoo.train.run import load_bundle
    from cnnzoo.train.trained import load_checkpoint

    ckpt, model = load_checkpoint(tiny_run[0])
    cfg = TrainConfig(**ckpt["config"])
    data = load_bundle(cfg, torch.device("cpu"), Dist(), augment=False)
    ctx = step_context(cfg, torch.device("cpu"))
    assert progress.eval_bar("validate", len(data.val)) is None  # pytest's stdout is no terminal: no bar
    plain = loop.evaluate(model, data.val, ctx, data.num_classes)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert progress.eval_bar("validate", len(data.val)) is not None
    shown = loop.evaluate(model, data.val, ctx, data.num_classes, label="validate")
    assert shown == plain and shown["n"] == 48
