"""The residual study on `digits` with 20-layer nets and a few steps: numbers, files, reuse of finished runs."""

from __future__ import annotations

import csv
import math

import torch

from cnnzoo import create_model
from cnnzoo.analysis.study import decay_ratio, gradient_norms, run_degradation, run_depth, run_gradients
from cnnzoo.cli import main
from cnnzoo.data import load_data

TINY = {"epochs": 1, "subset": 128, "batch_size": 64, "device": "cpu", "val_size": 64}


def test_plain_gradients_change_with_depth_faster_than_residual():
    """At initialisation, on one real batch: the per-layer gradient norm of plain20 drifts across its depth by more
    than resnet20's (measured ratios first/last conv: plain20 15-22, resnet20 5-8 over seeds 0-2)."""
    bundle = load_data("digits", batch_size=128, device="cpu")
    x, y = next(iter(bundle.train.epoch(0)))
    drift = {}
    for name in ("plain20", "resnet20"):
        torch.manual_seed(0)
        rows = gradient_norms(create_model(name, num_classes=10, in_channels=1), x, y)
        drift[name] = abs(math.log(decay_ratio(rows)))
        if name == "resnet20":  # the shortcut carries a real share of the gradient into every block
            shortcut = [r["norm"] for r in rows if r["kind"] == "shortcut"]
            assert len(shortcut) == 9 and min(shortcut) > 0
        else:  # plain blocks: everything flows through the branch
            assert all(r["norm"] < 1e-6 * max(1.0, r["norm"]) + 1e-12 for r in rows if r["kind"] == "shortcut")
    assert drift["plain20"] > drift["resnet20"]


def test_gradients_command_writes_csv_and_png(tmp_path):
    rows = run_gradients(["plain20", "resnet20"], steps=2, batch_size=32, out=tmp_path)
    assert {r["phase"] for r in rows} == {"init", "after 2 steps"}
    with open(tmp_path / "gradients.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and all(float(r["norm"]) >= 0 for r in table)
    assert (tmp_path / "gradients.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_degradation_and_depth_write_their_files_and_reuse_runs(tmp_path):
    # jobs=2: the two runs train in two spawned processes (the GPU path), then are read back as finished runs.
    rows = run_degradation([20], data="digits", recipe="demo", seeds=[0], out=tmp_path, overrides=TINY, jobs=2)
    assert [r["model"] for r in rows] == ["plain20", "resnet20"]
    assert rows[1]["paper_test_error"] == 8.75 and rows[0]["paper_test_error"] is None
    assert all(0 <= r["test_error"] <= 100 for r in rows)
    for name in ("degradation.csv", "degradation.md", "degradation.png"):
        assert (tmp_path / name).stat().st_size > 0
    report = tmp_path / "resnet20" / "seed-0" / "report.json"
    stamp = report.stat().st_mtime_ns
    # The depth study over the same folder finds resnet20 finished and trains nothing.
    depth = run_depth([20], family="resnet_cifar", data="digits", recipe="demo", seeds=[0], out=tmp_path,
                      overrides=TINY)  # fmt: skip
    assert report.stat().st_mtime_ns == stamp
    assert depth[0]["params"] == 269_722 and depth[0]["test_top1"] == 100 - rows[1]["test_error"]
    assert (tmp_path / "depth.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_depths_are_a_clear_error(capsys):
    assert main(["study", "degradation", "--depths", "20,21"]) == 2
    assert "depths must be among" in capsys.readouterr().err
