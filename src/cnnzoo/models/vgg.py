"""VGG: very deep networks of stacked 3x3 convolutions.

Simonyan, Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015,
arXiv:1409.1556.

Table 1 of the paper, configurations A (11 weight layers), B (13), D (16) and E (19): stacks of 3x3 convs with
stride 1 and padding 1 (so the map size is kept), each followed by ReLU, with 2x2 max pooling of stride 2 between
stages; channels 64-128-256-512-512; then FC-4096, FC-4096, FC-classes with dropout 0.5 after the first two FC layers
(section 3.1). ``CFGS`` below is that table: numbers are conv output channels, "M" a max pool.

Deliberate departures from the paper:

- Layout and attribute names are torchvision's (``features``, ``avgpool``, ``classifier``), so torchvision's state
  dicts load strictly. torchvision adds an adaptive average pool to 7x7 before the classifier, so inputs other than
  224x224 work (at 224 it is the identity).
- ``vgg*_bn`` add batch norm after every conv (Ioffe & Szegedy 2015); not in the paper.
- Every VGG here (plain, ``_bn`` and ``_cifar``) is initialised as torchvision's: Kaiming-normal (fan_out) convs, bias
  0, N(0, 0.01) FC layers. The paper instead trained configuration A from N(0, 0.01) and initialised the deeper nets'
  first four convs and last three FC layers from it (section 3.1), noting afterwards that Glorot's initialisation
  would have done without the staging.
- Configurations A-LRN and C (1x1 convs) of Table 1 are not built.
- ``vgg*_cifar`` (not in the paper) are the common CIFAR adaptation: the same conv stacks with batch norm, the max
  pools in ``ceil_mode`` so 28x28 inputs survive five halvings (28-14-7-4-2-1; 32x32 gives the same 1x1), and a
  single linear classifier 512 -> classes instead of the three FC layers (at 1x1 there is nothing for FC-4096 to
  add but 33M parameters).
- ``in_channels`` replaces only the first conv's input channels.

Styles (``style``): "torchvision" (the ImageNet nets) and "cifar".
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from cnnzoo.models._common import check_input
from cnnzoo.models.registry import register_model

PAPER = (
    "Simonyan & Zisserman 2015, Very Deep Convolutional Networks for Large-Scale Image Recognition "
    "(ICLR 2015, arXiv:1409.1556)"
)

Style = Literal["torchvision", "cifar"]

# Table 1: conv output channels, "M" = 2x2 max pool with stride 2.
CFGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],  # vgg11
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],  # vgg13
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],  # vgg16
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def make_layers(
    cfg: list[int | str], *, in_channels: int = 3, batch_norm: bool = False, ceil_mode: bool = False
) -> nn.Sequential:
    """The conv stack of one configuration: [conv3x3 (+BN) + ReLU]* with max pools where ``cfg`` says "M"."""
    layers: list[nn.Module] = []
    channels = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=ceil_mode))
            continue
        conv = nn.Conv2d(channels, int(v), kernel_size=3, padding=1)
        layers += [conv, nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)] if batch_norm else [conv, nn.ReLU(inplace=True)]
        channels = int(v)
    return nn.Sequential(*layers)


def init_weights(model: nn.Module) -> None:
    """torchvision's VGG initialisation, for every VGG here (not the paper's staged one; see the module docstring):
    Kaiming-normal convs (fan_out, ReLU; He et al. 2015), bias 0; BN weight 1, bias 0; FC weights N(0, 0.01), bias 0.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class VGG(nn.Module):
    """A VGG net: ``features`` (the conv stack), ``avgpool``, ``classifier``.

    Style "torchvision": three FC layers on a 7x7x512 map. Style "cifar": one linear layer on the 512-d global
    average of the last map.

    ``cam_layer``: the ReLU of the last conv layer, before the fifth max pool: the layer Grad-CAM reads in VGG-16
    (Selvaraju et al. 2017, "conv5_3", 14x14 at 224). At 32 px that map is 2x2, where the pooled ``features``
    output would leave one position and a uniform map. ``stages``: the five max pools, the block boundaries of
    Table 1.
    """

    cam_layer: str
    stages: tuple[str, ...]

    def __init__(
        self,
        name: str,
        cfg: list[int | str],
        *,
        style: Style,
        num_classes: int,
        in_channels: int,
        batch_norm: bool,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.name, self.style, self.in_channels = name, style, in_channels
        cifar = style == "cifar"
        self.features = make_layers(cfg, in_channels=in_channels, batch_norm=batch_norm, ceil_mode=cifar)
        if cifar:
            # PyTorch's ceil-mode pools accept even 1 px, but below 17 px the fifth pool's input, ceil(H / 16), is a
            # single pixel with nothing left to pool: 17 is the smallest size at which all five pools do their job.
            self.min_size = 17
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.classifier: nn.Module = nn.Linear(512, num_classes)
        else:
            self.min_size = 32  # five 2x2/2 floor pools: below 32 px the last map is empty
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=dropout),  # FC6
                nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=dropout),  # FC7
                nn.Linear(4096, num_classes),  # FC8
            )  # fmt: skip
        self.stages = tuple(f"features.{i}" for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d))
        last_relu = max(i for i, m in enumerate(self.features) if isinstance(m, nn.ReLU))
        self.cam_layer = f"features.{last_relu}"
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, name=self.name, in_channels=self.in_channels, min_size=self.min_size)
        # N x 3 x 224 x 224 (cifar: N x 3 x 32 x 32)
        x = self.features(x)
        # N x 512 x 7 x 7 (cifar: N x 512 x 1 x 1)
        x = self.avgpool(x)
        # N x 512 x 7 x 7 (cifar: N x 512 x 1 x 1)
        x = torch.flatten(x, 1)
        # N x 25088 (cifar: N x 512)
        x = self.classifier(x)
        # N x num_classes
        return x


def _vgg(name: str, letter: str, *, batch_norm: bool, **kwargs) -> VGG:
    return VGG(name, CFGS[letter], style="torchvision", batch_norm=batch_norm, **kwargs)


def _cifar_vgg(name: str, letter: str, **kwargs) -> VGG:
    return VGG(name, CFGS[letter], style="cifar", batch_norm=True, **kwargs)


@register_model(family="vgg", paper=PAPER)
def vgg11(*, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> VGG:
    """VGG-11, configuration A."""
    return _vgg("vgg11", "A", batch_norm=False, num_classes=num_classes, in_channels=in_channels, dropout=dropout)


@register_model(family="vgg", paper=PAPER)
def vgg13(*, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> VGG:
    """VGG-13, configuration B."""
    return _vgg("vgg13", "B", batch_norm=False, num_classes=num_classes, in_channels=in_channels, dropout=dropout)


@register_model(family="vgg", paper=PAPER)
def vgg16(*, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> VGG:
    """VGG-16, configuration D."""
    return _vgg("vgg16", "D", batch_norm=False, num_classes=num_classes, in_channels=in_channels, dropout=dropout)


@register_model(family="vgg", paper=PAPER)
def vgg19(*, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> VGG:
    """VGG-19, configuration E."""
    return _vgg("vgg19", "E", batch_norm=False, num_classes=num_classes, in_channels=in_channels, dropout=dropout)


@register_model(family="vgg", paper=PAPER)
def vgg11_bn(*, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> VGG:
    """VGG-11 (A) with batch norm."""
    return _vgg("vgg11_bn", "A", batch_norm=True, num_classes=num_classes, in_channels=in_channels, dropout=dropout)


@register_model(family="vgg", paper=PAPER)
def vgg13_bn(*, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> VGG:
    """VGG-13 (B) with batch norm."""
    return _vgg("vgg13_bn", "B", batch_norm=True, num_classes=num_classes, in_channels=in_channels, dropout=dropout)


@register_model(family="vgg", paper=PAPER)
def vgg16_bn(*, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> VGG:
    """VGG-16 (D) with batch norm."""
    return _vgg("vgg16_bn", "D", batch_norm=True, num_classes=num_classes, in_channels=in_channels, dropout=dropout)


@register_model(family="vgg", paper=PAPER)
def vgg19_bn(*, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> VGG:
    """VGG-19 (E) with batch norm."""
    return _vgg("vgg19_bn", "E", batch_norm=True, num_classes=num_classes, in_channels=in_channels, dropout=dropout)


@register_model(family="vgg_cifar", paper=PAPER, input_size=(3, 32, 32))
def vgg11_cifar(*, num_classes: int = 10, in_channels: int = 3) -> VGG:
    """VGG-11 (A) with batch norm for 32x32 / 28x28 inputs, one linear classifier."""
    return _cifar_vgg("vgg11_cifar", "A", num_classes=num_classes, in_channels=in_channels)


@register_model(family="vgg_cifar", paper=PAPER, input_size=(3, 32, 32))
def vgg13_cifar(*, num_classes: int = 10, in_channels: int = 3) -> VGG:
    """VGG-13 (B) with batch norm for 32x32 / 28x28 inputs, one linear classifier."""
    return _cifar_vgg("vgg13_cifar", "B", num_classes=num_classes, in_channels=in_channels)


@register_model(family="vgg_cifar", paper=PAPER, input_size=(3, 32, 32))
def vgg16_cifar(*, num_classes: int = 10, in_channels: int = 3) -> VGG:
    """VGG-16 (D) with batch norm for 32x32 / 28x28 inputs, one linear classifier."""
    return _cifar_vgg("vgg16_cifar", "D", num_classes=num_classes, in_channels=in_channels)


@register_model(family="vgg_cifar", paper=PAPER, input_size=(3, 32, 32))
def vgg19_cifar(*, num_classes: int = 10, in_channels: int = 3) -> VGG:
    """VGG-19 (E) with batch norm for 32x32 / 28x28 inputs, one linear classifier."""
    return _cifar_vgg("vgg19_cifar", "E", num_classes=num_classes, in_channels=in_channels)
