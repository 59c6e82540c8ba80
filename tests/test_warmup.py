"""He et al.'s warm-up rule: lr 0.01 until the running training error is below 80 %, then the schedule."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from cnnzoo.errors import CnnzooError
from cnnzoo.train.api import train
from cnnzoo.train.config import build_config
from cnnzoo.train.distributed import Dist
from cnnzoo.train.loop import WARMUP_WINDOW, judge_warmup
from cnnzoo.train.schedule import lr_at

# 12 steps per epoch (96 images, batch 8), so the 20-batch window fills in the second epoch.
RULE = dict(
    subset=96, val_size=48, batch_size=8, eval_batch_size=64, device="cpu", threads=2, deterministic=True, epochs=4
)
RULE.update(schedule="cosine", lr=0.1, warmup_lr=0.01, warmup_until_error=0.97)


def _cfg(**kw):
    return build_config("resnet20", "digits", **{"epochs": 10, "schedule": "cosine", "lr": 0.1, **kw})


def test_lr_is_warmup_lr_until_the_rule_ends_then_decays_from_there():
    cfg = _cfg(warmup_lr=0.01, warmup_until_error=0.8)
    assert [lr_at(s, cfg, 100) for s in (0, 500, 999)] == [0.01] * 3  # no end yet and no cap: warm forever
    assert lr_at(39, cfg, 100, warmup_end=40) == 0.01
    assert lr_at(40, cfg, 100, warmup_end=40) == pytest.approx(0.1)  # back to 0.1, the cosine starts at its end
    assert lr_at(999, cfg, 100, warmup_end=40) == pytest.approx(0.0)
    capped = _cfg(warmup_lr=0.01, warmup_until_error=0.8, warmup_steps=50)
    assert lr_at(49, capped, 100) == 0.01 and lr_at(50, capped, 100) == pytest.approx(0.1)
    paper = _cfg(schedule="multistep", milestone_steps=[300, 600], warmup_lr=0.01, warmup_until_error=0.8)
    assert lr_at(299, paper, 100, warmup_end=40) == 0.1 and lr_at(300, paper, 100, warmup_end=40) == 0.1 * 0.1


@pytest.mark.parametrize(
    "bad",
    [dict(warmup_until_error=0.8), dict(warmup_until_error=1.0, warmup_lr=0.01), dict(warmup_until_error=-0.1)],
)
def test_the_rule_needs_a_constant_warmup_lr_and_an_error_below_one(bad):
    with pytest.raises(CnnzooError, match="warmup"):
        _cfg(**bad)


def _judge_run(threshold: float, cap: int = 0):
    cfg = _cfg(warmup_lr=0.01, warmup_until_error=threshold, warmup_steps=cap)
    lines: list[str] = []
    run = SimpleNamespace(
        cfg=cfg, steps_per_epoch=100, dist=Dist(), warmup_errors=[], warmup_end=None, step=0, log=lines.append
    )
    run.lr = lambda step: lr_at(step, cfg, 100, run.warmup_end)
    return run, lines


def _batch(wrong: int, n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.zeros(n, dtype=torch.long)
    logits = torch.zeros(n, 10)
    logits[:, 0] = 1.0
    logits[:wrong, 0], logits[:wrong, 1] = 0.0, 1.0  # the first `wrong` images predicted as class 1
    return logits, labels


def test_the_warmup_ends_at_the_first_step_whose_window_is_below_the_threshold():
    """Errors 0.9 for 25 steps, then 0.5: the window's mean first drops below 0.8 once 5 of its 20 batches are 0.5
    (mean 0.8 is not below 0.8; 6 of them: 0.78) -> after step 31. A window that is not yet full never decides."""
    run, lines = _judge_run(0.8)
    ended = []
    errors = [9] * 25 + [5] * 20
    for wrong in errors:
        run.step += 1
        if run.warmup_end is None:
            ended.append(judge_warmup(run, *_batch(wrong)))
    assert run.warmup_end == 31 and ended.count(True) == 1
    assert len(run.warmup_errors) == WARMUP_WINDOW
    assert math.isclose(sum(run.warmup_errors) / WARMUP_WINDOW, (14 * 0.9 + 6 * 0.5) / 20)
    assert "warm-up ended after step 31" in lines[0] and "< 80%" in lines[0]
    low, _ = _judge_run(0.8)
    for _ in range(WARMUP_WINDOW - 1):  # all right from the start, but 19 batches are no window yet
        low.step += 1
        assert not judge_warmup(low, *_batch(0))
    low.step += 1
    assert judge_warmup(low, *_batch(0)) and low.warmup_end == WARMUP_WINDOW


def test_the_cap_ends_a_warmup_the_error_never_ends():
    run, lines = _judge_run(0.1, cap=7)
    for _ in range(7):
        run.step += 1
        judge_warmup(run, *_batch(9))
    assert run.warmup_end == 7 and "cap of 7 steps" in lines[0]


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_a_run_records_the_end_and_resumes_mid_warmup_to_identical_weights(tmp_path):
    full = train("resnet20", "digits", out=tmp_path / "full", quiet=True, **RULE)
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    end = full["warmup_end_step"]
    assert end is not None and WARMUP_WINDOW <= end <= 48  # a full window first, then below 97 % error
    assert rows[0]["warmup_end_step"] is None and rows[-1]["warmup_end_step"] == end
    assert rows[0]["lr"] == pytest.approx(0.01)  # the first epoch (12 steps) is all warm-up
    assert rows[-1]["lr"] < 0.1 and rows[-1]["lr"] != 0.01
    cut = train("resnet20", "digits", out=tmp_path / "cut", quiet=True, stop_after=15, **RULE)  # window 15/20
    assert cut["interrupted"]
    resumed = train(resume=tmp_path / "cut", quiet=True)
    assert resumed["warmup_end_step"] == end
    a, b = _weights(tmp_path / "full" / "last.pt"), _weights(tmp_path / "cut" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
