"""`cnnzoo compare` on two small models at 3x32x32 on the CPU: every file, the expected columns, sane values."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from PIL import Image

from cnnzoo.analysis.compare import (
    COLUMNS,
    DEFAULT_32,
    CompareInterrupted,
    accuracy_limits,
    overview_figure,
    published_accuracy,
    published_top1,
    run_compare,
    runs_accuracy,
    timing,
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

    monkeypatch.setattr(compare, "_start_worker", FakeWorker)  # the accuracy columns, not the timings
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
        return FakeWorker(args, ready={"oom": True} if batch > 2 else None)

    monkeypatch.setattr(compare, "_start_worker", fake_child)
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
    monkeypatch.setattr(compare, "_start_worker", lambda args: FakeWorker(args, ready={"oom": True}))
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


class FakeWorker:
    """Stands in for a model's measuring process: these tests are about the rows, not the timings.

    Every round takes 1 ms at batch 1 and gives 2 images/s of inference and 3 of training (or ``speeds``)."""

    def __init__(self, args, ready=None, speeds=(2.0, 3.0)):
        self.args, self.batch = args, args[2]
        self.ready = ready or {"infer_mem_mb": 1.0, "train_mem_mb": 2.0}
        self.speeds = speeds

    def round(self, index):
        return {"latency": 0.001, "infer": self.batch / self.speeds[0], "train": self.batch / self.speeds[1]}

    def close(self):
        pass


def _report(path, model, top1):
    path.mkdir(parents=True)
    (path / "report.json").write_text(json.dumps({"model": model, "data": "/data/cifar10", "test": {"top1": top1}}))
    return str(path)


def test_two_runs_of_one_model_both_shown(tmp_path, monkeypatch, capsys):
    from cnnzoo.analysis import compare

    monkeypatch.setattr(compare, "_start_worker", FakeWorker)
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
        "train_mem_mb": 50.0,
        "note": "",
        "accuracy_source": "measured on cifar10",
    }
    rows = [
        dict(base, model="resnet20", run="a", accuracy=0.99),
        dict(base, model="resnet20", run="b", accuracy=0.98),
        dict(base, model="resnet56", run=None, accuracy=0.02, params=850_000, macs=125_000_000),
    ]
    fig = overview_figure(rows, "cpu")
    assert len(fig.axes) == 3  # computation, memory, speed
    for ax in fig.axes:
        lo, hi = ax.get_ylim()
        assert lo >= 0.0 and hi <= 100.0 and lo < 2.0 and hi > 99.0
        colours = [tuple(c.get_facecolor()[0][:3]) for c in ax.collections]
        assert colours[0] == colours[1] != colours[2]  # one colour per model, shared by its runs
        texts = [t.get_text() for t in ax.texts]
        assert any("resnet20 (a)" in t for t in texts) and any("resnet20 (b)" in t for t in texts)


# --- timings you can trust ---------------------------------------------------------------------------------------


def test_spread_is_the_interquartile_range_over_the_median():
    assert timing.spread([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx((4.0 - 2.0) / 3.0)
    assert timing.spread([2.0, 2.0, 2.0]) == 0.0
    assert timing.spread([5.0]) is None and timing.spread([]) is None  # one repetition: no spread to speak of
    samples = [{"latency": t, "infer": t * 4, "train": t * 12} for t in (0.010, 0.011, 0.012, 0.013, 0.030)]
    fig = timing.figures(samples, batch=4)
    assert fig["latency_ms"] == pytest.approx(12.0)  # the median ignores the one slow round
    assert fig["latency_ms_spread"] == pytest.approx((13.0 - 11.0) / 12.0)
    assert fig["infer_img_s"] == pytest.approx(4 / 0.048) and fig["train_img_s"] == pytest.approx(4 / 0.144)
    assert fig["train_img_s_spread"] == pytest.approx(
        timing.spread([4 / (t * 12) for t in (0.010, 0.011, 0.012, 0.013, 0.030)])
    )
    tv = [dict(s, tv_latency=s["latency"] * 2, tv_train=s["train"]) for s in samples]
    versus = timing.figures(tv, batch=4)
    assert versus["vs_torchvision_latency"] == pytest.approx(2.0) and versus["vs_torchvision_train"] == pytest.approx(
        1.0
    )


def _timed(model, macs, train, spread=0.02, infer=100.0):
    return {
        "model": model,
        "input": "3x32x32",
        "macs": macs,
        "latency_ms": 1.0,
        "latency_ms_spread": 0.01,
        "infer_img_s": infer,
        "infer_img_s_spread": 0.02,
        "train_img_s": train,
        "train_img_s_spread": spread,
    }


def test_flags_too_wide_spreads_and_twins_that_disagree():
    rows = [_timed("resnet20", 40, 449.0), _timed("plain20", 40, 460.0), _timed("vgg16_cifar", 300, 60.0, spread=0.4)]
    timing.timing_flags(rows)
    assert rows[0]["timing_flag"] == rows[1]["timing_flag"] == ""  # equal MACs, speeds within spreads + slack
    assert rows[2]["timing_flag"] == "training img/s spread 40% > 15%"
    # The run: plain20 494 vs resnet20 13.3 images/s of inference at the same MACs.
    rows = [_timed("resnet20", 40, 4.2, infer=13.3), _timed("plain20", 40, 73.4, infer=494.0)]
    timing.timing_flags(rows)
    for row, twin in zip(rows, ("plain20", "resnet20"), strict=True):
        assert f"inference img/s differs from its equal-MACs twin {twin}" in row["timing_flag"]
        assert f"training img/s differs from its equal-MACs twin {twin}" in row["timing_flag"]
    # Apart by 20%: within the slack for what MACs do not count; apart by 20% but with 30% spreads: not flagged either.
    assert not timing.twins_differ(_timed("a", 1, 100.0), _timed("b", 1, 120.0), "train_img_s")
    assert timing.twins_differ(_timed("a", 1, 100.0), _timed("b", 1, 140.0), "train_img_s")
    assert not timing.twins_differ(_timed("a", 1, 100.0, 0.3), _timed("b", 1, 140.0, 0.3), "train_img_s")


def test_busy_machine_warning_and_estimate():
    assert timing.busy_warning(2, load=1.5) is None
    assert "load average 3.5 above the 2 cores" in timing.busy_warning(2, load=3.5)
    kw = {"batch": 8, "rounds": 10, "macs_per_s": 60e9, "device": "cpu"}
    one = timing.estimate_seconds([4_000_000_000], **kw)
    assert one > timing.START_S["cpu"] and timing.estimate_seconds([4_000_000_000] * 2, **kw) == pytest.approx(2 * one)
    assert timing.estimate_seconds([4_000_000_000], torchvision=[True], **kw) > one
    assert timing.duration(75) == "1 min 15 s" and timing.duration(4000) == "1 h 6 min"


def test_rows_carry_spreads_flags_and_the_estimate(tmp_path, monkeypatch, capsys):
    from cnnzoo.analysis import compare

    speeds = {"resnet20": (13.3, 4.2), "plain20": (494.0, 73.4)}
    monkeypatch.setattr(compare, "_start_worker", lambda args: FakeWorker(args, speeds=speeds[args[0]]))
    rows = run_compare(
        ["resnet20", "plain20"],
        input_shape=(3, 32, 32),
        device="cpu",
        batch_size=2,
        repeats=3,
        runs=[],
        vs_torchvision=False,
        out=tmp_path,
    )
    err = capsys.readouterr().err
    assert err.startswith("estimate: about ") and "round 3/3" in err and "[2/2] plain20" in err
    assert all(r["train_img_s_spread"] == 0.0 and "equal-MACs twin" in r["timing_flag"] for r in rows)
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["meta"]["complete"] and saved["meta"]["rounds"] == 3
    assert "train_img_s_spread" in saved["rows"][0] and "timing_flag" in (tmp_path / "compare.csv").read_text()
    md = (tmp_path / "compare.md").read_text()
    assert "73.4±0%" in md and "speed vs torchvision" not in md  # no such column: the intro does not mention it


def test_ctrl_c_keeps_what_was_measured(tmp_path, monkeypatch):
    from cnnzoo.analysis import compare

    seen = []

    class Interrupted(FakeWorker):
        def __init__(self, args, **kw):
            super().__init__(args, **kw)
            if args[0] == "resnet56":  # the first model's row is on disk as soon as it is set up
                seen.append(json.loads((tmp_path / "compare.json").read_text())["rows"][0])

        def round(self, index):
            if index == 2 and self.args[0] == "resnet56":
                raise KeyboardInterrupt
            return super().round(index)

    monkeypatch.setattr(compare, "_start_worker", Interrupted)
    with pytest.raises(CompareInterrupted) as stopped:
        run_compare(
            ["resnet20", "resnet56"],
            input_shape=(3, 32, 32),
            device="cpu",
            batch_size=2,
            repeats=5,
            runs=[],
            vs_torchvision=False,
            out=tmp_path,
        )
    assert stopped.value.exit_code == 130 and "after 2 of 5 rounds" in str(stopped.value)
    assert seen[0]["model"] == "resnet20" and seen[0]["train_mem_mb"] == 2.0 and seen[0]["train_img_s"] is None
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["meta"]["rounds"] == 2 and not saved["meta"]["complete"]
    r20, r56 = saved["rows"]
    assert r20["train_img_s"] == pytest.approx(3.0) and "interrupted: 3 of 5 rounds" in r20["note"]
    assert r56["train_img_s"] == pytest.approx(3.0) and "interrupted: 2 of 5 rounds" in r56["note"]
    assert (tmp_path / "overview.png").stat().st_size > 0
    assert not list(tmp_path.glob(".*.tmp"))  # every write atomic, none left half-done
    # The command exits 130 with one line.
    assert main(["compare", "resnet20", "resnet56", "--input", "3x32x32", "--out", str(tmp_path / "cli")]) == 130


def test_every_default_32_net_has_a_published_accuracy_and_runs_override_it(tmp_path, monkeypatch):
    from cnnzoo.analysis import compare

    for name in DEFAULT_32:
        acc, source = published_accuracy(name, (3, 32, 32))
        assert 0.5 < acc < 1 and source.startswith("published CIFAR-10: ")
    assert published_accuracy("resnet20", (3, 32, 32))[0] == pytest.approx(0.9173)  # akamaster: 8.27% error
    assert published_accuracy("resnet50", (3, 224, 224))[1] == "published ImageNet top-1 (torchvision weights)"
    assert published_accuracy("resnet20", (3, 224, 224)) is None
    monkeypatch.setattr(compare, "_start_worker", FakeWorker)
    run = _report(tmp_path / "mine", "resnet56", 0.9)
    rows = run_compare(
        ["resnet20", "resnet56"],
        input_shape=(3, 32, 32),
        device="cpu",
        batch_size=2,
        repeats=1,
        runs=[run],
        vs_torchvision=False,
        out=tmp_path / "out",
    )
    assert rows[0]["accuracy"] == pytest.approx(0.9173) and "akamaster" in rows[0]["accuracy_source"]
    assert rows[1]["accuracy"] == 0.9 and rows[1]["accuracy_source"] == "measured on cifar10"


def test_a_measuring_process_that_dies_ends_its_row_only(tmp_path, monkeypatch):
    from cnnzoo.analysis import compare

    class Dies(FakeWorker):
        def round(self, index):
            if self.args[0] == "resnet56" and index == 1:
                return {"error": "the measuring process ended (exit status -9)"}
            return super().round(index)

    monkeypatch.setattr(compare, "_start_worker", Dies)
    r20, r56 = run_compare(
        ["resnet20", "resnet56"],
        input_shape=(3, 32, 32),
        device="cpu",
        batch_size=2,
        repeats=3,
        runs=[],
        vs_torchvision=False,
        out=tmp_path,
    )
    assert r20["note"] == "" and r20["train_img_s_spread"] == 0.0
    assert r56["train_img_s"] == pytest.approx(3.0) and r56["train_img_s_spread"] is None  # one round: no spread
    assert r56["note"] == "measuring stopped after 1 rounds: the measuring process ended (exit status -9)"


def test_a_short_call_is_repeated_within_one_timing(monkeypatch):
    """A call of 3 ms is timed over at least ``MIN_TIMED`` seconds of calls (the mean per call); a long call once."""
    from cnnzoo.analysis.compare import worker

    clock = {"now": 0.0}
    monkeypatch.setattr(worker.time, "perf_counter", lambda: clock["now"])

    def call(seconds):
        def fn():
            clock["now"] += seconds
            fn.calls += 1

        fn.calls = 0
        return fn

    short, long = call(0.003), call(0.2)
    assert worker.timed(short, torch.device("cpu")) == pytest.approx(0.003)
    assert short.calls == math.ceil(worker.MIN_TIMED / 0.003)
    assert worker.timed(long, torch.device("cpu")) == pytest.approx(0.2) and long.calls == 1
