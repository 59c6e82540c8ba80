"""AlexNet: ReLU, local response normalisation, overlapping pooling and dropout.

Krizhevsky, Sutskever, Hinton, "ImageNet Classification with Deep Convolutional Neural Networks", NeurIPS 2012.
(The one-tower form torchvision follows: Krizhevsky, "One weird trick for parallelizing convolutional neural
networks", 2014, arXiv:1404.5997.)

The paper's network (section 3.5, Figure 2): five convs (96 11x11/4, 256 5x5, 384 3x3, 384 3x3, 256 3x3) and three
FC layers (4096, 4096, classes); ReLU after every layer but the last (section 3.1); local response normalisation
(k=2, n=5, alpha=1e-4, beta=0.75) after the ReLU of conv1 and conv2 (section 3.3); overlapping 3x3 max pooling with
stride 2 after the LRNs and after conv5 (section 3.4); dropout 0.5 on the outputs of FC6 and FC7, i.e. on the
inputs of FC7 and FC8 (section 4.2).

Deliberate departures from the paper:

- ``alexnet_paper`` is one tower: the paper split conv2, conv4 and conv5 across two GPUs (each seeing half of the
  previous layer's maps). Joined, the layer has all 96 (resp. 384) input maps, which is how the network is usually
  drawn: 62,378,344 parameters and 1.14 GMACs at 1000 classes. ``alexnet_2tower_paper`` is the paper's two-tower
  network itself: ``groups=2`` in conv2, conv4 and conv5 (conv3 and the FC layers cross the GPUs), LRN within each
  tower's maps: 60,965,224 parameters and 0.72 GMACs (the BVLC Caffe reference's ``group: 2``). It is a registered
  name, not an option, so that ``cnnzoo models``, ``compare`` and ``train --model`` reach it.
- Input 227x227: the paper's "224x224" does not give its own 55x55 conv1 map with an 11x11/4 conv and no padding;
  227 does ((227 - 11) / 4 + 1 = 55).
- LRN follows the paper's equation as printed: alpha = 1e-4 multiplies the sum of squares over n = 5 maps. Which
  alpha the authors ran is an open question: cuda-convnet, the code they trained with, divides its ``scale``
  parameter by the window size, so if 1e-4 was the value in their layer file the effective coefficient was 2e-5, a
  5 times weaker normalisation. The BVLC Caffe reference reads it that way (its alpha = 1e-4 is divided by n).
  ``lrn(alpha=1e-4 / 5, ...)`` builds that reading.
- Initialisation as section 5: weights N(0, 0.01), biases 1 in conv2, conv4, conv5 and the hidden FC layers, 0
  elsewhere. Dropout on the outputs of FC6 and FC7 (section 4.2; the BVLC Caffe reference's order). No PCA colour
  augmentation, no 10-crop test: those are data and evaluation choices, not part of the model.
- ``alexnet`` is torchvision's layout (64-192-384-256-256 filters, no LRN, padding 2 in conv1, an adaptive average
  pool to 6x6, dropout before FC6 and FC7 rather than after) so torchvision's state dicts load strictly; PyTorch's
  default initialisation, as torchvision.
- ``alexnet_cifar`` (not in the paper) sizes the design for 32x32 images after Krizhevsky's own CIFAR-10 network
  (cuda-convnet "layers-18pct": 5x5 convs, 3x3/2 overlapping max pools, LRN): AlexNet's five convs with 64-192-384-
  256-256 filters (5x5 stride 1 for conv1 and conv2, 3x3 after), ReLU, LRN after conv1 and conv2, overlapping 3x3/2
  pools in ceil mode (32-16-8-4, and 28-14-7-3 for MNIST-size inputs), an adaptive average pool to 4x4, dropout 0.5
  and FC layers of 1024 (with 4096, FC6-FC8 would hold 93% of the parameters: 33.6M of 36.1M at 10 classes).
- ``in_channels`` replaces only the first conv's input channels.

Styles (``style``, the word every family uses): "paper", "torchvision", "cifar"; ``towers`` (1 or 2) applies to
"paper" only.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from cnnzoo.models._common import check_input, lrn
from cnnzoo.models.registry import register_model

PAPER = "Krizhevsky et al. 2012, ImageNet Classification with Deep Convolutional Neural Networks (NeurIPS 2012)"

Style = Literal["paper", "torchvision", "cifar"]


def _lrn(towers: int = 1) -> nn.Module:
    """Section 3.3: k = 2, n = 5, alpha = 1e-4 (on the sum, as the equation is printed), beta = 0.75."""
    return lrn(size=5, alpha=1e-4, beta=0.75, k=2.0, groups=towers)


def _features(style: Style, in_channels: int, towers: int) -> nn.Sequential:
    """The five convs with their ReLUs, LRNs and max pools, as each style draws them."""
    if style == "torchvision":
        return nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )  # fmt: skip
    if style == "paper":  # towers = 2: conv2, conv4, conv5 see only their own GPU's half of the maps (Figure 2)
        g = towers
        return nn.Sequential(
            nn.Conv2d(in_channels, 96, kernel_size=11, stride=4), nn.ReLU(inplace=True), _lrn(g),  # 227 -> 55
            nn.MaxPool2d(kernel_size=3, stride=2),  # 55 -> 27, overlapping (section 3.4)
            nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=g), nn.ReLU(inplace=True), _lrn(g),
            nn.MaxPool2d(kernel_size=3, stride=2),  # 27 -> 13
            nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=g), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=g), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # 13 -> 6
        )  # fmt: skip
    return nn.Sequential(  # cifar
        nn.Conv2d(in_channels, 64, kernel_size=5, padding=2), nn.ReLU(inplace=True), _lrn(),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),  # 32 -> 16 (28 -> 14)
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True), _lrn(),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),  # 16 -> 8 (14 -> 7)
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),  # 8 -> 4 (7 -> 3)
    )  # fmt: skip


def _classifier(style: Style, in_features: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    """FC6, FC7 (ReLU + dropout each), FC8.

    The paper (section 4.2) drops out the outputs of FC6 and FC7, as the BVLC Caffe reference does (fc6, relu6,
    drop6, fc7, relu7, drop7, fc8). torchvision moves each dropout before its layer (on the inputs of FC6 and FC7);
    its style keeps that order so that its state dicts (classifier.1/.4/.6) load.
    """
    if style == "torchvision":
        return nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(in_features, hidden), nn.ReLU(inplace=True),  # FC6
            nn.Dropout(p=dropout), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),  # FC7
            nn.Linear(hidden, num_classes),  # FC8
        )  # fmt: skip
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(p=dropout),  # FC6
        nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(p=dropout),  # FC7
        nn.Linear(hidden, num_classes),  # FC8
    )  # fmt: skip


def init_weights(model: AlexNet) -> None:
    """The paper's section 5 for style "paper": N(0, 0.01) weights; bias 1 in conv2, conv4, conv5, FC6 and FC7 (so
    their ReLUs start with positive input), 0 elsewhere. The other styles keep PyTorch's default initialisation, as
    torchvision's AlexNet does."""
    if model.style != "paper":
        return
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]  # conv1..5, FC6..8 in order
    for i, m in enumerate(layers):
        nn.init.normal_(m.weight, 0.0, 0.01)
        nn.init.constant_(m.bias, 1.0 if i in (1, 3, 4, 5, 6) else 0.0)


class AlexNet(nn.Module):
    """``features`` (convs, pools, LRN), ``avgpool``, ``classifier``; the styles differ only in their tables.

    ``cam_layer``: ``features``, whose output is the last conv stage's map after its max pool (6x6 at 227, 4x4 at
    32): the last layer that still has spatial positions for Grad-CAM. ``stages``: the three max pools.
    """

    cam_layer = "features"
    stages: tuple[str, ...]

    def __init__(
        self, name: str, *, style: Style, num_classes: int, in_channels: int, dropout: float = 0.5, towers: int = 1
    ) -> None:
        super().__init__()
        self.name, self.style, self.in_channels = name, style, in_channels
        self.features = _features(style, in_channels, towers)
        if style == "torchvision":
            # 63 px is the smallest input whose last max pool still has a 1x1 output: 63 -> 15 -> 7 -> 3 -> 1.
            self.min_size, self.exact_size = 63, None
            self.avgpool: nn.Module = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = _classifier(style, 256 * 6 * 6, 4096, num_classes, dropout)
        elif style == "paper":
            # No adaptive pool: FC6 takes exactly the 6x6x256 map of a 227x227 image, as in the paper.
            self.min_size, self.exact_size = 1, 227
            self.avgpool = nn.Identity()
            self.classifier = _classifier(style, 256 * 6 * 6, 4096, num_classes, dropout)
        else:
            # With ceil-mode 3x3/2 pools, 8 px is the smallest image whose last pool is not empty (8 -> 4 -> 2 -> 1).
            self.min_size, self.exact_size = 8, None
            self.avgpool = nn.AdaptiveAvgPool2d((4, 4))
            self.classifier = _classifier(style, 256 * 4 * 4, 1024, num_classes, dropout)
        self.stages = tuple(f"features.{i}" for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, name=self.name, in_channels=self.in_channels, min_size=self.min_size, exact_size=self.exact_size)
        # N x 3 x 227 x 227 (torchvision: 224 x 224, cifar: 32 x 32)
        x = self.features(x)
        # N x 256 x 6 x 6 (cifar: 4 x 4)
        x = self.avgpool(x)
        # N x 256 x 6 x 6 (cifar: 4 x 4)
        x = torch.flatten(x, 1)
        # N x 9216 (cifar: 4096)
        x = self.classifier(x)
        # N x num_classes
        return x


def _alexnet(name: str, style: Style, num_classes: int, in_channels: int, dropout: float, towers: int = 1) -> AlexNet:
    return AlexNet(name, style=style, num_classes=num_classes, in_channels=in_channels, dropout=dropout, towers=towers)


@register_model(family="alexnet", paper=PAPER)
def alexnet(*, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> AlexNet:
    """torchvision's AlexNet (one tower, 64-192-384-256-256, no LRN); min input 63x63."""
    return _alexnet("alexnet", "torchvision", num_classes, in_channels, dropout)


@register_model(family="alexnet", paper=PAPER, input_size=(3, 227, 227))
def alexnet_paper(*, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> AlexNet:
    """The paper's AlexNet as one tower (96-256-384-384-256, LRN, 3x3/2 pools), input 227x227; 1.14 GMACs."""
    return _alexnet("alexnet_paper", "paper", num_classes, in_channels, dropout)


@register_model(family="alexnet", paper=PAPER, input_size=(3, 227, 227))
def alexnet_2tower_paper(*, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> AlexNet:
    """The paper's two-tower AlexNet: conv2, conv4, conv5 and the LRNs split in two groups (Figure 2); 0.72 GMACs."""
    return _alexnet("alexnet_2tower_paper", "paper", num_classes, in_channels, dropout, towers=2)


@register_model(family="alexnet_cifar", paper=PAPER, input_size=(3, 32, 32))
def alexnet_cifar(*, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.5) -> AlexNet:
    """AlexNet sized for 32x32 (and 28x28) images; see the module docstring for the design and its source."""
    return _alexnet("alexnet_cifar", "cifar", num_classes, in_channels, dropout)
