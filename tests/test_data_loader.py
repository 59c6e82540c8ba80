"""The device-resident loader and the digits default: contract shapes, determinism, resume, DDP sharding."""

from __future__ import annotations

import pytest
import torch

from cnnzoo.data import BatchLoader, DataBundle, load_data
from cnnzoo.data.device_loader import DeviceLoader


def _loader(n=50, train=True, **kw) -> DeviceLoader:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % 5
    opts = dict(batch_size=4, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), train=train, seed=3)
    opts.update(kw)
    return DeviceLoader(images, labels, **opts)


def test_digits_bundle_follows_the_contract():
    b = load_data("digits", batch_size=16, eval_batch_size=100)
    assert isinstance(b, DataBundle) and b.name == "digits"
    assert b.classes == [str(i) for i in range(10)] and b.in_channels == 1 and b.image_size == 32
    for loader in (b.train, b.val, b.test):
        assert isinstance(loader, BatchLoader)
    # 1,797 images: 360 held out for test (stratified 20%), 10% of the remaining 1,437 for validation.
    assert (b.train.num_samples, b.val.num_samples, b.test.num_samples) == (1293, 144, 360)
    assert len(b.train) == 1293 // 16 and len(b.test) == 4  # training drops the last batch, evaluation keeps it
    x, y = next(b.train.epoch(0))
    assert x.shape == (16, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert sum(len(y) for _, y in b.test.epoch(0)) == 360
    # Normalised with the training split's statistics: roughly zero mean, unit variance on unaugmented data.
    xs = torch.cat([x for x, _ in b.val.epoch(0)])
    assert abs(xs.mean().item()) < 0.2 and 0.8 < xs.std().item() < 1.2


def test_digits_options_channels_size_val_subset():
    b = load_data("digits", batch_size=8, in_channels=3, image_size=48, val_size=0, subset=100, seed=1)
    assert b.in_channels == 3 and b.val.num_samples == 0 and len(b.val) == 0 and list(b.val.epoch(0)) == []
    assert b.train.num_samples == 100 and len(b.mean) == 3
    x, _ = next(b.train.epoch(0))
    assert x.shape == (8, 3, 48, 48) and x.is_contiguous(memory_format=torch.channels_last)
    # Grey to RGB repeats the channel, so the three channels are equal.
    assert torch.equal(x[:, 0], x[:, 1])


def test_same_seed_epoch_batch_gives_the_same_batch_and_epochs_differ():
    a, b = _loader(pad=2, flip=True, cutout=3), _loader(pad=2, flip=True, cutout=3)
    ea = list(a.epoch(0))
    eb = list(b.epoch(0))
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(ea, eb, strict=True))
    e1 = list(a.epoch(1))
    assert not torch.equal(torch.cat([y for _, y in ea]), torch.cat([y for _, y in e1]))
    assert not torch.equal(ea[0][0], e1[0][0])
    assert not torch.equal(ea[0][0], list(_loader(pad=2, flip=True, cutout=3, seed=4).epoch(0))[0][0])


def test_start_batch_resumes_identically():
    full = list(_loader(pad=2, flip=True, cutout=3).epoch(2))
    resumed = list(_loader(pad=2, flip=True, cutout=3).epoch(2, start_batch=5))
    assert len(resumed) == len(full) - 5
    for (x1, y1), (x2, y2) in zip(full[5:], resumed, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_augmentation_crops_with_zero_padding_and_flips():
    # Without augmentation an image comes back exactly (normalised); with it, shifted copies pad with black.
    plain = _loader(n=8, train=False, batch_size=8)
    x, _ = next(plain.epoch(0))
    raw = plain.images.permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(x * 0.25 + 0.5, raw)
    aug = _loader(n=8, batch_size=8, pad=2, flip=True)
    x, _ = next(aug.epoch(0))
    black = (0 - 0.5) / 0.25
    assert (x == black).any()  # some border rows/cols come from the zero padding
    # Every augmented image is a shifted (maybe mirrored) window of some original: check one pixel-exact.
    idx = aug.indices(0)[:8]
    src = aug.images.permute(0, 3, 1, 2)[idx].float() / 255
    x = x * 0.25 + 0.5
    ok = 0
    for i in range(8):
        for img in (src[i], src[i].flip(-1)):
            padded = torch.nn.functional.pad(img, (2, 2, 2, 2))
            windows = padded.unfold(1, 8, 1).unfold(2, 8, 1).permute(1, 2, 0, 3, 4)  # (5, 5, C, 8, 8)
            ok += bool(((windows - x[i]).abs().amax((-3, -2, -1)) < 1e-5).any())
    assert ok >= 8


def test_cutout_zeroes_a_square_to_the_mean():
    x, _ = next(_loader(n=8, batch_size=8, cutout=4).epoch(0))
    zero_pixels = (x == 0).all(1).sum((1, 2))  # per image: pixels where every channel is exactly the mean
    assert (zero_pixels >= 4).all() and (zero_pixels <= 16).all()


@pytest.mark.parametrize("world_size", [2, 3])
def test_ddp_shards_are_disjoint_and_equal(world_size):
    shards = [_loader(n=50, rank=r, world_size=world_size) for r in range(world_size)]
    seen = [s.indices(4) for s in shards]
    assert len({len(s) for s in seen}) == 1 and len(seen[0]) == len(shards[0]) * 4 == (50 // world_size) // 4 * 4
    union = torch.cat(seen)
    assert len(set(union.tolist())) == len(union)  # disjoint
    # Interleaved: the ranks' batch b together are exactly one process's batch b at world_size times the batch size,
    # augmented alike (crop, flip and cutout drawn for the global batch, each rank keeping its slice).
    single = _loader(n=50, batch_size=4 * world_size).indices(4)
    steps = torch.stack([s.view(-1, 4) for s in seen], 1).reshape(-1)
    assert torch.equal(steps, single)
    aug = dict(pad=2, flip=True, cutout=3)
    one = list(_loader(n=50, batch_size=4 * world_size, **aug).epoch(4))
    per_rank = [list(_loader(n=50, rank=r, world_size=world_size, **aug).epoch(4)) for r in range(world_size)]
    assert len(one) == len(per_rank[0])
    for b, (x, y) in enumerate(one):
        assert torch.equal(torch.cat([p[b][0] for p in per_rank]), x)
        assert torch.equal(torch.cat([p[b][1] for p in per_rank]), y)
    evals = [_loader(n=50, train=False, rank=r, world_size=world_size) for r in range(world_size)]
    covered = torch.cat([torch.cat([y for _, y in e.epoch(0)]) for e in evals])
    assert len(covered) == 50 and sum(e.num_samples for e in evals) == 50


@pytest.mark.parametrize("train", [True, False])
def test_both_loaders_share_one_shard_and_normalisation(tmp_path, train):
    """The streaming loader serves the same samples in the same order, in as many batches, as the device-resident one
    (one :class:`Shard` behind both), and normalises to the same values."""
    from cnnzoo.data.bundle import Shard
    from cnnzoo.data.stream import StreamLoader

    labels = torch.arange(23) % 5
    files = [str(tmp_path / f"{i}.png") for i in range(23)]  # never opened: only the order is compared
    opts = dict(batch_size=4, mean=(0.5,), std=(0.25,), train=train, seed=3, rank=1, world_size=2)
    device = DeviceLoader(torch.zeros(23, 1, 8, 8, dtype=torch.uint8), labels, **opts)
    stream = StreamLoader(files, labels, image_size=8, channels=1, num_workers=0, **opts)
    assert (len(device), device.num_samples) == (len(stream), stream.num_samples)
    assert torch.equal(device.indices(2), stream.indices(2))
    assert torch.equal(device.indices(2), Shard(23, 4, train, 3, 1, 2).indices(2))
    x = torch.full((1, 1, 2, 2), 191.25)  # (191.25 / 255 - 0.5) / 0.25 == 1
    assert torch.allclose(x * stream._scale + stream._shift, torch.ones(1)) and device._scale.shape == (1,)


def test_random_stream_tags_are_distinct_and_stable():
    """The tags are part of every run's numbers: renumbering one would silently change every past result."""
    from cnnzoo.data.bundle import Stream

    tags = {"PERMUTATION": 0, "AUGMENT": 1, "VAL_SPLIT": 2, "SUBSET": 3, "WORKERS": 4, "MIX": 7}
    assert {s.name: int(s) for s in Stream} == tags
