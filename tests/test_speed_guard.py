"""The speed path's correctness guard: the fast path must train the same model as a plain fp32 eager loop.

cnnzoo's step (``setup_training`` + ``train_step``: channels_last, the ``fast`` recipe's Nesterov SGD with BN/bias
exempt from weight decay, label smoothing, autocast) against a reference written here from scratch with nothing but
``torch.optim.SGD`` and ``F.cross_entropy`` on contiguous NCHW tensors: same initial weights, same batches, same
learning rates. Tolerances: fp32 may differ only in summation order (channels_last kernels): losses and weights are
held to 1e-4 relative over 8 steps (measured on torch 2.14 CPU: identical). bf16 autocast rounds activations to 8
bits of mantissa: measured 1.3% worst loss difference and 2.2% relative L2 weight difference after 8 steps at the
``fast`` recipe's learning rates; held to 3% and 5%. A wrong learning rate, a decayed BN, a missing Nesterov or a
dropped label smoothing moves these by more than that (the fp32 case catches them exactly).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from cnnzoo import create_model
from cnnzoo.data import load_data
from cnnzoo.errors import CnnzooError
from cnnzoo.train.config import build_config
from cnnzoo.train.engine import GraphedStep, set_lr, setup_training, train_step
from cnnzoo.train.schedule import lr_at

STEPS = 8


def _reference_step(model, optimizer, images, labels, lr, label_smoothing):
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = F.cross_entropy(model(images), labels, label_smoothing=label_smoothing)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


@pytest.mark.parametrize(("precision", "rtol", "wtol"), [("fp32", 1e-4, 1e-4), ("bf16", 3e-2, 5e-2)])
def test_fast_path_matches_plain_fp32_loop(precision, rtol, wtol):
    torch.manual_seed(0)
    bundle = load_data("digits", batch_size=64, device="cpu", seed=0, val_size=0)
    cfg = build_config(
        "resnet20",
        "digits",
        recipe="fast",
        device="cpu",
        precision=precision,
        channels_last=True,
        batch_size=64,
        epochs=4,
    )
    fast_model = create_model("resnet20", num_classes=10, in_channels=1)
    ref_model = copy.deepcopy(fast_model)

    net, optimizer, ctx = setup_training(fast_model, cfg, "cpu")
    first_conv = next(p for p in net.parameters() if p.ndim == 4)
    assert first_conv.is_contiguous(memory_format=torch.channels_last)  # the fast path really is channels_last
    start = first_conv.detach().clone()
    decay = [p for p in ref_model.parameters() if p.ndim > 1]  # conv and linear weights
    no_decay = [p for p in ref_model.parameters() if p.ndim <= 1]  # BN scale/shift, biases
    ref_opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=True,
    )
    net.train()
    ref_model.train()

    fast_losses, ref_losses = [], []
    batches = bundle.train.epoch(0)
    for step in range(STEPS):
        images, labels = next(batches)
        assert images.is_contiguous(memory_format=torch.channels_last)
        lr = lr_at(step, cfg, len(bundle.train))
        set_lr(optimizer, lr)
        loss, _ = train_step(net, optimizer, images, labels, ctx)
        fast_losses.append(loss.item())
        ref_losses.append(_reference_step(ref_model, ref_opt, images.contiguous(), labels, lr, cfg.label_smoothing))

    torch.testing.assert_close(torch.tensor(fast_losses), torch.tensor(ref_losses), rtol=rtol, atol=0.0)
    # The weights moved (the test would pass vacuously at lr 0) and moved to the same place.
    assert (first_conv - start).abs().max() > 1e-3
    fast_w = torch.cat([p.detach().flatten() for p in net.parameters()])
    ref_w = torch.cat([p.detach().flatten() for p in ref_model.parameters()])
    relative = ((fast_w - ref_w).norm() / ref_w.norm()).item()
    assert relative < wtol


def test_graphed_step_matches_train_step():
    """--cuda-graph's step (warm-up, then static buffers; uncaptured on the CPU) trains exactly as train_step does.

    Learning rates that float32 holds exactly (the graph reads a float32 lr tensor), changed every step: a stale
    batch in the static buffers, an lr not reaching the captured update, or a lost clipping would move the weights.
    """
    torch.manual_seed(0)
    bundle = load_data("digits", batch_size=32, device="cpu", seed=0, val_size=0)
    cfg = build_config(
        "resnet20",
        "digits",
        device="cpu",
        precision="fp32",
        batch_size=32,
        grad_clip=1.0,
        label_smoothing=0.1,
        nesterov=True,
        cuda_graph=True,
    )
    model = create_model("resnet20", num_classes=10, in_channels=1)
    plain, plain_opt, ctx = setup_training(copy.deepcopy(model), cfg, "cpu")
    graphed_net, graphed_opt, _ = setup_training(model, cfg, "cpu")
    graphed = GraphedStep(graphed_net, graphed_opt, ctx, warmup=2)
    batches = bundle.train.epoch(0)
    for step in range(6):
        images, labels = next(batches)
        lr = 0.5 / 2**step
        set_lr(plain_opt, lr)
        set_lr(graphed_opt, lr)
        plain_loss, _ = train_step(plain, plain_opt, images, labels, ctx)
        graphed_loss, _ = graphed(images, labels)
        assert torch.equal(plain_loss, graphed_loss), step
    assert graphed.static is not None and graphed.calls == 6  # the last four steps ran from the static buffers
    assert all(isinstance(g["lr"], torch.Tensor) and g["lr"].item() == lr for g in graphed_opt.param_groups)
    for p, q in zip(plain.parameters(), graphed_net.parameters(), strict=True):
        assert torch.equal(p, q)


def test_cuda_graph_refuses_fp16_and_its_own_graphs():
    with pytest.raises(CnnzooError, match="fp16"):
        build_config("resnet20", "digits", cuda_graph=True, precision="fp16")
    with pytest.raises(CnnzooError, match="reduce-overhead"):
        build_config("resnet20", "digits", cuda_graph=True, compile=True, compile_mode="reduce-overhead")
    with pytest.raises(CnnzooError, match="fused"):
        build_config("resnet20", "digits", cuda_graph=True, fused=False)


def test_cuda_graph_run_resumes_exactly_and_matches_eager(exact_run, graphed_runs):
    """The trainer with --cuda-graph: an interrupted, resumed run (the graph rebuilt after its warm-up) equals the
    uninterrupted one bit for bit; it trains as the eager trainer does up to the float32 rounding of the lr; and its
    checkpoint holds plain float learning rates, so an eager run can resume it. (EXACT: EMA, mixup, cutmix and label
    smoothing on, so the mixed batches pass through the graph's static buffers too.)"""
    _, eager = exact_run
    full, cut = graphed_runs["full"], graphed_runs["cut"]
    assert cut["interrupted"]
    ckpt = graphed_runs["cut_checkpoint"]
    assert all(type(g["lr"]) is float for g in ckpt["optimizer"]["param_groups"])
    assert graphed_runs["resumed"]["test"] == full["test"]
    w_full = torch.load(graphed_runs["full_dir"] / "last.pt", weights_only=True)["model"]
    w_cut = torch.load(graphed_runs["cut_dir"] / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(w_full[k], w_cut[k]) for k in w_full)
    assert full["test"]["loss"] == pytest.approx(eager["test"]["loss"], rel=1e-4)
