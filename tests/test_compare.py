"""`cnnzoo compare` on two small models at 3x32x32 on the CPU: every file, the expected columns, sane values."""

from __future__ import annotations

import csv
import json

from PIL import Image

from cnnzoo.analysis.compare import (
    COLUMNS,
    accuracy_limits,
    overview_figure,
    published_top1,
    run_compare,
    runs_accuracy,
)
from cnnzoo.analysis.profile import profile_model
from cnnzoo.cli import main


def test_compare_writes_table_files_and_chart(tmp_path):
    rows = run_compare(
        ["resnet20", "alexnet_paper"],
        input_shape=(3, 32, 32),
        device="cpu",
        batch_size=4,
        repeats=2,
        runs=[],
        vs_torchvision=False,
        out=tmp_path,
    )
    for name in ("compare.csv", "compare.json", "compare.md", "overview.png"):
        assert (tmp_path / name).stat().st_size > 0
    with open(tmp_path / "compare.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == COLUMNS and [r["model"] for r in table] == ["resnet20", "alexnet_paper"]
    ok, bad = rows
    assert ok["params"] == 269_722  # He et al. 2016, section 4.2: 0.27M
    # MACs by hand (option A shortcuts add none): stem 3->16 at 32x32, six 16->16 3x3 convs at 32x32, then per stage one
    # strided conv in and five 3x3 convs at 16x16 (32 ch) and 8x8 (64 ch), and the 64->10 classifier.
    by_hand = (
        16 * 3 * 9 * 32 * 32
        + 6 * 16 * 16 * 9 * 32 * 32
        + 32 * 16 * 9 * 16 * 16
        + 5 * 32 * 32 * 9 * 16 * 16
        + 64 * 32 * 9 * 8 * 8
        + 5 * 64 * 64 * 9 * 8 * 8
        + 64 * 10
    )
    assert ok["macs"] == by_hand == 40_551_040
    assert ok["latency_ms"] > 0 and ok["infer_img_s"] > 0 and ok["train_img_s"] > 0
    assert ok["infer_mem_mb"] >= 0 and ok["train_mem_mb"] >= 0
    # alexnet_paper's classifier needs 227x227: reported in its row, not a crash.
    assert bad["params"] == profile_model("alexnet_paper", num_classes=10)["params"] and bad["latency_ms"] is None
    assert "cannot run" in bad["note"] and "227" in bad["note"]
    assert json.loads((tmp_path / "compare.json").read_text())["rows"][0]["model"] == "resnet20"
    assert (tmp_path / "overview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(tmp_path / "overview.png") as im:
        assert im.size[0] > 500


def test_runs_accuracy_and_published_numbers(tmp_path, monkeypatch):
    from cnnzoo.analysis import compare

    monkeypatch.setattr(compare, "_in_fresh_process", _fake_measure)  # the accuracy columns, not the timings
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps({"model": "resnet20", "data": "digits", "test": {"top1": 0.95}}))
    rows = run_compare(
        ["resnet20"],
        input_shape=(3, 32, 32),
        device="cpu",
        batch_size=2,
        repeats=1,
        runs=[str(run)],
        vs_torchvision=False,
        out=tmp_path / "out",
    )
    assert rows[0]["accuracy"] == 0.95 and rows[0]["accuracy_source"] == "measured on digits"
    # A report.json named directly, and --label naming its data for the table and chart.
    assert runs_accuracy([str(run / "report.json")], "Digits (sklearn)") == [
        {"model": "resnet20", "accuracy": 0.95, "data": "Digits (sklearn)", "run": "run"}
    ]
    assert abs(published_top1("resnet50") - 0.7613) < 1e-6  # torchvision's ResNet50_Weights.IMAGENET1K_V1
    assert published_top1("resnet20") is None


def test_compare_torchvision_side_by_side(tmp_path):
    rows = run_compare(
        ["resnet18"],
        input_shape=(3, 32, 32),
        device="cpu",
        batch_size=2,
        repeats=1,
        runs=[],
        vs_torchvision=True,
        out=tmp_path,
    )
    assert rows[0]["vs_torchvision_latency"] > 0 and rows[0]["vs_torchvision_train"] > 0


def test_compare_bad_input_is_one_line(capsys):
    assert main(["compare", "resnet20", "--input", "3x32"]) == 2
    assert "CxHxW" in capsys.readouterr().err
    assert main(["compare", "resnet5O"]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert main(["compare", "resnet20", "--num-classes", "0"]) == 2
    assert "--num-classes must be >= 1" in capsys.readouterr().err


def test_imagenet_size_inputs_default_to_1000_classes(tmp_path):
    # Above 64x64 the overview shows ImageNet nets beside their published accuracy: the 1000-way classifier counts.
    rows = run_compare(
        ["resnet20"],
        input_shape=(3, 72, 72),
        device="cpu",
        batch_size=2,
        repeats=1,
        runs=[],
        vs_torchvision=False,
        out=tmp_path,
    )
    assert rows[0]["params"] == 269_722 + 64 * 990 + 990 and rows[0]["train_img_s"] > 0
    assert json.loads((tmp_path / "compare.json").read_text())["meta"]["num_classes"] == 1000


def test_out_of_memory_is_retried_at_half_the_batch(tmp_path, monkeypatch):
    # The child process is replaced by one whose device holds at most 2 images: 8 -> 4 -> 2, and the row says so.
    from cnnzoo.analysis import compare

    asked = []

    def fake_child(args):
        name, shape, batch, *_ = args
        asked.append(batch)
        if batch > 2:
            return {"oom": True}
        return {"latency_ms": 1.0, "infer_img_s": 2.0, "train_img_s": 1.0, "infer_mem_mb": 1.0, "train_mem_mb": 2.0}

    monkeypatch.setattr(compare, "_in_fresh_process", fake_child)
    (row,) = run_compare(
        ["resnet20"],
        input_shape=(3, 32, 32),
        device="cpu",
        batch_size=8,
        repeats=1,
        runs=[],
        vs_torchvision=False,
        out=tmp_path,
    )
    assert asked == [8, 4, 2] and row["batch_size"] == 2
    assert row["note"] == "out of memory at batch 8; measured at 2"
    monkeypatch.setattr(compare, "_in_fresh_process", lambda args: {"oom": True})
    (row,) = run_compare(
        ["resnet20"],
        input_shape=(3, 32, 32),
        device="cpu",
        batch_size=2,
        repeats=1,
        runs=[],
        vs_torchvision=False,
        out=tmp_path,
    )
    assert row["note"] == "cannot run: out of memory at batch size 1" and row["train_img_s"] is None


def _fake_measure(args):  # stands in for the spawned measuring process: these tests are about the rows
    return {"latency_ms": 1.0, "infer_img_s": 2.0, "train_img_s": 3.0, "infer_mem_mb": 1.0, "train_mem_mb": 2.0}


def _report(path, model, top1):
    path.mkdir(parents=True)
    (path / "report.json").write_text(json.dumps({"model": model, "data": "/data/cifar10", "test": {"top1": top1}}))
    return str(path)


def test_two_runs_of_one_model_both_shown(tmp_path, monkeypatch, capsys):
    from cnnzoo.analysis import compare

    monkeypatch.setattr(compare, "_in_fresh_process", _fake_measure)
    runs = [
        _report(tmp_path / "a" / "r20", "resnet20", 0.91),
        _report(tmp_path / "b" / "r20", "resnet20", 0.92),
        _report(tmp_path / "long", "resnet32", 0.93),
    ]
    rows = run_compare(
        ["resnet20"],
        input_shape=(3, 32, 32),
        device="cpu",
        batch_size=2,
        repeats=1,
        runs=runs,
        vs_torchvision=False,
        out=tmp_path / "out",
    )
    # Same directory name: labelled by as much of the path as tells them apart; a run of a model not listed is added.
    assert [(r["model"], r["run"], r["accuracy"]) for r in rows] == [
        ("resnet20", "a/r20", 0.91),
        ("resnet20", "b/r20", 0.92),
        ("resnet32", "long", 0.93),
    ]
    assert all(r["accuracy_source"] == "measured on cifar10" and r["train_img_s"] == 3.0 for r in rows)
    assert "adding resnet32" in capsys.readouterr().err
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "| resnet20 | a/r20 |" in md and "| resnet20 | b/r20 |" in md
    header = next(line for line in md.splitlines() if line.startswith("| model"))
    assert "vs torchvision" not in header and "note" not in header  # nothing to show: no column (csv/json keep them)
    # The command: --format json prints the same rows on stdout (progress goes to stderr).
    assert (
        main(
            [
                "compare",
                "resnet20",
                "--input",
                "3x32x32",
                "--device",
                "cpu",
                "--runs",
                *runs[:2],
                "--format",
                "json",
                "--no-torchvision",
                "--repeats",
                "1",
                "--out",
                str(tmp_path / "cli"),
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert [(r["model"], r["run"]) for r in printed] == [("resnet20", "a/r20"), ("resnet20", "b/r20")]


def test_overview_accuracy_axis_and_colours():
    assert accuracy_limits([]) == (0.0, 100.0)
    assert accuracy_limits([91.0, 93.0]) == (88.0, 96.0)  # framed by the data, not from zero
    assert accuracy_limits([99.5]) == (96.5, 100.0) and accuracy_limits([1.0, 2.0])[0] == 0.0
    base = {
        "input": "3x32x32",
        "params": 270_000,
        "macs": 40_000_000,
        "train_img_s": 100.0,
        "note": "",
        "accuracy_source": "measured on cifar10",
    }
    rows = [
        dict(base, model="resnet20", run="a", accuracy=0.99),
        dict(base, model="resnet20", run="b", accuracy=0.98),
        dict(base, model="resnet56", run=None, accuracy=0.02, params=850_000, macs=125_000_000),
    ]
    fig = overview_figure(rows, "cpu")
    for ax in fig.axes[:2]:
        lo, hi = ax.get_ylim()
        assert lo >= 0.0 and hi <= 100.0 and lo < 2.0 and hi > 99.0
        colours = [tuple(c.get_facecolor()[0][:3]) for c in ax.collections]
        assert colours[0] == colours[1] != colours[2]  # one colour per model, shared by its runs
        texts = [t.get_text() for t in ax.texts]
        assert any("resnet20 (a)" in t for t in texts) and any("resnet20 (b)" in t for t in texts)
