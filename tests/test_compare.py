"""`cnnzoo compare` on two small models at 3x32x32 on the CPU: every file, the expected columns, sane values."""

from __future__ import annotations

import csv
import json

from PIL import Image

from cnnzoo.analysis.compare import COLUMNS, published_top1, run_compare, runs_accuracy
from cnnzoo.analysis.profile import profile_model
from cnnzoo.cli import main


def test_compare_writes_table_files_and_chart(tmp_path):
    rows = run_compare(["resnet20", "alexnet_paper"], input_shape=(3, 32, 32), device="cpu", batch_size=4, repeats=2,
                       runs=[], vs_torchvision=False, out=tmp_path)  # fmt: skip
    for name in ("compare.csv", "compare.json", "compare.md", "overview.png"):
        assert (tmp_path / name).stat().st_size > 0
    with open(tmp_path / "compare.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == COLUMNS and [r["model"] for r in table] == ["resnet20", "alexnet_paper"]
    ok, bad = rows
    assert ok["params"] == 269_722  # He et al. 2016, section 4.2: 0.27M
    # MACs by hand (option A shortcuts add none): stem 3->16 at 32x32, six 16->16 3x3 convs at 32x32, then per stage one
    # strided conv in and five 3x3 convs at 16x16 (32 ch) and 8x8 (64 ch), and the 64->10 classifier.
    by_hand = (16 * 3 * 9 * 32 * 32 + 6 * 16 * 16 * 9 * 32 * 32 + 32 * 16 * 9 * 16 * 16 + 5 * 32 * 32 * 9 * 16 * 16
               + 64 * 32 * 9 * 8 * 8 + 5 * 64 * 64 * 9 * 8 * 8 + 64 * 10)  # fmt: skip
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


def test_runs_accuracy_and_published_numbers(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps({"model": "resnet20", "data": "digits", "test": {"top1": 0.95}}))
    rows = run_compare(["resnet20"], input_shape=(3, 32, 32), device="cpu", batch_size=2, repeats=1, runs=[str(run)],
                       vs_torchvision=False, out=tmp_path / "out")  # fmt: skip
    assert rows[0]["accuracy"] == 0.95 and rows[0]["accuracy_source"] == "measured on digits"
    # A report.json named directly, and --label naming its data for the table and chart.
    assert runs_accuracy([str(run / "report.json")], "Digits (sklearn)") == {"resnet20": (0.95, "Digits (sklearn)")}
    assert abs(published_top1("resnet50") - 0.7613) < 1e-6  # torchvision's ResNet50_Weights.IMAGENET1K_V1
    assert published_top1("resnet20") is None


def test_compare_torchvision_side_by_side(tmp_path):
    rows = run_compare(["resnet18"], input_shape=(3, 32, 32), device="cpu", batch_size=2, repeats=1, runs=[],
                       vs_torchvision=True, out=tmp_path)  # fmt: skip
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
    rows = run_compare(["resnet20"], input_shape=(3, 72, 72), device="cpu", batch_size=2, repeats=1, runs=[],
                       vs_torchvision=False, out=tmp_path)  # fmt: skip
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
    (row,) = run_compare(["resnet20"], input_shape=(3, 32, 32), device="cpu", batch_size=8, repeats=1, runs=[],
                         vs_torchvision=False, out=tmp_path)  # fmt: skip
    assert asked == [8, 4, 2] and row["batch_size"] == 2
    assert row["note"] == "out of memory at batch 8; measured at 2"
    monkeypatch.setattr(compare, "_in_fresh_process", lambda args: {"oom": True})
    (row,) = run_compare(["resnet20"], input_shape=(3, 32, 32), device="cpu", batch_size=2, repeats=1, runs=[],
                         vs_torchvision=False, out=tmp_path)  # fmt: skip
    assert row["note"] == "cannot run: out of memory at batch size 1" and row["train_img_s"] is None
