"""One launch per step (``--cuda-graph``): the lr table and device step counter, and the EMA update inside
``GraphedStep`` (uncaptured on the CPU, so these test the logic the CUDA graph records)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from cnnzoo import create_model
from cnnzoo.data import load_data
from cnnzoo.train import loop
from cnnzoo.train.api import train
from cnnzoo.train.config import build_config
from cnnzoo.train.ema import EMA
from cnnzoo.train.engine import GraphedStep, lr_table, make_ema, set_lr, setup_training, train_step
from cnnzoo.train.schedule import lr_at
from conftest import EXACT


def test_lr_table_is_lr_at_for_every_step():
    cfg = build_config("resnet20", "digits", epochs=3, lr=0.3, schedule="cosine", warmup_epochs=1, min_lr=0.01)
    table = lr_table(cfg, 7, "cpu")
    assert table.dtype == torch.float64 and table.shape == (21,)
    expected = torch.tensor([lr_at(s, cfg, 7) for s in range(21)], dtype=torch.float64)
    assert torch.equal(table, expected)
    assert table[0] < table[6] and table[7] > table[20]  # warm-up ramp, then the decay: not a constant
    # The step's lr * lr_scale on the device, copied into the float32 lr, equals set_lr's Python product filled in.
    for scale in (1.0, 0.1, 1 / 3):
        for s in range(21):
            on_device = torch.zeros((), dtype=torch.float32).copy_(table[s] * scale)
            assert on_device.item() == torch.zeros((), dtype=torch.float32).fill_(lr_at(s, cfg, 7) * scale).item()


def test_make_ema_is_the_sync_free_ema():
    model = create_model("resnet20", num_classes=10, in_channels=1)
    ema = make_ema(model, 0.99)
    assert isinstance(ema, EMA) and ema.decay == 0.99


def test_graphed_step_with_table_and_ema_matches_the_eager_loop():
    """GraphedStep reading its lr from the table at its own counter, updating the EMA and the running sums inside
    the step, trains exactly as the eager loop (set_lr(lr_at(step)) on a float32 lr, train_step,
    ema.update_parameters, the sums) does; the counter advances once per call, warm-up included, seek() moves it (a
    resumed run's start), and the first non-finite step is recorded on the device."""
    torch.manual_seed(0)
    bundle = load_data("digits", batch_size=32, device="cpu", seed=0, val_size=0)
    cfg = build_config(
        "resnet20",
        "digits",
        device="cpu",
        precision="fp32",
        batch_size=32,
        lr=0.4,
        epochs=1,
        schedule="cosine",
        grad_clip=1.0,
        cuda_graph=True,
    )
    model = create_model("resnet20", num_classes=10, in_channels=1)
    plain, plain_opt, ctx = setup_training(copy.deepcopy(model), cfg, "cpu")
    graphed_net, graphed_opt, _ = setup_training(model, cfg, "cpu")
    plain_ema, graphed_ema = make_ema(plain, 0.9), make_ema(graphed_net, 0.9)
    spe = len(bundle.train)
    table = lr_table(cfg, spe, "cpu")
    graphed = GraphedStep(graphed_net, graphed_opt, ctx, warmup=2, ema=graphed_ema, lrs=table)
    graphed.seek(0)
    for group in plain_opt.param_groups:  # the float32 lr the graph reads
        group["lr"] = torch.tensor(0.0, dtype=torch.float32)
    batches = bundle.train.epoch(0)
    sums = torch.zeros(2, dtype=torch.float64)
    for step in range(6):
        images, labels = next(batches)
        set_lr(plain_opt, lr_at(step, cfg, spe))
        plain_loss, logits = train_step(plain, plain_opt, images, labels, ctx)
        plain_ema.update_parameters(plain)
        sums += torch.stack([plain_loss.double() * len(labels), (logits.argmax(1) == labels).sum().double()])
        graphed_loss, _ = graphed(images, labels, labels)
        assert torch.equal(plain_loss, graphed_loss), step
        assert torch.equal(graphed.sums, sums), step  # the loop's running sums, accumulated inside the step
        assert all(g["lr"].item() == table[step].float().item() for g in graphed_opt.param_groups), step
    assert int(graphed.counter) == 6 and graphed.static is not None and int(graphed.bad) == -1
    assert int(graphed_ema.n_averaged) == 6
    for p, q in zip(plain.parameters(), graphed_net.parameters(), strict=True):
        assert torch.equal(p, q)
    theirs = plain_ema.state_dict()
    for key, value in graphed_ema.state_dict().items():
        assert torch.equal(value, theirs[key]), key
    graphed.seek(spe - 1, torch.tensor([1.0, 2.0], dtype=torch.float64))
    images, labels = next(batches)
    loss, _ = graphed(images, labels, labels)
    assert int(graphed.counter) == spe
    assert graphed_opt.param_groups[0]["lr"].item() == table[spe - 1].float().item()
    assert graphed.sums[0].item() == 1.0 + loss.double().item() * len(labels)  # carried on from seek's sums

    # A non-finite loss: the first bad step's global index is recorded (as FiniteGuard does), later ones ignored.
    graphed.seek(40)
    graphed(images, labels, labels)
    graphed(torch.full_like(images, float("nan")), labels, labels)
    graphed(torch.full_like(images, float("nan")), labels, labels)
    assert int(graphed.bad) == 41 and int(graphed.counter) == 43


def test_graphed_loop_sets_no_lr_and_updates_ema_once(tmp_path, monkeypatch):
    """With --cuda-graph the loop leaves the lr to the step's table (set_lr is never called) and the EMA to the
    step (one update per step, not two)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the loop set the lr itself")

    monkeypatch.setattr(loop, "set_lr", refuse)
    report = train("resnet20", "digits", out=tmp_path / "g", cuda_graph=True, quiet=True, **{**EXACT, "epochs": 1})
    ckpt = torch.load(tmp_path / "g" / "last.pt", weights_only=True)
    assert int(ckpt["ema"]["n_averaged"]) == ckpt["position"]["step"] == 3
    assert report["test"]["n"] > 0


@pytest.mark.slow
def test_cuda_graph_ema_run_resumes_exactly_and_either_way(exact_run, graphed_runs, tmp_path):
    """--cuda-graph with --ema: stopped and resumed it ends with the uninterrupted run's EMA bit for bit; a graphed
    run resumed eagerly, and an eager run resumed graphed, end with the eager run's EMA up to the float32 rounding
    of the lr (the graph reads a float32 lr)."""
    eager_dir, _ = exact_run
    eager_ema = torch.load(eager_dir / "last.pt", weights_only=True)["ema"]
    full_dir, cut_dir = graphed_runs["full_dir"], graphed_runs["cut_dir"]
    assert graphed_runs["resumed"]["test"] == graphed_runs["full"]["test"]
    ema_full = torch.load(full_dir / "last.pt", weights_only=True)["ema"]
    ema_cut = torch.load(cut_dir / "last.pt", weights_only=True)["ema"]
    assert int(ema_full["n_averaged"]) == 9
    assert all(torch.equal(ema_full[k], ema_cut[k]) for k in ema_full)
    # The running sums the step accumulates carry over the interruption: the same train metrics, bit for bit.
    lines = [[json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()] for run in (full_dir, cut_dir)]
    assert [(m["train_loss"], m["train_top1"]) for m in lines[0]] == [
        (m["train_loss"], m["train_top1"]) for m in lines[1]
    ]
    assert len(lines[0]) == 3

    train("resnet20", "digits", out=tmp_path / "g2e", cuda_graph=True, stop_after=4, quiet=True, **EXACT)
    train(resume=tmp_path / "g2e", cuda_graph=False, quiet=True)
    train("resnet20", "digits", out=tmp_path / "e2g", stop_after=4, quiet=True, **EXACT)
    train(resume=tmp_path / "e2g", cuda_graph=True, quiet=True)
    for name in ("g2e", "e2g"):
        ema = torch.load(tmp_path / name / "last.pt", weights_only=True)["ema"]
        assert int(ema["n_averaged"]) == 9
        for k, v in eager_ema.items():
            if v.is_floating_point():
                torch.testing.assert_close(ema[k], v, rtol=1e-4, atol=1e-5, msg=f"{name}: {k}")
            else:
                assert torch.equal(ema[k], v), (name, k)
