"""`cnnzoo compare --sweep` and `--train-budget`: their logic on the CPU with fakes in place of the measurements,
and one tiny real budget run on digits."""

from __future__ import annotations

import json

import pytest

from cnnzoo.analysis.compare import CompareInterrupted, budget, sweep
from cnnzoo.cli import main
from cnnzoo.errors import CnnzooError

# --- the batch-size sweep ------------------------------------------------------------------------------------------


def test_sweep_arguments_and_the_fit():
    assert sweep.parse_batches("8,1,2,2") == [1, 2, 8]
    for bad in ("", "0,1", "a"):
        with pytest.raises(CnnzooError, match="--sweep takes batch sizes"):
            sweep.parse_batches(bad)
    fit = sweep.linear_fit([1.0, 2.0, 3.0], [3.0, 5.0, 7.0])
    assert fit["slope"] == pytest.approx(2.0) and fit["intercept"] == pytest.approx(1.0) and fit["r2"] == 1.0
    assert sweep.linear_fit([1.0, 1.0], [2.0, 3.0]) is None
    assert sweep.linear_fit([0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 0.0, 1.0])["r2"] == pytest.approx(0.2)
    # Allocations (+) and frees (-) in time order: the peak is the highest running sum.
    assert sweep.peak_of([100, 50, -100, 200, -250]) == 250 and sweep.peak_of([]) == 0


def _fake_net(args):
    """Time per image proportional to MACs and falling with the batch; memory 10 MiB + 2 per image."""
    from cnnzoo.analysis.profile import profile_model

    name, shape, batches, _device, _repeats, classes = args
    macs = profile_model(name, num_classes=classes, input_shape=shape)["macs"]
    return [
        {
            "model": name,
            "batch_size": b,
            "note": "",
            "infer_ms_per_img": macs / 1e9 * 20 * (1 + 1 / b),
            "infer_ms_per_img_spread": 0.01,
            "train_ms_per_img": macs / 1e9 * 60 * (1 + 1 / b),
            "train_ms_per_img_spread": 0.02,
            "infer_peak_mb": 1.0 + b,
            "train_peak_mb": 10.0 + 2 * b,
        }
        for b in batches
    ]


def test_sweep_writes_batch_files_with_fits_and_findings(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "_measure_net", _fake_net)
    data = sweep.run_sweep(
        ["resnet20", "resnet56"],
        input_shape=(3, 32, 32),
        device="cpu",
        batches=[1, 4, 16],
        repeats=2,
        out=tmp_path,
    )
    for name in ("batch_sweep.csv", "batch_sweep.json", "batch_sweep.md", "batch_sweep.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert data["meta"]["complete"] and "torch.profiler" in data["meta"]["memory_method"]
    assert len(data["records"]) == 6
    infer_1 = next(f for f in data["fits"] if f["batch_size"] == 1 and f["time"] == "infer")
    assert infer_1["slope"] == pytest.approx(40.0) and infer_1["r2"] == pytest.approx(1.0)  # ms per GMAC at batch 1
    r20 = next(n for n in data["nets"] if n["model"] == "resnet20")
    assert r20["train_mb_per_img"] == pytest.approx(2.0) and r20["train_mb_fixed"] == pytest.approx(10.0)
    assert r20["infer_speedup"] == pytest.approx(2.0 / (1 + 1 / 16))
    assert r20["accuracy_per_mparam"] == pytest.approx(91.73 / 0.269722)  # published, per million parameters
    md = (tmp_path / "batch_sweep.md").read_text()
    assert md.count("- Paper:") == 4 and "this machine agrees" in md


def test_a_fit_carried_by_one_costly_net_is_said_to_agree_only_in_part():
    """Three cheap nets whose times do not follow their MACs and one far costlier net: R^2 over all four is high,
    without the costliest it is low, and the finding says so instead of "agrees"."""
    costs = {"a": (1e9, 3.0), "b": (2e9, 1.0), "c": (3e9, 3.0), "d": (100e9, 100.0)}
    records = [
        {"model": m, "batch_size": 1, "macs": macs, "infer_ms_per_img": ms, "train_ms_per_img": 3 * ms}
        for m, (macs, ms) in costs.items()
    ]
    data = sweep.analyse(records, [{"model": m, "params": 1_000_000, "macs": c[0]} for m, c in costs.items()])
    infer = next(f for f in data["fits"] if f["time"] == "infer")
    assert infer["r2"] > 0.99 and infer["r2_without_largest"] < 0.2
    first = sweep.findings(data)[0]
    assert "agrees only in part: without the costliest net R^2 falls to" in first


def test_sweep_ctrl_c_keeps_the_nets_measured(tmp_path, monkeypatch):
    def stop_on_second(args):
        if args[0] == "resnet56":
            raise KeyboardInterrupt
        return _fake_net(args)

    monkeypatch.setattr(sweep, "_measure_net", stop_on_second)
    with pytest.raises(CompareInterrupted, match="after 1 of 2 nets"):
        sweep.run_sweep(
            ["resnet20", "resnet56"], input_shape=(3, 32, 32), device="cpu", batches=[1, 2], repeats=1, out=tmp_path
        )
    saved = json.loads((tmp_path / "batch_sweep.json").read_text())
    assert not saved["meta"]["complete"] and {r["model"] for r in saved["records"]} == {"resnet20"}
    assert (tmp_path / "batch_sweep.png").is_file()


# --- the equal training budget -------------------------------------------------------------------------------------


def test_budget_durations_and_iterations():
    assert budget.parse_budget("10m") == 600 and budget.parse_budget("90s") == 90 and budget.parse_budget("45") == 45
    assert budget.parse_budget("1h30m") == 5400 and budget.parse_budget("0.5m") == 30
    for bad in ("", "ten", "0s", "5x"):
        with pytest.raises(CnnzooError, match="--train-budget must be"):
            budget.parse_budget(bad)
    assert budget.iterations_for(600, 0.25) == 2400 and budget.iterations_for(600, 0.7) == 857
    assert budget.iterations_for(1, 30.0) == 1  # a net slower than the budget still takes one step
    with pytest.raises(CnnzooError):
        budget.iterations_for(600, 0.0)


SETTINGS = {"data": "digits", "recipe": "fast", "device": "cpu", "batch_size": None, "probe": 1.0, "label": None}


def test_budget_config_anneals_to_the_length():
    cfg = budget.budget_config("resnet20", SETTINGS, iterations=123)
    assert cfg.iterations == 123 and cfg.schedule == "linear" and cfg.min_lr == 0.0 and cfg.warmup_steps == 12
    assert cfg.eval_every >= 10**6 and cfg.early_stop == 0
    from cnnzoo.train.schedule import lr_at

    # A linear warm-up over the first tenth, the full lr at its end, then linear decay to zero at the last step.
    assert lr_at(0, cfg, 10) < lr_at(6, cfg, 10) < lr_at(12, cfg, 10) == pytest.approx(cfg.lr)
    assert lr_at(122, cfg, 10) == pytest.approx(0.0)
    small = budget.budget_config("resnet20", dict(SETTINGS, batch_size=128), iterations=5)
    assert small.batch_size == 128 and small.lr == pytest.approx(cfg.lr * 128 / cfg.batch_size)  # linear scaling


def test_iterations_fixed_once_by_the_probe(tmp_path, monkeypatch):
    calls = []

    def fake_probe(cfg, seconds, log=print):
        calls.append((cfg.model, cfg.batch_size))
        return {"seconds_per_step": 0.5, "spread": 0.01, "steps_timed": 7, "steps_per_epoch": 3, "train_mem_mb": 9.0}

    monkeypatch.setattr(budget, "probe", fake_probe)
    first = budget.fixed_probe("resnet20", tmp_path / "resnet20", SETTINGS, 600, log=lambda *_: None)
    assert first["iterations"] == 1200 and calls == [("resnet20", 512)]
    stored = json.loads((tmp_path / "resnet20" / "probe.json").read_text())
    assert stored["seconds_per_step"] == 0.5 and stored["key"]["batch_size"] == 512
    # A rerun reads the stored probe (the same length, without timing again), also for another budget.
    assert (
        budget.fixed_probe("resnet20", tmp_path / "resnet20", SETTINGS, 600, log=lambda *_: None)["iterations"] == 1200
    )
    assert budget.fixed_probe("resnet20", tmp_path / "resnet20", SETTINGS, 60, log=lambda *_: None)["iterations"] == 120
    assert len(calls) == 1
    # Another batch size changes the pace: probed again.
    budget.fixed_probe("resnet20", tmp_path / "resnet20", dict(SETTINGS, batch_size=64), 600, log=lambda *_: None)
    assert calls[-1] == ("resnet20", 64) and len(calls) == 2


def test_step_memory_is_each_nets_own_in_one_process():
    """Nets measured one after another in one process each get their own figure (a process's peak resident set
    would credit only the first), and it grows with the batch (the activations) and with depth."""
    cfg = lambda model, batch: budget.budget_config(model, dict(SETTINGS, batch_size=batch), 10)  # noqa: E731
    r56_small = budget.step_memory_mb(cfg("resnet56", 8))
    r20_small = budget.step_memory_mb(cfg("resnet20", 8))
    r20_large = budget.step_memory_mb(cfg("resnet20", 32))
    assert 0 < r20_small < r56_small and r20_small < r20_large


def test_budget_needs_data_and_a_duration(capsys):
    assert main(["compare", "--train-budget", "10m"]) == 2
    assert "--train-budget needs --data" in capsys.readouterr().err
    assert main(["compare", "--train-budget", "soon", "--data", "digits"]) == 2
    assert "duration like 10m" in capsys.readouterr().err
    assert main(["compare", "--sweep", "--train-budget", "1m"]) == 2
    assert "give one of them" in capsys.readouterr().err


def test_budget_trains_probes_and_resumes_on_digits(tmp_path, capsys):
    out = tmp_path / "budget"
    argv = ["compare", "resnet20", "--train-budget", "2s", "--data", "digits", "--probe", "0.5", "--batch-size", "32"]
    assert main([*argv, "--out", str(out), "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["model"] == "resnet20" and row["iterations"] >= 1 and 0 <= row["accuracy"] <= 1
    assert row["train_mem_mb"] > 0  # measured on the data's shape (grey digits), not the net's registered 3x32x32
    assert json.loads((out / "resnet20" / "probe.json").read_text())["input_shape"][0] == 1  # digits: grey
    assert (out / "resnet20" / "probe.json").is_file() and (out / "resnet20" / "run" / "report.json").is_file()
    for name in ("budget.csv", "budget.json", "budget.md", "budget.png"):
        assert (out / name).stat().st_size > 0
    report = json.loads((out / "resnet20" / "run" / "report.json").read_text())
    # The rerun reuses the probe and the finished run: the same numbers, nothing trained again.
    assert main([*argv, "--out", str(out), "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)[0]["accuracy"] == row["accuracy"] and "probe from" in captured.err
    assert json.loads((out / "resnet20" / "run" / "report.json").read_text()) == report
