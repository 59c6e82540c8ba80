"""The papers' training augmentations (cnnzoo.data.augment) on tiny generated image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnzoo.data import DataError, load_data
from cnnzoo.data.augment import IMAGENET_PCA, PAPER_AUGMENTS, PCALighting, pixel_pca, scaled, train_transform
from cnnzoo.data.folders import decode_file
from cnnzoo.train.config import build_config


def make_folder(root: Path, size=(48, 40), per_class=4, classes=("cat", "dog")) -> Path:
    """``root/{train,test}/<class>/<i>.png`` of random colour images, ``size`` = (width, height)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 2)):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_folder(tmp_path / "tiny")


def test_scaled_sizes_are_relative_to_the_224_crop():
    assert [scaled(n, 224) for n in (256, 480, 512)] == [256, 480, 512]
    assert [scaled(n, 32) for n in (256, 480, 512)] == [37, 69, 73]


@pytest.mark.parametrize("name", ["standard", "none", *PAPER_AUGMENTS])
def test_each_augmentation_gives_a_crop_of_the_image_size(folder, name):
    files = sorted(str(p) for p in (folder / "train").rglob("*.png"))
    transform = train_transform(name, 32, pca=pixel_pca(files, 3))
    out = transform(decode_file(files[0], 3))  # 40x48 uint8
    assert out.shape == (3, 32, 32)
    # The PCA lighting adds a real-valued colour shift, so those three leave float32 on the 0..255 scale.
    assert out.dtype == (torch.float32 if name in ("alexnet", "vgg", "resnet") else torch.uint8)
    assert 0 < out.float().std() < 255


def test_pca_lighting_adds_the_stated_covariance():
    eigval, eigvec = IMAGENET_PCA
    lighting = PCALighting(eigval, eigvec, std=0.1)
    torch.manual_seed(0)
    first = lighting(torch.zeros(3, 1, 1, dtype=torch.uint8)).flatten()
    torch.manual_seed(0)
    assert torch.equal(first, lighting.shift())  # what forward adds is one draw of shift()
    shifts = torch.stack([lighting.shift() for _ in range(10000)])
    # shift = 255 * V (alpha * lam), alpha ~ N(0, 0.1^2 I)  =>  Cov = 255^2 * 0.01 * V diag(lam^2) V^T.
    expected = 255**2 * 0.01 * eigvec @ torch.diag(eigval**2) @ eigvec.T
    assert shifts.mean(0).abs().max() < 0.1  # zero mean (the per-pixel shift's std is about 5.5 on 0..255)
    torch.testing.assert_close(torch.cov(shifts.T), expected, rtol=0.05, atol=0.03 * expected.abs().max().item())


def test_pca_lighting_is_one_shift_per_image_and_zero_std_is_the_identity():
    image = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    same = PCALighting(*IMAGENET_PCA, std=0.0)(image)
    assert torch.equal(same, image.float())
    shifted = PCALighting(*IMAGENET_PCA, std=0.1)(image) - image.float()
    assert torch.allclose(shifted, shifted[:, :1, :1].expand_as(shifted))  # the same colour added to every pixel


def test_pixel_pca_finds_the_principal_colour_axis(tmp_path):
    # Pixels (t, t, 0) with t random: all the variance lies along (1, 1, 0) / sqrt(2), eigenvalue 2 var(t).
    rng = np.random.default_rng(1)
    (tmp_path / "a").mkdir()
    for i in range(6):
        t = rng.integers(0, 256, (20, 30), dtype=np.uint8)
        Image.fromarray(np.stack([t, t, np.zeros_like(t)], -1)).save(tmp_path / "a" / f"{i}.png")
    files = sorted(str(p) for p in (tmp_path / "a").glob("*.png"))
    eigval, eigvec = pixel_pca(files, 3, pixels=600)
    assert abs(abs(eigvec[:, 0] @ torch.tensor([1.0, 1.0, 0.0])) / 2**0.5 - 1) < 1e-4
    assert eigval[0] == pytest.approx(2 * (255**2 / 12) / 255**2, rel=0.1)  # 2 var(U{0..255}) in [0, 1] units
    assert eigval[1:].abs().max() < 1e-6 and torch.all(eigval[:-1] >= eigval[1:])


@pytest.mark.parametrize(("name", "top"), [("vgg", 512), ("resnet", 480)])
def test_scale_jittering_draws_the_shorter_side_from_the_papers_range(name, top):
    jitter = train_transform(name, 32).transforms[0]  # the shorter-side draw, before the crop
    image = torch.zeros(3, 40, 48, dtype=torch.uint8)
    torch.manual_seed(0)
    sides = []
    for _ in range(300):
        h, w = jitter(image).shape[-2:]
        assert abs(w / h - 48 / 40) < 0.05  # isotropic
        sides.append(h)
    lo, hi = scaled(256, 32), scaled(top, 32)
    assert lo <= min(sides) and max(sides) <= hi
    assert min(sides) <= lo + 2 and max(sides) >= hi - 2 and len(set(sides)) > (hi - lo) // 2  # spread over it


def test_googlenet_crops_8_to_100_percent_with_aspect_3_4_to_4_3():
    crop = train_transform("googlenet", 224).transforms[0]
    assert crop.scale == (0.08, 1.0) and crop.ratio == pytest.approx((3 / 4, 4 / 3))


def test_streamed_folder_trains_on_a_paper_augmentation_deterministically(tmp_path):
    root = make_folder(tmp_path / "big", size=(96, 80))  # over 64 px: streamed through DataLoader workers
    b = load_data(str(root), augment="vgg", image_size=32, batch_size=4, val_size=0, num_workers=0)
    assert b.info.get("streamed")
    x, y = next(b.train.epoch(0))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and torch.isfinite(x).all()
    again, _ = next(
        load_data(str(root), augment="vgg", image_size=32, batch_size=4, val_size=0, num_workers=0).train.epoch(0)
    )
    assert torch.equal(x, again)
    other, _ = next(b.train.epoch(1))
    assert not torch.equal(x, other)


def test_paper_augmentation_on_device_resident_data_is_refused_in_one_line(folder):
    with pytest.raises(DataError, match="--augment alexnet applies to image folders streamed") as e:
        load_data(str(folder), augment="alexnet", batch_size=2)  # 40x48 images: held on the device
    assert "\n" not in str(e.value)


def test_config_accepts_the_paper_names():
    assert build_config("resnet18", augment="resnet").augment == "resnet"
