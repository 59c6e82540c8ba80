"""The learner's workflow: the estimate before a run, progress lines in a log, several runs on one chart, starting
weights of another channel count, the README's examples."""

from __future__ import annotations

import json

import torch

from cnnzoo.cli import main
from cnnzoo.train.api import train
from conftest import TINY  # 3 steps of 32 digits images per epoch, 48 validation images

# --- the estimate and progress lines -------------------------------------------------------------------------------


def test_train_prints_an_estimate_before_the_first_step(tmp_path, capsys):
    assert main(["train", "resnet20", "--data", "digits", "--epochs", "2", "--out", str(tmp_path / "r"), *_tiny()]) == 0
    lines = capsys.readouterr().out.splitlines()
    estimates = [i for i, line in enumerate(lines) if line.startswith("estimate:")]
    first_epoch = next(i for i, line in enumerate(lines) if line.startswith("epoch "))
    assert len(estimates) == 1 and estimates[0] < first_epoch
    line = lines[estimates[0]]
    # 2 epochs of 3 steps; 2 validation passes of 1 batch (48 images at 64) + the test's 6 batches (360 at 64).
    assert "for 2 epochs on cpu" in line and "6 steps x" in line and "8 evaluation batches" in line, line


def test_the_estimate_leaves_the_run_as_it_was(tmp_path, monkeypatch):
    """Probing runs real steps; the run must train exactly as without the probe (weights, momentum, RNG)."""
    import importlib

    run_module = importlib.import_module("cnnzoo.train.run")  # cnnzoo.train is also the function

    opts = dict(TINY, epochs=1, dropout=0.2, deterministic=True)  # 3 steps: momentum and dropout draws carry over
    with_probe = train("alexnet_cifar", "digits", out=tmp_path / "a", quiet=True, **opts)
    monkeypatch.setattr(run_module, "announce_estimate", lambda run, stop_after=None: None)
    torch.manual_seed(0)
    without = train("alexnet_cifar", "digits", out=tmp_path / "b", quiet=True, **opts)
    assert with_probe["test"] == without["test"]
    a, b = (
        [json.loads(line)["train_loss"] for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
        for d in "ab"
    )
    assert a == b


def test_long_cpu_runs_get_a_suggestion(tmp_path):
    from cnnzoo.train import estimate
    from cnnzoo.train.config import build_config
    from cnnzoo.train.engine import backend_settings
    from cnnzoo.train.run import build_run, init_distributed

    cfg = build_config("resnet56", "digits", epochs=30, **TINY)
    dist, device = init_distributed(cfg)
    with backend_settings(cfg, device):
        run = build_run(cfg, dist, device, tmp_path / "r", log=lambda *a: None)
    est = estimate.Estimate(
        step_seconds=20.0, eval_batch_seconds=1.0, steps=90, eval_batches=36, epochs=30, device="cpu"
    )
    line = estimate.estimate_line(run, est)
    assert line.startswith("estimate: about 31 min for 30 epochs on cpu")
    assert "--epochs 3 (about" in line and "a smaller net (resnet20)" in line and "\n" not in line
    assert "long for a CPU" not in estimate.estimate_line(run, estimate.Estimate(0.01, 0.01, 90, 36, 30, "cpu"))


def test_a_log_gets_progress_lines_with_an_eta(tmp_path, capsys, monkeypatch):
    """stdout is no terminal under pytest: the loop prints a progress line inside the epoch instead of a bar."""
    from cnnzoo.train import loop

    monkeypatch.setattr(loop, "PROGRESS_SECONDS", 0.0)
    assert main(["train", "resnet20", "--data", "digits", "--epochs", "1", "--out", str(tmp_path / "r"), *_tiny()]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch 1/1  batch")]
    assert [line.split()[3] for line in lines] == ["1/3", "2/3"]  # not after the last batch: the epoch line follows
    assert all("eta epoch 0:0" in line and "img/s" in line and "loss " in line for line in lines), lines


def _tiny() -> list[str]:
    return ["--subset", "96", "--val-size", "48", "--batch-size", "32", "--eval-batch-size", "64", "--device", "cpu"]
