"""The papers' test protocols for ``cnnzoo eval RUN --protocol NAME``: softmax probabilities averaged over views.

- ``center``: the single centre view (shorter side to image_size * 256 / 224, centre crop): what training selects
  models on and what ``report.json`` holds.
- ``ten-crop`` (Krizhevsky et al. 2012, section 4.1; He et al. 2016, section 3.4 "the standard 10-crop testing"):
  the shorter side to 256, the central 256x256 square, its four corner and centre 224 patches and their mirror
  images (``v2.FiveCrop`` and their reflections).
- ``multi-scale`` (Simonyan & Zisserman 2015, sections 3.2 and 4.2): the whole image with its shorter side Q in
  {256, 384, 512} (their Q for nets trained with S in [256, 512]) and its mirror image, evaluated densely (fully
  convolutionally: the class score map averaged over positions), the 6 posteriors averaged. One image at a time,
  since the whole images differ in shape. :func:`dense_model` says which models allow it.
- ``multi-crop`` (Szegedy et al. 2015, section 6): the shorter side to 256, 288, 320 and 352; the left, centre and
  right (or top, centre, bottom) squares; of each, the four corner and centre 224 crops and the square resized to
  224, and the mirror images of all: 4 x 3 x 6 x 2 = 144 views. Exactly the paper's crops; what is not reproduced is
  its 7-model ensemble (one model here) and the averaging "over all the individual classifiers" beyond that.

Sizes scale with the run's image size as in :mod:`cnnzoo.data.augment` (``round(L * image_size / 224)``).
Protocols other than ``center`` read the split's files again, so they apply to streamed image folders (images over
64 px); data held on the device (digits, CIFAR) is evaluated on its own single view.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from cnnzoo.data.augment import centre_square, scaled
from cnnzoo.data.folders import decode_file
from cnnzoo.errors import CnnzooError, InputShapeError

PROTOCOLS = ("center", "ten-crop", "multi-scale", "multi-crop")
VGG_SCALES = (256, 384, 512)  # Simonyan & Zisserman 2015, section 4.2: Q = {S_min, (S_min + S_max) / 2, S_max}
GOOGLENET_SCALES = (256, 288, 320, 352)  # Szegedy et al. 2015, section 6


def ten_crop(image_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """(C, H, W) -> (10, C, s, s): the 256x256 centre square's corners and centre, then view i + 5 = view i mirrored.

    The mirrors are the patches' own reflections (AlexNet's "horizontal reflections" of the five patches), not
    ``v2.TenCrop``'s crops of the reflected square, which differ by a pixel when 256 - 224 is odd at small sizes.
    """
    crops = v2.Compose([centre_square(scaled(256, image_size)), v2.FiveCrop(image_size)])

    def views(image: torch.Tensor) -> torch.Tensor:
        five = torch.stack(crops(image))
        return torch.cat([five, five.flip(-1)])

    return views


def multi_crop(image_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """(C, H, W) -> (144, C, s, s): GoogLeNet's 4 scales x 3 squares x (5 crops + the whole square) x 2 mirrors."""

    def views(image: torch.Tensor) -> torch.Tensor:
        out = []
        for q in GOOGLENET_SCALES:
            x = TF.resize(image, scaled(q, image_size), antialias=True)
            h, w = x.shape[-2:]
            side, long = min(h, w), max(h, w)
            for start in (0, (long - side) // 2, long - side):  # left, centre, right (or top, centre, bottom)
                square = TF.crop(x, start, 0, side, side) if h > w else TF.crop(x, 0, start, side, side)
                crops = [*TF.five_crop(square, image_size), TF.resize(square, [image_size, image_size], antialias=True)]
                out += crops + [c.flip(-1) for c in crops]
        return torch.stack(out)

    return views


def multi_scale(image_size: int) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """(C, H, W) -> one (2, C, h, w) tensor per scale Q: the whole image, shorter side Q, and its mirror image."""

    def views(image: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for q in VGG_SCALES:
            x = TF.resize(image, scaled(q, image_size), antialias=True)
            out.append(torch.stack([x, x.flip(-1)]))
        return out

    return views


class DenseHead(nn.Module):
    """A VGG/AlexNet classifier as convolutions: FC6 as a k x k conv, FC7 and FC8 as 1x1 (VGG section 3.2).

    ``forward`` returns the class score map averaged over positions. A feature map smaller than k x k is first
    average-pooled to k x k by the model's own adaptive pool (what its plain forward does there).
    """

    def __init__(self, features: nn.Module, classifier: nn.Sequential, channels: int) -> None:
        super().__init__()
        linears = [m for m in classifier if isinstance(m, nn.Linear)]
        self.k = round((linears[0].in_features // channels) ** 0.5)  # FC6 reads a k x k x channels map
        self.features, self.pool = features, nn.AdaptiveAvgPool2d(self.k)
        layers = []
        for m in classifier:
            if isinstance(m, nn.Linear):
                k, cin = (self.k, channels) if m is linears[0] else (1, m.in_features)
                conv = nn.Conv2d(cin, m.out_features, k).to(m.weight.device)
                with torch.no_grad():  # flatten order of (C, k, k) is what view() undoes
                    conv.weight.copy_(m.weight.view(m.out_features, cin, k, k))
                    conv.bias.copy_(m.bias)
                layers.append(conv)
            elif not isinstance(m, nn.Dropout):  # dropout is the identity in evaluation
                layers.append(m)
        self.head = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        if min(f.shape[-2:]) < self.k:
            f = self.pool(f)
        return self.head(f).mean((2, 3))


def dense_model(model: nn.Module, probe_size: int) -> nn.Module:
    """``model`` evaluated fully convolutionally on any image size, or a :class:`CnnzooError` saying why not.

    - Global-average-pooled nets (ResNet, plain, GoogLeNet in torchvision's layout, the CIFAR forms of VGG and
      GoogLeNet): the model itself: its linear head after the global average equals the averaged score map.
    - VGG and AlexNet (``features`` + pool + FC ``classifier``): :class:`DenseHead`. Their adaptive pool accepts any
      size but is not dense evaluation (it pools the map to 7x7 / 6x6 before the FC layers), hence the conversion.
    - Nets that take one size only (``googlenet_paper``: 224 px for its auxiliary heads' FC layers) cannot.
    """
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Sequential) and hasattr(model, "features"):
        convs = [m for m in model.features.modules() if isinstance(m, nn.Conv2d)]
        return DenseHead(model.features, classifier, convs[-1].out_channels).eval()
    pool = getattr(model, "avgpool", None)
    if isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size in (1, (1, 1)):
        probe = torch.zeros(1, getattr(model, "in_channels", 3), probe_size + 32, probe_size + 32)
        try:  # does its forward accept another size (input checks), e.g. googlenet_paper does not
            with torch.no_grad():
                model(probe.to(next(model.parameters()).device))
        except InputShapeError as e:
            raise CnnzooError(f"--protocol multi-scale needs a model that accepts any image size: {e}") from None
        return model
    raise CnnzooError(
        f"--protocol multi-scale: {type(model).__name__} has neither a global average pool nor a "
        "features/classifier layout to evaluate densely"
    )


class _Views(Dataset):
    """Image files -> (views of the protocol, label)."""

    def __init__(self, files: list[str], labels: torch.Tensor, channels: int, views: Callable) -> None:
        self.files, self.labels, self.channels, self.views = files, labels, channels, views

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return self.views(decode_file(self.files[i], self.channels)), self.labels[i]


def average_probs(model: nn.Module, views: torch.Tensor | list[torch.Tensor], normalise: Callable) -> torch.Tensor:
    """Softmax probabilities averaged over the views of a batch of images.

    ``views``: uint8 (N, V, C, s, s) (ten-crop, multi-crop; one view at a time through the model) or, for
    multi-scale, a list of (N, V, C, h, w) tensors, one per scale. Returns (N, classes) float32.
    """
    groups = views if isinstance(views, list) else [views]
    total, count = None, 0
    for group in groups:
        for v in range(group.shape[1]):
            p = model(normalise(group[:, v])).float().softmax(1)
            total = p if total is None else total + p
            count += 1
    return total / count


def evaluate_files(
    model: nn.Module,
    files: list[str],
    labels: torch.Tensor,
    protocol: str,
    *,
    image_size: int,
    channels: int,
    mean,
    std,
    num_classes: int,
    device: torch.device,
    batch_size: int = 32,
    num_workers: int = 2,
    autocast=None,
    memory_format=torch.channels_last,
) -> dict:
    """Loss (of the averaged probabilities), top-1, top-5 and per-class accuracy of ``model`` on image files.

    ``batch_size``: images per batch (ten-crop; multi-crop takes a 16th of it, multi-scale one at a time).
    """
    if protocol not in PROTOCOLS[1:]:
        raise CnnzooError(f"unknown protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    model.eval()
    if protocol == "multi-scale":  # whole images differ in shape: one at a time
        model, views, batch_size = dense_model(model, image_size), multi_scale(image_size), 1
    elif protocol == "multi-crop":  # 144 views: 22 MB of uint8 per 224-px image through the workers' pipes
        views, batch_size = multi_crop(image_size), max(1, batch_size // 16)
    else:
        views = ten_crop(image_size)
    mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)

    def normalise(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        return (x.float() / 255.0 - mean_t) / std_t

    loader = DataLoader(
        _Views(files, labels, channels, views), batch_size=batch_size, num_workers=num_workers, collate_fn=_collate
    )
    k = min(5, num_classes)
    nll, hits1, hits5, cm = 0.0, 0, 0, torch.zeros(num_classes, num_classes, dtype=torch.long)
    with torch.no_grad(), autocast() if autocast else torch.autocast(device.type, enabled=False):
        for batch, y in loader:
            probs = average_probs(model, batch, normalise).cpu()
            top = probs.topk(k, dim=1).indices
            nll += F.nll_loss(probs.clamp_min(1e-12).log(), y, reduction="sum").item()
            hits1 += (top[:, 0] == y).sum().item()
            hits5 += (top == y[:, None]).any(1).sum().item()
            cm += torch.bincount(y * num_classes + top[:, 0], minlength=num_classes**2).view_as(cm)
    n = len(files)
    per_class = (cm.diagonal() / cm.sum(1).clamp_min(1)).tolist()
    return {"loss": nll / n, "top1": hits1 / n, "top5": hits5 / n, "n": n, "per_class": per_class}


def _collate(items):
    """Stack fixed-size views; keep multi-scale's per-scale tensors as a list of (N, V, C, h, w) stacks."""
    views, labels = zip(*items, strict=True)
    labels = torch.stack(list(labels))
    if isinstance(views[0], list):
        return [torch.stack([v[i] for v in views]) for i in range(len(views[0]))], labels
    return torch.stack(list(views)), labels


def split_files(cfg, split: str) -> tuple[list[str], torch.Tensor]:
    """The image files and labels of a run's ``split`` (test or val, carved as training carved it)."""
    from cnnzoo.data.folders import Streamed
    from cnnzoo.data.load import carve, decode

    if split not in ("test", "val"):
        raise CnnzooError(f"--protocol applies to the test and val splits, not {split!r}")
    d = decode(cfg.data, data_dir=cfg.data_dir)
    if not isinstance(d, Streamed):
        raise CnnzooError(
            f"--protocol applies to image folders streamed from disk (images over 64 px); {cfg.data} "
            "is held on the device and evaluated on its single view: use --protocol center"
        )
    if split == "test":
        return d.test_files, d.test_labels
    val_size = d.default_val if cfg.val_size is None else cfg.val_size
    val_size = int(val_size) if val_size >= 1 else val_size
    idx = carve(len(d.train_files), val_size, cfg.seed)[1]
    return [d.train_files[i] for i in idx.tolist()], d.train_labels[idx]
