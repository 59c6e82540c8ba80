"""The residual study on `digits` with 20-layer nets and a few steps: numbers, files, reuse of finished runs."""

from __future__ import annotations

import csv

import torch

from cnnzoo import create_model
from cnnzoo.analysis.study import (
    decay_ratio,
    gradient_norms,
    plot_gradients,
    run_degradation,
    run_depth,
    run_gradients,
    suggest_depth,
)
from cnnzoo.cli import main
from cnnzoo.data import load_data

TINY = {"epochs": 1, "subset": 128, "batch_size": 64, "device": "cpu", "val_size": 64}


def test_plain_gradients_fall_with_depth_faster_than_residual():
    """At initialisation, on one real batch: going deeper (from the input towards the output) plain20's gradient
    norms fall by a larger factor than resnet20's. Measured first/last ratios over seeds 0-3: conv weight gradients
    plain20 15-22, resnet20 4.6-7.8; block-input gradients plain20 25-40, resnet20 12-18."""
    bundle = load_data("digits", batch_size=128, device="cpu")
    x, y = next(iter(bundle.train.epoch(0)))
    fall = {}
    for name in ("plain20", "resnet20"):
        torch.manual_seed(0)
        rows = gradient_norms(create_model(name, num_classes=10, in_channels=1), x, y)
        fall[name] = (decay_ratio(rows, "conv"), decay_ratio(rows, "block_input"))
        assert len([r for r in rows if r["kind"] == "conv"]) == 19  # 6n + 1 convs and one FC, n = 3
        if name == "resnet20":  # the shortcut carries a real share of the gradient into every block
            shortcut = [r["norm"] for r in rows if r["kind"] == "shortcut"]
            assert len(shortcut) == 9 and min(shortcut) > 0
        else:  # plain blocks: everything flows through the branch
            assert all(r["norm"] < 1e-6 * max(1.0, r["norm"]) + 1e-12 for r in rows if r["kind"] == "shortcut")
    assert fall["resnet20"][0] > 1 and fall["resnet20"][1] > 1  # both fall with depth...
    assert fall["plain20"][0] > 2 * fall["resnet20"][0]  # ...plain20's much faster
    assert fall["plain20"][1] > 1.5 * fall["resnet20"][1]


def test_gradients_command_writes_csv_and_png(tmp_path):
    rows = run_gradients(["plain20", "resnet20"], steps=2, batch_size=32, out=tmp_path)
    assert {r["phase"] for r in rows} == {"init", "after 2 steps"}
    with open(tmp_path / "gradients.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and all(float(r["norm"]) >= 0 for r in table)
    assert (tmp_path / "gradients.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_gradients(table, tmp_path / "again.png", "digits")  # the figure can be redrawn from the CSV alone
    assert (tmp_path / "again.png").stat().st_size > 10_000


def test_degradation_and_depth_write_their_files_and_reuse_runs(tmp_path):
    # jobs=2: the two runs train in two spawned processes (the GPU path), then are read back as finished runs.
    rows = run_degradation([20], data="digits", recipe="demo", seeds=[0], out=tmp_path, overrides=TINY, jobs=2,
                           label="sklearn digits")  # fmt: skip
    assert [r["model"] for r in rows] == ["plain20", "resnet20"]
    assert rows[1]["paper_test_error"] == 8.75 and rows[0]["paper_test_error"] is None
    assert all(0 <= r["test_error"] <= 100 for r in rows)
    assert (tmp_path / "degradation.png").read_bytes()[:4] == b"\x89PNG"
    with open(tmp_path / "degradation_curves.csv") as f:
        curves = list(csv.DictReader(f))
    assert [c["model"] for c in curves] == ["plain20", "resnet20"]  # one epoch each
    assert all(0 <= float(c["train_error"]) <= 100 and 0 <= float(c["val_error"]) <= 100 for c in curves)
    with open(tmp_path / "degradation.csv") as f:
        assert [r["model"] for r in csv.DictReader(f)] == ["plain20", "resnet20"]
    table = (tmp_path / "degradation.md").read_text()
    assert "on sklearn digits" in table and "| resnet20 |" in table and "| 8.75 |" in table and "shortened" in table
    report = tmp_path / "resnet20" / "seed-0" / "report.json"
    stamp = report.stat().st_mtime_ns
    # The depth study over the same folder finds resnet20 finished and trains nothing.
    depth = run_depth([20], family="resnet_cifar", data="digits", recipe="demo", seeds=[0], out=tmp_path,
                      overrides=TINY)  # fmt: skip
    assert report.stat().st_mtime_ns == stamp
    assert depth[0]["params"] == 269_722 and depth[0]["test_top1"] == 100 - rows[1]["test_error"]
    assert (tmp_path / "depth.png").read_bytes()[:4] == b"\x89PNG"
    # An unfinished run (checkpoint, no report) is resumed, not retrained: same epochs, same test error.
    plain = tmp_path / "plain20" / "seed-0"
    history = (plain / "metrics.jsonl").read_text()  # with its wall-clock seconds: a retrained run would differ
    (plain / "report.json").unlink()
    again = run_degradation([20], data="digits", recipe="demo", seeds=[0], out=tmp_path, overrides=TINY)
    assert (plain / "report.json").exists() and report.stat().st_mtime_ns == stamp
    assert (plain / "metrics.jsonl").read_text() == history and '"seconds"' in history
    assert again[0]["test_error"] == rows[0]["test_error"]


def test_suggested_depth_is_the_shallowest_within_tolerance_of_the_best():
    rows = [{"model": f"resnet{d}", "depth": d, "test_top1": acc, "test_top1_std": std}
            for d, acc, std in ((20, 91.0, 0.1), (32, 92.3, 0.1), (44, 92.6, 0.1), (56, 92.7, 0.2))]  # fmt: skip
    assert suggest_depth(rows, 0.5)["model"] == "resnet32"  # 92.3 >= 92.7 - 0.5; 91.0 is not
    assert suggest_depth(rows, 2.0)["model"] == "resnet20"
    rows[-1]["test_top1_std"] = 1.8  # a noisy best widens the margin to its spread
    assert suggest_depth(rows, 0.5)["model"] == "resnet20"


def test_bad_arguments_are_a_clear_error(capsys):
    assert main(["study", "degradation", "--depths", "20,21"]) == 2
    assert "depths must be among" in capsys.readouterr().err
    assert main(["study", "depth", "--seeds", ","]) == 2
    assert "--seeds must be comma-separated integers" in capsys.readouterr().err
    assert main(["study", "gradients", "plain20", "--steps", "-1"]) == 2
    assert "--steps must be >= 0" in capsys.readouterr().err
