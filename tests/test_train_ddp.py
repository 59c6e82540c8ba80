"""DistributedDataParallel on the CPU (gloo, 2 processes launched by torchrun) against one process.

Equivalence needs the same global batch and the same batch statistics. torch's SyncBatchNorm does not run on the
CPU, and per-rank BatchNorm normalises each half-batch on its own, so the exact comparison uses a BN-free model
registered by the launched script (an MLP); resnet20 is then run under torchrun for the real thing (it trains,
metrics are reduced over ranks, only rank 0 writes). Tolerance: 1e-5 (float32 reduction order across ranks).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import json, sys
from torch import nn
from cnnzoo.models import register_model

@register_model(family="test", paper="test", input_size=(1, 32, 32))
def ddp_test_mlp(*, num_classes=10, in_channels=1):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 32 * 32, 64), nn.ReLU(), nn.Linear(64, num_classes))

from cnnzoo.train.api import train
train(sys.argv[1], "digits", out=sys.argv[2], quiet=True, **json.loads(sys.argv[3]))
"""
# Two steps per epoch of global batch 32, with the standard augmentation: each rank serves its half of every global
# batch, augmented as one process would (the data layer interleaves the shards and draws each global batch's
# augmentation on every rank), so 1 and 2 processes train on the same tensors.
OPTS = dict(
    subset=64,
    val_size=40,
    batch_size=32,
    eval_batch_size=32,
    epochs=3,
    augment="standard",
    device="cpu",
    lr=0.05,
    deterministic=True,
)


def _launch(tmp_path: Path, model: str, out: Path, procs: int, **extra) -> None:
    script = tmp_path / "launch.py"
    script.write_text(SCRIPT)
    runner = (
        [sys.executable]
        if procs == 1
        else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    )
    cmd = [*runner, str(script), model, str(out), json.dumps({**OPTS, **extra})]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_gloo_processes_match_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _launch(tmp_path, "ddp_test_mlp", one, 1)
    _launch(tmp_path, "ddp_test_mlp", two, 2)
    for a, b in zip(_metrics(one), _metrics(two), strict=True):
        assert a["step"] == b["step"]
        for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5"):
            assert b[key] == pytest.approx(a[key], abs=1e-5), key
    r1, r2 = (json.loads((d / "report.json").read_text()) for d in (one, two))
    assert r2["world_size"] == 2 and r2["test"]["n"] == r1["test"]["n"] == 360
    assert r2["test"]["loss"] == pytest.approx(r1["test"]["loss"], abs=1e-5)
    assert r2["test"]["top1"] == pytest.approx(r1["test"]["top1"], abs=1e-9)


@pytest.mark.slow
def test_resnet20_under_torchrun(tmp_path):
    out = tmp_path / "r20"
    _launch(tmp_path, "resnet20", out, 2, epochs=1)
    (line,) = _metrics(out)
    assert line["step"] == 2 and 0 <= line["val_top1"] <= 1  # 64 images, global batch 32
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2 and report["test"]["n"] == 360
    files = "best.pt cnnzoo-run.json config.toml confusion.png curves.png last.pt metrics.jsonl report.json"
    files += " tensorboard" if importlib.util.find_spec("tensorboard") else ""  # the extra, in `dev`
    assert sorted(p.name for p in out.iterdir()) == files.split()  # rank 0 wrote each file once; rank 1 no strays
    if "tensorboard" in files:
        assert len(list((out / "tensorboard").iterdir())) == 1  # one event file: rank 0's
