"""The training augmentations of the papers, as named per-sample transforms for streamed image folders.

``train_transform(name, image_size, ...)`` is what ``--augment NAME`` does to each training image (a uint8
``(C, H, W)`` tensor, in a DataLoader worker); normalisation happens later, batched on the device.

- ``standard``: ``RandomResizedCrop`` + flip (torchvision's ImageNet recipe); ``none``: the evaluation view.
- ``alexnet`` (Krizhevsky et al. 2012, section 4.1): the shorter side resized to 256 and the central 256x256 kept,
  random 224x224 crops and their horizontal reflections, then the PCA colour augmentation (:class:`PCALighting`).
- ``vgg`` (Simonyan & Zisserman 2015, section 3.1): scale jittering, the shorter side S drawn uniformly from
  [256, 512] per image, a random 224 crop, flip and the "random RGB colour shift" of Krizhevsky et al. (the same
  PCA lighting).
- ``googlenet`` (Szegedy et al. 2015, section 6): crops of 8% to 100% of the area with aspect ratio in [3/4, 4/3]
  (``RandomResizedCrop``'s defaults), flip, and "photometric distortions" after Howard (2013). The paper gives no
  values: ``ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4)`` are fb.resnet.torch's. Not done: its
  random choice of interpolation method per image (the paper says it was used "in conjunction with other changes").
- ``resnet`` (He et al. 2016, section 3.4): the shorter side drawn from [256, 480], a random 224 crop, flip, and
  "the standard color augmentation in [21]" (Krizhevsky's PCA lighting). The paper's "per-pixel mean subtracted"
  is done as everywhere else in cnnzoo and in torchvision: the per-channel ImageNet mean and std, on the device.

Sizes are relative to the crop: every paper length L (256, 480, 512) becomes ``round(L * image_size / 224)``, so
``--image-size 32`` jitters the shorter side in [37, 73] for ``vgg`` and 224 keeps the papers' numbers.

PCA lighting ("fancy PCA"): to every pixel add ``V @ (alpha * lam)``, ``alpha ~ N(0, std^2)`` per image and
component, ``std = 0.1``, with ``V``, ``lam`` the eigenvectors and eigenvalues of the channels' covariance of pixel
values in [0, 1] (the scale of ImageNet's published values; the shift is multiplied by 255 on our uint8 scale).
:func:`pixel_pca` computes them from a seeded sample of the training images (``PCA_IMAGES`` images,
``PCA_PIXELS`` random pixels each); :data:`IMAGENET_PCA` holds ImageNet's (fb.resnet.torch / Caffe). The output
is float32 on the 0..255 scale, not rounded or clipped (the paper adds the shift to the raw values), so the loader's
batches are float32 for these three augmentations instead of uint8.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from cnnzoo.data.bundle import PAPER_AUGMENTS  # noqa: F401 (one home: bundle.py; imported from here too)
from cnnzoo.data.folders import decode_file

LIGHTING_STD = 0.1  # Krizhevsky et al. 2012, section 4.1: alpha ~ N(0, 0.1)
PCA_IMAGES, PCA_PIXELS = 256, 1000  # the sample pixel_pca takes: images, then random pixels from each
# ImageNet's RGB eigenvalues (pixel values in [0, 1]) and eigenvectors (columns), as fb.resnet.torch and Caffe.
IMAGENET_PCA = (
    torch.tensor([0.2175, 0.0188, 0.0045]),
    torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]),
)


def scaled(length: int, image_size: int) -> int:
    """A paper length defined at 224-px crops (256, 480, 512) for crops of ``image_size``."""
    return round(length * image_size / 224)


class PCALighting(v2.Transform):
    """Krizhevsky et al.'s colour augmentation: add ``V @ (alpha * eigval)``, alpha ~ N(0, std^2), to every pixel.

    ``eigval`` (C,) and ``eigvec`` (C, C) (columns are the components) are of pixel values in [0, 1]; the input is a
    uint8 or float image on the 0..255 scale, the output float32 on that scale. ``std = 0`` returns the image as is.
    """

    def __init__(self, eigval: torch.Tensor, eigvec: torch.Tensor, std: float = LIGHTING_STD) -> None:
        super().__init__()
        self.eigval, self.eigvec, self.std = eigval.float(), eigvec.float(), float(std)

    def shift(self) -> torch.Tensor:
        """One draw of the per-channel shift (C,), on the 0..255 scale (torch's global RNG, seeded per sample)."""
        alpha = torch.randn(len(self.eigval)) * self.std
        return 255.0 * (self.eigvec @ (alpha * self.eigval))

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.std == 0:
            return image.float()
        return image.float() + self.shift().view(-1, 1, 1)


def pixel_pca(
    files: list[str], channels: int, *, images: int = PCA_IMAGES, pixels: int = PCA_PIXELS, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors (columns) of the channel covariance of a training set's pixels.

    A seeded sample: ``images`` files chosen at random, ``pixels`` random pixels from each (256 x 1,000 = 256k
    pixels by default; the covariance of 3 channels is then good to well under 1%), values scaled to [0, 1].
    """
    g = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(files), generator=g)[:images].tolist()
    samples = []
    for i in chosen:
        x = decode_file(files[i], channels).flatten(1)  # (C, H * W) uint8
        samples.append(x[:, torch.randint(x.shape[1], (pixels,), generator=g)].double() / 255.0)
    values = torch.cat(samples, 1)
    eigval, eigvec = torch.linalg.eigh(torch.cov(values))
    order = eigval.argsort(descending=True)
    return eigval[order].clamp_min(0).float(), eigvec[:, order].float()


def centre_square(side: int, crop: int | None = None) -> v2.Transform:
    """Shorter side resized to ``side``, then the centre ``crop`` x ``crop`` square (default: side x side)."""
    return v2.Compose([v2.Resize(side, antialias=True), v2.CenterCrop(crop or side)])


def eval_transform(image_size: int) -> v2.Transform:
    """The single centre view: shorter side to image_size * 256 / 224, centre image_size x image_size crop."""
    return centre_square(scaled(256, image_size), image_size)


def train_transform(
    name: str, image_size: int, *, pca: tuple[torch.Tensor, torch.Tensor] | None = None
) -> v2.Transform:
    """The per-sample training transform of ``--augment name`` for crops of ``image_size`` (module docstring).

    ``pca``: (eigval, eigvec) for the lighting of ``alexnet``, ``vgg`` and ``resnet`` (default: ImageNet's).
    """
    s = image_size
    flip = v2.RandomHorizontalFlip()
    if name == "none":
        return eval_transform(s)
    if name == "standard":
        return v2.Compose([v2.RandomResizedCrop(s, antialias=True), flip])
    if name == "googlenet":
        crop = v2.RandomResizedCrop(s, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), antialias=True)
        return v2.Compose([crop, flip, v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4)])
    lighting = PCALighting(*(pca if pca is not None else IMAGENET_PCA))
    if name == "alexnet":  # a fixed 256x256 centre square, then random crops of it
        return v2.Compose([centre_square(scaled(256, s)), v2.RandomCrop(s), flip, lighting])
    if name in ("vgg", "resnet"):
        top = 512 if name == "vgg" else 480
        jitter = v2.RandomShortestSize(list(range(scaled(256, s), scaled(top, s) + 1)), antialias=True)
        return v2.Compose([jitter, v2.RandomCrop(s), flip, lighting])
    raise ValueError(f"unknown augmentation {name!r}")


def uses_pca(name: str) -> bool:
    """Whether ``--augment name`` needs the training set's pixel PCA."""
    return name in ("alexnet", "vgg", "resnet")


# --- torchvision's classification reference: automatic augmentation policies and random erasing ---------------------


def reference_extras(auto_augment: str | None, random_erase: float, mean: tuple[float, ...]) -> list[v2.Transform]:
    """What ``--auto-augment`` and ``--random-erase`` add after ``--augment``'s transform, as torchvision's
    classification reference does (``references/classification/presets.py``, ``ClassificationPresetTrain``): the
    policy after the crop and flip, random erasing last. Both on the uint8 image, per sample.

    - ``randaugment``: RandAugment (Cubuk et al. 2020), 2 ops at magnitude 9 (the reference's ``--ra-magnitude``);
    - ``trivialaugment``: TrivialAugmentWide (Muller & Hutter 2021);
    - ``autoaugment``: AutoAugment's ImageNet policy (Cubuk et al. 2019);
    - random erasing (Zhong et al. 2020) of 2-33% of the area with probability ``random_erase``. The reference erases
      the normalised tensor with 0, that is with the mean colour; here, before normalisation, with the ``mean``
      colour on the 0..255 scale: the same pixels.

    Interpolation is bilinear, the reference's default (torchvision's policies default to nearest).
    """
    bilinear = v2.InterpolationMode.BILINEAR
    policies = {
        "randaugment": lambda: v2.RandAugment(interpolation=bilinear),
        "trivialaugment": lambda: v2.TrivialAugmentWide(interpolation=bilinear),
        "autoaugment": lambda: v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=bilinear),
    }
    if auto_augment is not None and auto_augment not in policies:
        raise ValueError(f"unknown automatic augmentation {auto_augment!r}")
    extras = [policies[auto_augment]()] if auto_augment else []
    if random_erase > 0:
        extras.append(v2.RandomErasing(p=random_erase, value=[round(255 * m) for m in mean]))
    return extras
