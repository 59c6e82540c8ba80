"""Issue 7's correctness guard: the fast path must train the same model as a plain fp32 eager loop.

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
from cnnzoo.train.config import build_config
from cnnzoo.train.engine import lr_at, set_lr, setup_training, train_step

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
    cfg = build_config("resnet20", "digits", recipe="fast", device="cpu", precision=precision, channels_last=True,
                       batch_size=64, epochs=4)  # fmt: skip
    fast_model = create_model("resnet20", num_classes=10, in_channels=1)
    ref_model = copy.deepcopy(fast_model)

    net, optimizer, ctx = setup_training(fast_model, cfg, "cpu")
    first_conv = next(p for p in net.parameters() if p.ndim == 4)
    assert first_conv.is_contiguous(memory_format=torch.channels_last)  # the fast path really is channels_last
    start = first_conv.detach().clone()
    decay = [p for p in ref_model.parameters() if p.ndim > 1]  # conv and linear weights
    no_decay = [p for p in ref_model.parameters() if p.ndim <= 1]  # BN scale/shift, biases
    ref_opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}],
                              lr=cfg.lr, momentum=cfg.momentum, nesterov=True)  # fmt: skip
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
