"""cnnzoo.train.ema.EMA: AveragedModel's numbers and checkpoints, without a host synchronisation per update."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils._python_dispatch import TorchDispatchMode

from cnnzoo.train.ema import EMA


def small_net() -> nn.Module:
    """Conv + BN (running stats, num_batches_tracked) + linear: every kind of tensor an EMA averages."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    )


def train_steps(model: nn.Module, steps: int, seed: int) -> None:
    """A few SGD steps (changes the weights, the BN statistics and num_batches_tracked)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(steps):
        x = torch.randn(8, 3, 6, 6, generator=g)
        loss = nn.functional.cross_entropy(model(x), torch.randint(0, 5, (8,), generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()


def reference(model: nn.Module, decay: float) -> AveragedModel:
    """What engine.make_ema builds today."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def assert_same_state(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        if a[key].is_floating_point():
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)
        else:
            assert torch.equal(a[key], b[key]), (key, a[key], b[key])


@pytest.mark.parametrize("decay", [0.9, 0.999])
def test_matches_averaged_model(decay):
    model = small_net()
    ours, theirs = EMA(model, decay), reference(model, decay)
    for step in range(30):
        train_steps(model, 1, seed=step)
        ours.update_parameters(model)
        theirs.update_parameters(model)
    assert int(ours.n_averaged) == 30
    assert_same_state(ours.state_dict(), theirs.state_dict())
    # num_batches_tracked moved (30 forwards in the model, averaged and truncated as AveragedModel does).
    assert int(model[1].num_batches_tracked) == 30
    if decay == 0.9:
        assert 1 < int(ours.module[1].num_batches_tracked) < 30


def test_first_update_copies_the_model():
    model = small_net()
    ema = EMA(model, 0.999)
    train_steps(model, 3, seed=1)
    ema.update_parameters(model)
    for (key, mine), theirs in zip(ema.module.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs), key
    train_steps(model, 1, seed=2)
    ema.update_parameters()  # the model it was built from, by default
    w_ema, w_model = ema.module[0].weight, model[0].weight
    assert not torch.equal(w_ema, w_model)


def test_checkpoint_compatible_with_averaged_model():
    """An old checkpoint (an AveragedModel's state_dict, saved and loaded weights_only) resumes into EMA, and
    both then continue identically; EMA's own state_dict loads back into an AveragedModel."""
    model = small_net()
    old = reference(model, 0.95)
    for step in range(5):
        train_steps(model, 1, seed=step)
        old.update_parameters(model)
    buf = io.BytesIO()
    torch.save({"ema": old.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    assert "n_averaged" in ckpt["ema"] and all(k == "n_averaged" or k.startswith("module.") for k in ckpt["ema"])

    new = EMA(small_net(), 0.95)
    assert list(new.state_dict()) == list(ckpt["ema"])
    new.load_state_dict(ckpt["ema"])
    for step in range(5, 10):  # resumed: averages, not a first-update copy
        train_steps(model, 1, seed=step)
        new.update_parameters(model)
        old.update_parameters(model)
    assert int(new.n_averaged) == 10
    assert_same_state(new.state_dict(), old.state_dict())
    back = reference(small_net(), 0.95)
    back.load_state_dict(new.state_dict())
    assert_same_state(back.state_dict(), new.state_dict(), atol=0)


class _ScalarReads(TorchDispatchMode):
    """Counts reads of a tensor's value on the host (.item(), bool(t), int(t), a tensor used as a Python number):
    each one is a device synchronisation on a GPU and impossible inside a CUDA graph capture."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        return func(*args, **(kwargs or {}))


def test_update_reads_nothing_on_the_host():
    model = small_net()
    ours, theirs = EMA(model, 0.99), reference(model, 0.99)
    for _ in range(2):  # the first-update copy and a later average
        with _ScalarReads() as mine:
            ours.update_parameters(model)
        with _ScalarReads() as averaged:
            theirs.update_parameters(model)
        assert mine.reads == 0
        assert averaged.reads > 0  # what the EMA replaces: the check above can fail


def test_module_evaluates_and_forward_delegates():
    model = small_net()
    ema = EMA(model, 0.9)
    train_steps(model, 2, seed=0)
    ema.update_parameters(model)
    ema.eval()
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(ema(x), ema.module(x))
    assert torch.allclose(ema.module(x), model.eval()(x))


def test_rejects_a_model_of_another_shape():
    ema = EMA(small_net(), 0.9)
    with pytest.raises(ValueError, match="do not match"):
        ema.update_parameters(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="decay"):
        EMA(small_net(), 1.5)
