"""The named datasets: ``digits`` (bundled, the offline default), ``cifar10``/``cifar100``, ``mnist``/``fashion-mnist``.

Each source returns a :class:`Decoded`: the train and test splits as uint8 tensors ``(N, C, H, W)`` in the
dataset's native channels, plus what ``cnnzoo data`` reports. Splitting off validation, channel conversion and
normalisation happen in :func:`cnnzoo.data.load.load_data`, the same for every source.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

DIGITS_TEST_FRACTION = 0.2  # scikit-learn's digits has no test split; we hold out a fixed, stratified 20%
DIGITS_SPLIT_SEED = 0  # fixed, not the run's seed: every run reports on the same test images


@dataclass
class Decoded:
    """A dataset decoded to uint8, before validation is carved from its training split."""

    name: str
    classes: list[str]
    train_images: torch.Tensor  # uint8 (N, C, H, W)
    train_labels: torch.Tensor  # int64 (N,)
    test_images: torch.Tensor
    test_labels: torch.Tensor
    flip: bool = True  # whether horizontal flips preserve the class (not for digits)
    default_val: int | float = 0.1  # images (int) or fraction of the training split (float)
    info: dict = field(default_factory=dict)


def load_digits() -> Decoded:
    """scikit-learn's bundled handwritten digits (UCI optdigits test set: 1,797 8x8 images of 0..9, no download).

    Pixel values 0..16 become uint8 0..255; the 8x8 images are upsampled once to 32x32 (bilinear) so the CIFAR nets
    run on them unchanged. The test split is a stratified 20% (360 images) chosen with a fixed seed.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    x = torch.from_numpy(bunch.images).float().unsqueeze(1) * (255.0 / 16.0)  # (1797, 1, 8, 8) in [0, 255]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8)
    y = torch.from_numpy(bunch.target).long()
    train_idx, test_idx = train_test_split(
        torch.arange(len(y)).numpy(), test_size=DIGITS_TEST_FRACTION, stratify=y.numpy(), random_state=DIGITS_SPLIT_SEED
    )
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return Decoded(
        name="digits",
        classes=[str(d) for d in range(10)],
        train_images=x[train_idx],
        train_labels=y[train_idx],
        test_images=x[test_idx],
        test_labels=y[test_idx],
        flip=False,
        info={
            "source": "scikit-learn load_digits (bundled), 8x8 upsampled to 32x32",
            "test_split": f"stratified {DIGITS_TEST_FRACTION:.0%} of the 1,797 images, fixed seed {DIGITS_SPLIT_SEED}",
            "sizes": {"8x8": len(y)},
            "modes": {"L": len(y)},
        },
    )
