"""The residual study on `digits` with 20-layer nets and a few steps: numbers, files, reuse only of identical runs,
interrupt and resume (also across pack/unpack), the estimate, and a depth chosen on validation."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import threading
import time

import pytest
import torch

from cnnzoo import create_model
from cnnzoo.analysis.study import (
    StudyInterrupted,
    decay_ratio,
    gradient_norms,
    pack,
    plot_gradients,
    run_degradation,
    run_depth,
    run_gradients,
    suggest_depth,
    unpack,
)
from cnnzoo.cli import main
from cnnzoo.data import load_data
from cnnzoo.errors import CnnzooError

# 2 epochs of 2 steps: the smallest run that can be interrupted mid-epoch and resumed. One thread: on a small shared
# machine two threads per tiny step cost several times one (and `threads` is not part of a run's identity).
TINY = {"epochs": 2, "subset": 64, "batch_size": 32, "device": "cpu", "val_size": 32, "threads": 1}
STUDY = {"data": "digits", "recipe": "demo", "seeds": [0], "overrides": TINY}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished degradation study (plain20, resnet20), trained by two spawned processes (the --jobs path)."""
    out = tmp_path_factory.mktemp("degradation")
    lines: list[str] = []
    rows = run_degradation([20], out=out, jobs=2, label="sklearn digits", log=lines.append, **STUDY)
    return out, rows, lines


def _read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


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
    lines: list[str] = []
    rows = run_gradients(
        ["plain20", "resnet20"],
        steps=2,
        batches=2,
        seeds=[0, 1],
        batch_size=32,
        device="cpu",
        out=tmp_path,
        log=lines.append,
    )
    assert {r["phase"] for r in rows} == {"init", "after 2 steps"}
    # Said before anything is measured: the estimate, from a timed forward and backward pass of each model.
    assert lines[1].startswith("estimate: ") and "plain20" in lines[1] and "resnet20" in lines[1]
    assert lines[2].startswith("[1/4] ")  # then the progress lines
    conv = [r for r in rows if r["kind"] == "conv"]
    assert conv and all(r["samples"] == 4 for r in rows)  # 2 batches x 2 seeds, averaged
    assert all(r["scale_free"] == pytest.approx(r["norm"] * r["weight_norm"], rel=0.5) for r in conv)
    assert all(r["scale_free_std"] > 0 for r in conv)  # the seeds and batches differ: a real spread
    assert {r["residual"] for r in rows if r["model"] == "plain20"} == {0}
    assert {r["residual"] for r in rows if r["model"] == "resnet20"} == {1}
    init = {(r["model"], r["layer"]): r["weight_norm"] for r in conv if r["phase"] == "init"}
    after = {(r["model"], r["layer"]): r["weight_norm"] for r in conv if r["phase"] != "init"}
    assert init.keys() == after.keys() and init != after  # the two train_step calls changed the weights
    assert lines[0].startswith("study gradients: plain20, resnet20 x seed 0, 1")
    assert [line.split("]")[0] for line in lines[2:]] == ["[1/4", "[2/4", "[3/4", "[4/4"]
    assert all("ETA" in line for line in lines[2:])
    table = _read(tmp_path / "gradients.csv")
    assert len(table) == len(rows) and all(float(r["norm"]) >= 0 for r in table)
    assert all(r["scale_free"] == "" for r in table if r["kind"] != "conv")
    assert (tmp_path / "gradients.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_gradients(table, tmp_path / "again.png", "digits")  # the figure can be redrawn from the CSV alone
    assert (tmp_path / "again.png").stat().st_size > 10_000


def test_degradation_writes_its_files(finished):
    out, rows, lines = finished
    assert [r["model"] for r in rows] == ["plain20", "resnet20"]
    assert rows[1]["paper_test_error"] == 8.75 and rows[0]["paper_test_error"] is None
    assert all(0 <= r["test_error"] <= 100 for r in rows)
    assert (out / "degradation.png").read_bytes()[:4] == b"\x89PNG"
    curves = _read(out / "degradation_curves.csv")
    assert [c["model"] for c in curves] == ["plain20", "plain20", "resnet20", "resnet20"]  # two epochs each
    assert all(0 <= float(c["train_error"]) <= 100 and 0 <= float(c["val_error"]) <= 100 for c in curves)
    assert [r["model"] for r in _read(out / "degradation.csv")] == ["plain20", "resnet20"]
    table = (out / "degradation.md").read_text()
    assert "on sklearn digits" in table and "| resnet20 |" in table and "| 8.75 |" in table and "shortened" in table
    # Every output says how its numbers were made: the subset, the schedule, the length against 64k, the precision.
    assert "- training images: 64 (--subset 64: a subset changes the lesson)" in table
    assert "- device, precision: cpu fp32" in table and "of the paper's 64k (shortened)" in table
    row = _read(out / "degradation.csv")[0]
    assert row["seeds"] == "1" and row["recipe"] == "demo" and "--subset 64" in row["training_images"]
    # ...and that it is too short to show anything, before it starts.
    assert any(line.startswith("caution: ") and "resnet-cifar-short" in line for line in lines[:5])
    # Said before it started: what it runs, and how long it should take from timed steps.
    assert lines[0].startswith("study degradation: 2 runs (resnet20, plain20; seed 0)") and "2 at a time" in lines[0]
    assert "0 finished (reused), 0 to resume, 2 to train" in lines[1]
    assert lines[2].startswith("estimate: ") and "plain20" in lines[2] and " ms" in lines[2]
    assert any("resnet20 seed 0: epoch 2/2" in line for line in lines)  # progress


def test_depth_reuses_identical_runs_and_counts_the_channels_trained_on(finished):
    out, rows, _ = finished
    report = out / "resnet20" / "seed-0" / "report.json"
    stamp = report.stat().st_mtime_ns
    lines: list[str] = []
    depth = run_depth([20], family="resnet_cifar", out=out, log=lines.append, **STUDY)
    assert report.stat().st_mtime_ns == stamp  # reused, not retrained
    assert "1 finished (reused), 0 to resume, 0 to train" in lines[1] and "nothing left to train" in lines[2]
    assert depth[0]["params"] == 269_434  # digits is 1-channel: 269,722 would be the 3-channel count
    assert depth[0]["test_top1"] == pytest.approx(100 - rows[1]["test_error"])
    assert (out / "depth.png").read_bytes()[:4] == b"\x89PNG"


def test_reuse_is_refused_when_the_configuration_differs(finished, tmp_path):
    out, _, _ = finished
    changed = r"resnet20/seed-0 holds a run of another configuration \(epochs: 2 there, 3 asked.*--overwrite"
    with pytest.raises(CnnzooError, match=changed):
        run_depth([20], family="resnet_cifar", out=out, **dict(STUDY, overrides=dict(TINY, epochs=3)))
    with pytest.raises(CnnzooError, match=r"lr: 0.1 there, 0.05 asked"):
        run_depth([20], family="resnet_cifar", out=out, **dict(STUDY, overrides=dict(TINY, lr=0.05)))
    # --overwrite retrains it (on a copy, so the shared study stays as it was).
    shutil.copytree(out / "resnet20", tmp_path / "resnet20")
    changed = dict(STUDY, overrides=dict(TINY, lr=0.05))
    run_depth([20], family="resnet_cifar", out=tmp_path, overwrite=True, log=lambda _: None, **changed)
    assert "lr = 0.05" in (tmp_path / "resnet20" / "seed-0" / "config.toml").read_text()


def test_interrupted_study_packed_unpacked_and_resumed_gives_the_same_csv(finished, tmp_path):
    out, _, _ = finished
    first = tmp_path / "first"
    with pytest.raises(StudyInterrupted, match="0 of 2 runs finished.*run the same command again to resume"):
        run_degradation([20], out=first, stop_after=3, log=lambda _: None, **STUDY)  # resnet20 (first) stops in epoch 2
    assert (first / "resnet20" / "seed-0" / "last.pt").exists()
    assert not (first / "resnet20" / "seed-0" / "report.json").exists()
    # Carried to another machine: packed into parts, unpacked elsewhere, resumed there.
    parts = pack(first, tmp_path / "parts", part_size=256 * 1024)
    assert len(parts) > 1 and all(p.stat().st_size <= 256 * 1024 for p in parts)
    second = tmp_path / "second"
    unpack(tmp_path / "parts", second)
    lines: list[str] = []
    run_degradation([20], out=second, log=lines.append, **STUDY)
    assert "0 finished (reused), 1 to resume, 1 to train" in lines[1]
    for name in ("degradation.csv", "degradation_curves.csv"):
        assert (second / name).read_text() == (out / name).read_text()


def test_unpack_refuses_missing_parts_and_clashing_files(finished, tmp_path):
    out, _, _ = finished
    parts = pack(out, tmp_path / "parts", part_size=4096)
    assert not any(p.name.endswith(".pt") for p in parts) and len(parts) >= 2
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "degradation.md").write_text("mine\n")
    with pytest.raises(CnnzooError, match="degradation.md exists with other contents"):
        unpack(tmp_path / "parts", tmp_path / "copy")
    assert (tmp_path / "copy" / "degradation.md").read_text() == "mine\n"  # nothing was written
    parts[-1].unlink()
    with pytest.raises(CnnzooError, match="missing part"):
        unpack(tmp_path / "parts", tmp_path / "other")


def test_sigint_stops_the_depth_study_with_one_resume_hint(tmp_path, capsys):
    """A real SIGINT in the middle of `cnnzoo study depth`: exit 130, one hint, no traceback, last.pt kept."""
    metrics = tmp_path / "resnet20" / "seed-0" / "metrics.jsonl"

    def interrupt_after_the_first_epoch():
        deadline = time.monotonic() + 300
        while not metrics.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_after_the_first_epoch, daemon=True).start()
    options = "--depths 20 --data digits --recipe demo --epochs 2 --subset 64 --batch-size 32 --device cpu"
    argv = ["study", "depth", *options.split(), "--out", str(tmp_path)]
    assert main(argv) == 130
    captured = capsys.readouterr()
    assert "estimate: " in captured.out
    assert captured.err.count("run the same command again to resume") == 1 and "Traceback" not in captured.err
    assert "SIGINT received" in captured.err
    assert (tmp_path / "resnet20" / "seed-0" / "last.pt").exists()


def test_suggested_depth_is_chosen_on_validation_never_test():
    measured = ((20, 91.0, 0.1, 99.0), (32, 92.3, 0.1, 80.0), (44, 92.6, 0.1, 70.0), (56, 92.7, 0.2, 60.0))
    rows = [
        {"model": f"resnet{d}", "depth": d, "val_top1": acc, "val_top1_std": std, "test_top1": test}
        for d, acc, std, test in measured
    ]
    assert suggest_depth(rows, 0.5)["model"] == "resnet32"  # 92.3 >= 92.7 - 0.5; 91.0 is not; test says 20
    for r in rows:  # any test accuracy at all: the same answer
        r["test_top1"] = 100.0 - r["test_top1"]
    assert suggest_depth(rows, 0.5)["model"] == "resnet32"
    assert suggest_depth(rows, 2.0)["model"] == "resnet20"
    rows[-1]["val_top1_std"] = 1.8  # a noisy best widens the margin to its spread
    assert suggest_depth(rows, 0.5)["model"] == "resnet20"


def test_bad_arguments_are_a_clear_error(capsys):
    assert main(["study", "degradation", "--depths", "20,21"]) == 2
    assert "depths must be among" in capsys.readouterr().err
    assert main(["study", "depth", "--seeds", ","]) == 2
    assert "--seeds must be comma-separated integers" in capsys.readouterr().err
    assert main(["study", "gradients", "plain20", "--steps", "-1"]) == 2
    assert "--steps must be >= 0" in capsys.readouterr().err
    assert main(["study", "unpack", "/nonexistent-cnnzoo", "x"]) == 2
    assert "no packed study parts" in capsys.readouterr().err


def test_every_study_option_has_help_text():
    import argparse

    from cnnzoo.cli import build_parser

    study = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["study"]
    subs = next(a for a in study._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(subs) == {"gradients", "degradation", "depth", "pack", "unpack"}
    for name, parser in subs.items():
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"study {name} {action.dest} has no help text"


def test_the_estimate_warns_when_a_study_takes_more_than_an_hour(tmp_path):
    """The paper's 64k iterations at a timed 0.1 s per step: 6,400 s of steps plus 183 validations of 5,000 images."""
    from cnnzoo.analysis.study.plan import Plan, describe
    from cnnzoo.analysis.study.runs import plan_runs

    runs = plan_runs(["resnet20"], [0], tmp_path, data="cifar10", recipe="resnet-cifar-paper")
    plan = Plan(torch.device("cpu"), 45_000, 5_000, 3, 32, 10, {"resnet20": 0.1})
    lines = describe("degradation", runs, plan, jobs=1)
    assert "183 epochs = 64,000 iterations of batch 128" in lines[0]
    assert lines[2].startswith("estimate: 1:50:") and "resnet20 100.0 ms" in lines[2]
    assert lines[3].startswith("warning: this study should take more than an hour")
    assert len(describe("degradation", runs, Plan(torch.device("cpu"), 45_000, 5_000, 3, 32, 10, {}), jobs=1)) == 3


def _plan(**kw):
    from cnnzoo.analysis.study.plan import Plan

    return Plan(torch.device("cpu"), 45_000, 5_000, 3, 32, 10, {"resnet20": 0.1, "resnet56": 0.3}, **kw)


def test_a_study_shorter_than_the_lesson_says_caution_and_the_lesson_does_not(tmp_path):
    from cnnzoo.analysis.study.plan import caution
    from cnnzoo.analysis.study.runs import plan_runs

    def runs(**overrides):
        return plan_runs(["resnet56"], [0], tmp_path, data="cifar10", recipe="resnet-cifar-short", overrides=overrides)

    assert caution("degradation", runs(), _plan()) is None  # the lesson itself: 10 epochs of 351 steps
    assert caution("degradation", plan_runs(["resnet56"], [0], tmp_path, data="cifar10", recipe="resnet-cifar-paper"),
                   _plan()) is None  # fmt: skip
    short = caution("degradation", runs(epochs=3), _plan())
    assert short.startswith("caution: 1,053 iterations (1.6 % of the paper's 64k) cannot show both findings")
    assert "--recipe resnet-cifar-short" in short and "3,510 iterations" in short
    subset = caution("depth", runs(subset=10_000), _plan(test_images=10_000))
    assert "a --subset of 45,000 training images" in subset and "what depth buys" in subset


def test_the_estimate_counts_validation_and_the_test_pass_and_learns_from_finished_epochs(tmp_path):
    """10 epochs of 351 steps at 0.1 s, 10 validations of 5,000 images and one test pass of 10,000 at 1 ms each."""
    import json

    from cnnzoo.analysis.study.runs import plan_runs

    run = plan_runs(["resnet20"], [0], tmp_path, data="cifar10", recipe="resnet-cifar-short")[0]
    plan = _plan(test_images=10_000, eval_seconds={"resnet20": 1e-3})
    assert plan.seconds_left(run) == pytest.approx(3510 * 0.1 + (10 * 5_000 + 10_000) * 1e-3)
    other = plan_runs(["resnet56"], [0], tmp_path, data="cifar10", recipe="resnet-cifar-short")[0]
    other.run_dir.mkdir(parents=True)
    line = {"epoch": 1, "step": 351, "seconds": 351 * 0.6, "eval_seconds": 5.0, "val_top1": 0.5}
    (other.run_dir / "metrics.jsonl").write_text(json.dumps(line) + "\n")
    assert plan.probe_scale([run, other]) == pytest.approx(2.0)  # resnet56 ran at twice its timed 0.3 s per step
    assert plan.wall_seconds([run], 1) < plan.wall_seconds([run, other], 1)
    both = plan.seconds_left(run, plan.probe_scale([run, other]))
    assert both == pytest.approx(3510 * 0.2 + 60_000 * 1e-3)


def test_plain_seeds_train_the_plain_nets_for_fewer_seeds_first_seed_first(tmp_path):
    from cnnzoo.analysis.study.degradation import degradation_runs

    residual, plain = ["resnet20", "resnet56"], ["plain20", "plain56"]
    runs = degradation_runs(residual, plain, [0, 1], [0], tmp_path, data="cifar10", recipe="resnet-cifar-short")
    assert [(r.config.model, r.config.seed) for r in runs] == [
        ("resnet20", 0), ("resnet56", 0), ("plain20", 0), ("plain56", 0), ("resnet20", 1), ("resnet56", 1)
    ]  # fmt: skip
    assert main(["study", "degradation", "--seeds", "0", "--plain-seeds", "x"]) == 2
