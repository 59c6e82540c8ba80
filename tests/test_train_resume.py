"""Nothing lost: exact resume, Ctrl-C/SIGTERM, non-finite loss, and checkpoints that cannot run code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnnzoo.errors import CnnzooError
from cnnzoo.train import checkpoint
from cnnzoo.train.api import train
from cnnzoo.train.stopping import NonFiniteLoss
from conftest import EXACT, TINY

TIMING = ("seconds", "images_per_s", "train_seconds", "eval_seconds", "save_seconds")  # wall-clock: differ per run


def _metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.parametrize("stop_after", [4, 6])  # mid-epoch (epoch 2, batch 1) and on an epoch boundary
def test_interrupted_and_resumed_equals_uninterrupted(exact_run, tmp_path, stop_after):
    """--deterministic on the CPU: stop, resume, and every metric and weight is bit-identical."""
    full_dir, full = exact_run
    stopped = train("resnet20", "digits", out=tmp_path / "cut", stop_after=stop_after, quiet=True, **EXACT)
    assert stopped["interrupted"] and stopped["step"] == stop_after
    assert not (tmp_path / "cut" / "report.json").exists()
    resumed = train(resume=tmp_path / "cut", quiet=True)
    assert not torch.are_deterministic_algorithms_enabled()  # the process-wide flag is restored after a run
    assert _metrics(tmp_path / "cut") == _metrics(full_dir)
    last_full, last_cut = _weights(full_dir / "last.pt"), _weights(tmp_path / "cut" / "last.pt")
    assert all(torch.equal(last_full[k], last_cut[k]) for k in last_full)
    ema_full = torch.load(full_dir / "last.pt", weights_only=True)["ema"]
    ema_cut = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["ema"]
    assert all(torch.equal(ema_full[k], ema_cut[k]) for k in ema_full)
    assert resumed["test"] == full["test"]


def test_sigint_finishes_the_step_saves_and_exits_130(tmp_path):
    """A real Ctrl-C to a `cnnzoo train` process: last.pt written, a line saying how to resume, and exit status 130
    (128 + SIGINT, the shell's convention), so `cnnzoo train ... && cnnzoo export ...` does not export it."""
    out = tmp_path / "run"
    script = (
        "import sys; from cnnzoo.train.cli import register; import argparse; p = argparse.ArgumentParser(); "
        "register(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"
    )
    args = [
        "train",
        "resnet20",
        "--data",
        "digits",
        "--out",
        str(out),
        "--epochs",
        "1000",
        "--subset",
        "96",
        "--val-size",
        "48",
        "--batch-size",
        "32",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.time() + 120
        while not (out / "metrics.jsonl").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert (out / "metrics.jsonl").exists(), "no epoch finished"
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    assert "SIGINT received" in output and f"resume with: cnnzoo train --resume {out}" in output
    ckpt = checkpoint.load(out / "last.pt", model="resnet20")
    assert ckpt["position"]["step"] >= 3 and not (out / "report.json").exists()


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    # Epoch 1 trains at lr 0.05 (its warm-up, at a constant --warmup-lr); then the lr jumps to 5e10 and the loss
    # blows up in epoch 2.
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at epoch 2, step \d+") as info:
        train(
            "resnet20",
            "digits",
            out=out,
            epochs=3,
            lr=5e10,
            warmup_lr=0.05,
            warmup_epochs=1,
            schedule="constant",
            quiet=True,
            **TINY,
        )
    assert info.value.exit_code != 0
    ckpt = checkpoint.load(out / "last.pt")
    assert ckpt["position"] == {"epoch": 1, "batch": 0, "step": 3}
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "model": _Payload()}, path)
    with pytest.raises(CnnzooError, match="refused: it asks to load"):
        checkpoint.load(path)
    (tmp_path / "torn.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(CnnzooError, match="torn.pt"):
        checkpoint.load(tmp_path / "torn.pt")


def test_checkpoint_for_another_model_or_class_count_is_refused(tiny_run):
    out, _ = tiny_run
    with pytest.raises(CnnzooError, match="model 'resnet20', not 'resnet32'"):
        checkpoint.load(out / "last.pt", model="resnet32")
    with pytest.raises(CnnzooError, match="num_classes 10, not 100"):
        checkpoint.load(out / "best.pt", num_classes=100)
    with pytest.raises(CnnzooError, match="is a run of resnet20"):
        train("resnet32", resume=out, quiet=True)


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"format": checkpoint.FORMAT, "x": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        checkpoint.save_atomic({"x": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_resume_extends_training_but_refuses_other_changes(tiny_run, copy_run):
    out = copy_run(tiny_run[0])  # 2 epochs done
    with pytest.raises(CnnzooError, match="cannot change lr when resuming"):
        train(resume=out, lr=0.5, quiet=True)
    report = train(resume=out, epochs=3, quiet=True)
    assert report["epochs"] == 3 and [r["epoch"] for r in _metrics(out)] == [1, 2, 3]
