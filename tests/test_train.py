"""The trainer: config and recipes, the lr schedule, the optimizer, and end-to-end runs on digits (tiny, CPU)."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from cnnzoo.errors import CnnzooError
from cnnzoo.models import create_model
from cnnzoo.train.api import train
from cnnzoo.train.config import TrainConfig, build_config, list_recipes, read_config, write_config
from cnnzoo.train.engine import make_optimizer
from cnnzoo.train.schedule import lr_at, total_steps
from conftest import TINY  # 3 steps of 32 digits images per epoch, 48 validation images

# --- config and recipes --------------------------------------------------------------------------------------------


def test_recipes_listed_with_descriptions():
    recipes = list_recipes()
    for name in ("resnet-cifar-paper", "vgg-paper", "alexnet-paper", "googlenet-paper", "fast", "demo"):
        assert recipes[name], name
    for name in recipes:  # every shipped recipe resolves to a valid config
        build_config("resnet20", recipe=name)


def test_flags_override_recipe_and_per_model_table():
    cfg = build_config("resnet20", recipe="resnet-cifar-paper")
    assert (cfg.batch_size, cfg.momentum, cfg.weight_decay, cfg.iterations) == (128, 0.9, 1e-4, 64000)
    assert cfg.milestone_steps == [32000, 48000] and cfg.warmup_steps == 0
    cfg110 = build_config("resnet110", recipe="resnet-cifar-paper", lr=0.2)
    assert (cfg110.warmup_until_error, cfg110.warmup_lr, cfg110.lr) == (0.8, 0.01, 0.2)
    assert cfg110.warmup_steps == 3200 and build_config("resnet1202", recipe="resnet-cifar-paper").warmup_lr == 0.01


def test_bad_options_are_user_errors():
    with pytest.raises(CnnzooError, match="unknown training option"):
        build_config("resnet20", learning_rate=0.1)
    with pytest.raises(CnnzooError, match="optimizer"):
        build_config("resnet20", optimizer="adam")
    with pytest.raises(CnnzooError, match="unknown recipe"):
        build_config("resnet20", recipe="nope")
    with pytest.raises(CnnzooError, match="must be a finite number"):
        build_config("resnet20", lr="fast")


def test_config_toml_round_trip(tmp_path):
    cfg = build_config("resnet20", recipe="resnet-cifar-paper", dropout=None, label_smoothing=0.1)
    write_config(cfg, tmp_path / "config.toml")
    assert read_config(tmp_path / "config.toml") == cfg


# --- schedule and optimizer ----------------------------------------------------------------------------------------


def test_paper_schedule_resnet110():
    cfg = build_config("resnet110", recipe="resnet-cifar-paper")
    spe = 391  # 50,000 / 128 per epoch: the paper's milestones are in steps, independent of it
    assert total_steps(cfg, spe) == 64000
    # Warm-up at 0.01 until the training error is below 80 % (the loop records that step: here, say, 400), at most
    # 3,200 steps; then 0.1.
    assert lr_at(0, cfg, spe) == lr_at(399, cfg, spe) == lr_at(3199, cfg, spe) == 0.01
    assert lr_at(400, cfg, spe, warmup_end=400) == lr_at(31999, cfg, spe, warmup_end=400) == 0.1
    assert lr_at(3200, cfg, spe) == 0.1  # the cap
    assert lr_at(32000, cfg, spe) == pytest.approx(0.01) and lr_at(48000, cfg, spe) == pytest.approx(0.001)
    assert lr_at(0, build_config("resnet56", recipe="resnet-cifar-paper"), spe) == 0.1  # no warm-up for others


def test_schedules_shapes():
    spe = 10
    cos = TrainConfig(epochs=10, lr=1.0, schedule="cosine", warmup_epochs=1)
    assert [lr_at(s, cos, spe) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])  # linear ramp to lr
    assert lr_at(10, cos, spe) == pytest.approx(1.0) and lr_at(99, cos, spe) == pytest.approx(0.0, abs=1e-12)
    one = TrainConfig(epochs=10, lr=1.0, schedule="onecycle", pct_start=0.3)
    lrs = [lr_at(s, one, spe) for s in range(100)]
    assert lrs[0] == pytest.approx(1 / 25) and max(lrs) == pytest.approx(1.0) and lrs.index(max(lrs)) == 30
    assert lrs[-1] == pytest.approx(1 / 25 / 1e4)
    step = TrainConfig(epochs=20, lr=0.01, schedule="step", step_size=8, gamma=0.96)  # GoogLeNet: -4% every 8 epochs
    assert lr_at(79, step, spe) == 0.01 and lr_at(80, step, spe) == pytest.approx(0.0096)
    lin = TrainConfig(epochs=1, lr=1.0, schedule="linear")
    assert lr_at(0, lin, spe) == 1.0 and lr_at(9, lin, spe) == pytest.approx(0.0)


def test_weight_decay_excludes_bn_and_bias():
    model = create_model("resnet20", num_classes=10, in_channels=1)
    opt = make_optimizer(model, TrainConfig(weight_decay=5e-4, nesterov=True), torch.device("cpu"))
    decayed, free = opt.param_groups
    assert decayed["weight_decay"] == 5e-4 and free["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in free["params"])
    assert len(free["params"]) == sum(
        1 for n, _ in model.named_parameters() if n.endswith((".bias", "bn1.weight", "bn2.weight"))
    )
    assert opt.defaults["nesterov"]
    everything = make_optimizer(model, TrainConfig(wd_exclude_bn_bias=False, optimizer="adamw"), torch.device("cpu"))
    assert len(everything.param_groups) == 1 and isinstance(everything, torch.optim.AdamW)


# --- end to end ----------------------------------------------------------------------------------------------------


def test_train_digits_writes_the_run_directory(tiny_run, copy_run):
    out, report = tiny_run  # 2 epochs of TINY, EMA 0.9
    for name in ("config.toml", "metrics.jsonl", "last.pt", "best.pt", "curves.png", "report.json", "confusion.png"):
        assert (out / name).is_file(), name
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and [r["step"] for r in lines] == [3, 6]
    for r in lines:
        for key in ("train_top1", "val_top1", "val_top5", "ema_val_top1"):
            assert 0.0 <= r[key] <= 1.0
        assert r["images_per_s"] > 0 and math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"])
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert report["test"]["n"] == 360 and len(report["test"]["per_class"]) == 10
    assert 0.0 <= report["test"]["top1"] <= report["test"]["top5"] <= 1.0
    assert report["best_epoch"] in (1, 2)
    assert read_config(out / "config.toml").ema == 0.9
    out = copy_run(out)
    with pytest.raises(CnnzooError, match="already holds a run"):
        train("resnet20", "digits", out=out, epochs=1, quiet=True, **TINY)
    # The old run's export and a temporary file its kill left behind must not survive into the new run.
    stale = [out / "model.onnx", out / ".report.json.abc123.tmp"]
    for path in stale:
        path.write_bytes(b"old")
    old_id = json.loads((out / "cnnzoo-run.json").read_text())["id"]
    train("resnet20", "digits", out=out, epochs=1, quiet=True, overwrite=True, **TINY)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # a fresh run, not the old one continued
    assert not any(path.exists() for path in stale)
    new_id = json.loads((out / "cnnzoo-run.json").read_text())["id"]
    assert new_id != old_id and torch.load(out / "best.pt", weights_only=True)["meta"]["run_id"] == new_id


def test_cli_flags_reach_the_config(tmp_path):
    from cnnzoo.train import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "train",
            "resnet20",
            "--recipe",
            "demo",
            "--lr",
            "0.3",
            "--no-wd-exclude-bn-bias",
            "--milestones",
            "2,4",
            "--out",
            str(tmp_path),
        ]
    )
    assert (args.lr, args.wd_exclude_bn_bias, args.milestones, args.recipe) == (0.3, False, [2.0, 4.0], "demo")
    assert not hasattr(args, "epochs")  # not given: the recipe's value stays


@pytest.mark.slow  # all 1,437 training images, 3 epochs: the longest CPU run in the suite
def test_demo_recipe_learns_digits(tmp_path):
    """The demo recipe, shortened to 3 epochs on all of digits, already beats chance by far."""
    report = train("resnet20", "digits", recipe="demo", out=tmp_path / "demo", epochs=3, quiet=True, threads=2)
    assert report["test"]["top1"] > 0.6


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_train_step_under_autocast_on_cpu(precision):
    from cnnzoo.train.engine import step_context, train_step

    model = create_model("resnet20", num_classes=10, in_channels=1).to(memory_format=torch.channels_last)
    cfg = TrainConfig(precision=precision, label_smoothing=0.1, grad_clip=1.0)
    ctx = step_context(cfg, torch.device("cpu"))
    assert ctx.precision == precision and ctx.scaler.is_enabled() == (precision == "fp16")
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    x, y = torch.randn(4, 1, 32, 32).contiguous(memory_format=torch.channels_last), torch.arange(4)
    before = model.fc.weight.clone()
    loss, logits = train_step(model, opt, x, y, ctx)
    assert torch.isfinite(loss) and logits.shape == (4, 10) and not torch.equal(before, model.fc.weight)


def test_mixup_and_cutmix_targets():
    from cnnzoo.data.bundle import generator
    from cnnzoo.train.engine import mix_batch

    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4, 5])
    for cfg in (TrainConfig(mixup=0.4), TrainConfig(cutmix=1.0)):
        mixed, soft = mix_batch(x, y, cfg, 10, generator("cpu", 0, 1))
        again, soft2 = mix_batch(x, y, cfg, 10, generator("cpu", 0, 1))
        assert torch.equal(mixed, again) and torch.equal(soft, soft2)  # a pure function of the generator's seed
        assert soft.sum(1) == pytest.approx(torch.ones(6)) and soft[:, 6:].sum() == 0
        lam = soft[0, 0].item()  # sample 0 is paired with sample 5
        assert soft[0, 5].item() == pytest.approx(1 - lam)
        if cfg.cutmix:  # lambda is the exact area kept from the sample itself
            kept = (mixed[0] == x[0]).float().mean().item()
            assert kept == pytest.approx(lam)
        else:
            assert torch.allclose(mixed[0], lam * x[0] + (1 - lam) * x[5], atol=1e-6)


def test_setup_training_for_throughput_measurements():
    from cnnzoo.train.engine import setup_training, train_step

    cfg = build_config("resnet20", recipe="fast", device="cpu", channels_last=True)
    net, opt, ctx = setup_training(create_model("resnet20", num_classes=10), cfg)
    assert net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert ctx.precision == "fp32" and ctx.label_smoothing == 0.1 and opt.defaults["nesterov"]
    loss, _ = train_step(net, opt, torch.randn(2, 3, 32, 32), torch.tensor([1, 2]), ctx)
    assert torch.isfinite(loss)


def test_setup_training_leaves_process_flags_to_backend_settings():
    # The trainer and `cnnzoo compare` set up a model with the same function; the process-wide flags are set only
    # inside backend_settings, and restored after it (a deterministic run must not make later code deterministic).
    from cnnzoo.train.engine import backend_settings, setup_training

    cfg = build_config("resnet20", device="cpu", deterministic=True, threads=1)
    threads = torch.get_num_threads()
    setup_training(create_model("resnet20", num_classes=10), cfg)
    assert not torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == threads
    with backend_settings(cfg, torch.device("cpu")):
        assert torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == 1
    assert not torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == threads


def test_without_a_validation_split_the_last_epoch_is_kept(tmp_path):
    report = train(
        "resnet20",
        "digits",
        out=tmp_path / "r",
        epochs=2,
        subset=64,
        val_size=0,
        batch_size=32,
        device="cpu",
        threads=2,
        quiet=True,
    )
    assert report["best_epoch"] == 2 and report["best_val_top1"] is None and "no validation" in report["selection"]
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_top1"] for r in rows] == [None, None]  # null in JSON, not NaN
    assert (tmp_path / "r" / "curves.png").is_file()


def test_model_options_zero_init_residual_and_dropout():
    from cnnzoo.train.run import build_model

    model = build_model(TrainConfig(model="resnet20", zero_init_residual=True), 10, 1)
    blocks = [m for m in model.modules() if hasattr(m, "shortcut")]
    assert len(blocks) == 9 and all(torch.count_nonzero(b.bn2.weight) == 0 for b in blocks)  # resnet20: 3 x 3
    with pytest.raises(CnnzooError, match="zero_init_residual"):
        build_model(TrainConfig(model="plain20", zero_init_residual=True), 10, 1)
    with pytest.raises(CnnzooError, match="no dropout layers"):
        build_model(TrainConfig(model="resnet20", dropout=0.3), 10, 1)


def test_aux_logits_option(capsys):
    from cnnzoo.cli import main
    from cnnzoo.train.run import build_model

    # googlenet_cifar trains without auxiliary heads by default; --aux-logits adds them (and --no-aux-logits drops
    # GoogLeNet's); a net without auxiliary classifiers refuses the flag in one line.
    assert build_model(TrainConfig(model="googlenet_cifar"), 10, 3).aux1 is None
    assert build_model(TrainConfig(model="googlenet_cifar", aux_logits=True), 10, 3).aux1 is not None
    assert build_model(TrainConfig(model="googlenet", aux_logits=False), 10, 3).aux2 is None
    with pytest.raises(CnnzooError, match="no auxiliary classifiers"):
        build_model(TrainConfig(model="resnet20", aux_logits=True), 10, 1)
    assert main(["train", "resnet20", "--data", "digits", "--aux-logits", "--epochs", "1"]) == 2
    assert "no auxiliary classifiers" in capsys.readouterr().err


def test_compile_mode_reaches_torch_compile(monkeypatch):
    from cnnzoo.train.engine import compile_model

    seen = {}
    monkeypatch.setattr(torch, "compile", lambda net, mode=None: seen.setdefault("mode", mode) and net)
    net = torch.nn.Linear(2, 2)
    assert compile_model(net, TrainConfig(compile=False, compile_mode="reduce-overhead")) is net and not seen
    compile_model(net, TrainConfig(compile=True, compile_mode="reduce-overhead"))
    assert seen["mode"] == "reduce-overhead"
    with pytest.raises(CnnzooError, match="compile_mode must be one of"):
        TrainConfig(compile_mode="fastest")


def test_channels_last_defaults():
    from cnnzoo.train.engine import use_channels_last

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    cfg = TrainConfig()
    assert use_channels_last(cfg, cuda) and use_channels_last(cfg, cpu)
    assert not use_channels_last(TrainConfig(channels_last=False), cpu)  # the flag always wins
    assert not use_channels_last(cfg, torch.device("mps"))


def test_the_step_gives_the_model_batches_in_its_layout():
    # The data path hands out channels_last batches; --no-channels-last must reach the convolutions as NCHW.
    from cnnzoo.train.engine import make_optimizer, step_context, train_step

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.nchw = torch.nn.Linear(3 * 4 * 4, 2), []

        def forward(self, x):
            self.nchw.append(x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last))
            return self.fc(x.flatten(1))

    x = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([0, 1])
    for flag, want in ((False, True), (True, False), (None, False)):
        cfg, probe = TrainConfig(channels_last=flag), Probe()
        ctx = step_context(cfg, torch.device("cpu"))
        train_step(probe, make_optimizer(probe, cfg, torch.device("cpu")), x, y, ctx)
        assert probe.nchw == [want], flag
    assert step_context(TrainConfig(), torch.device("cpu")).layout(x) is x  # no copy when the layouts agree


def test_flip_tta_averages_the_logits_of_both_views():
    from cnnzoo.train.engine import step_context
    from cnnzoo.train.loop import evaluate

    class Loader:
        def epoch(self, _):
            g = torch.Generator().manual_seed(0)
            yield torch.randn(6, 1, 4, 4, generator=g), torch.tensor([0, 1, 0, 1, 0, 1])

    # A net that sees only the left half of the image: with flips averaged it sees both halves.
    class LeftHalf(torch.nn.Module):
        def forward(self, x):
            left = x[..., :2].mean((1, 2, 3))
            return torch.stack([left, -left], 1)

    x, y = next(Loader().epoch(0))
    plain = evaluate(LeftHalf(), Loader(), step_context(TrainConfig(), torch.device("cpu")), 2)
    tta = evaluate(LeftHalf(), Loader(), step_context(TrainConfig(tta_flip=True), torch.device("cpu")), 2)
    want = (LeftHalf()(x) + LeftHalf()(x.flip(3))) / 2
    assert tta["loss"] == pytest.approx(torch.nn.functional.cross_entropy(want, y).item(), rel=1e-6)
    assert plain["loss"] == pytest.approx(torch.nn.functional.cross_entropy(LeftHalf()(x), y).item(), rel=1e-6)
    assert tta["loss"] != pytest.approx(plain["loss"])
