"""Pre-activation ResNets for CIFAR: BN-ReLU-conv units whose shortcut stays a clean identity.

He, Zhang, Ren, Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016, arXiv:1603.05027.

Section 4 (Fig. 4(e), "full pre-activation"): the residual unit computes ``x + F(x)`` with nothing after the
addition, and F starts with batch norm and ReLU: ``BN-ReLU-conv, BN-ReLU-conv`` (basic) or ``BN-ReLU-conv1x1,
BN-ReLU-conv3x3, BN-ReLU-conv1x1`` (bottleneck, 4x expansion). So the signal of any unit reaches any later unit and
the gradient any earlier one through identities only (eq. 4-5). Two units are special (section 4.1): the first
follows the stand-alone conv1, whose own BN-ReLU is the unit's first activation ("right after conv1 and before
splitting into two paths"); the last is followed by an extra BN-ReLU before pooling. Where the shape changes, the
shortcut is a 1x1 projection that reads the pre-activated input too (appendix: "these projection shortcuts are also
with pre-activation")::

    output map size   32x32   16x16   8x8
    basic (6n + 2)    [3x3,16; 3x3,16] x n           [3x3,32; 3x3,32] x n             [3x3,64; 3x3,64] x n
    bottleneck (9n+2) [1x1,16; 3x3,16; 1x1,64] x n   [1x1,32; 3x3,32; 1x1,128] x n    [1x1,64; 3x3,64; 1x1,256] x n

    preact_resnet20/32/44/56/110: basic, n = 3/5/7/9/18 (ResNet-110 of Table 2/3: 1.7M params)
    preact_resnet164: bottleneck, n = 18, 1.7M params (Table 3: 5.46% CIFAR-10 error)
    preact_resnet1001: bottleneck, n = 111, 10.2M params (Table 3: 4.92%)

Deliberate departures from the paper:

- Projection shortcuts (``shortcut="B"``, a 1x1 conv without BN) at the two stage transitions of the basic nets
  too; the paper states its shortcuts for the bottleneck nets (appendix), and its ResNet-110 baseline is that of
  He et al. 2016 [1] (option A, zero padding). Zero padding is not offered here.
- The stride-2 of a stage's first bottleneck sits in its 3x3 conv (as the authors' Torch release,
  KaimingHe/resnet-1k-layers, and ResNet v1.5).
- Weights (``init_weights``, the authors' Torch release): Kaiming-normal convs with ``mode="fan_out"`` (He et al.
  2015), BN weight 1 and bias 0, FC bias 0 and PyTorch's default FC weights.
- Attribute names follow torchvision's ResNet (``conv1, bn1, relu, layer1..3, avgpool, fc``; units ``bn1, conv1,
  bn2, conv2, (bn3, conv3), downsample``) plus ``bn_final, relu_final``; ``in_channels`` sets the first conv's
  input channels and adaptive pooling lets any input at least 4x4 through.

The units satisfy the block contract (``models/_common.blocks``): ``shortcut`` is "B", ``branch_out`` their last conv.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from cnnzoo.models._common import check_input
from cnnzoo.models.registry import register_model

PAPER = "He et al. 2016, Identity Mappings in Deep Residual Networks (ECCV 2016, arXiv:1603.05027)"
# Where a unit's first BN-ReLU sits: in its branch only (the shortcut is the identity), before the split (the
# projection shortcut reads it too: a stage's first unit), or nowhere (the network's first unit, after conv1's own).
Preact = Literal["branch", "both", "none"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 conv, padding 1, no bias (a BN follows it in the next unit)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 conv, no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class PreActBasicBlock(nn.Module):
    """Full pre-activation basic unit (Fig. 4(e)): ``x + conv2(relu(bn2(conv1(relu(bn1(x))))))``."""

    expansion = 1
    branch_out = "conv2"  # the block contract: the branch ends at conv2; nothing follows the addition

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        preact: Preact = "branch",
    ) -> None:
        super().__init__()
        self.shortcut, self.preact = "B", preact
        self.bn1 = None if preact == "none" else nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv3x3(in_planes, planes, stride)  # this conv (and downsample) halves the map when stride 2
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.bn1 is None else self.relu(self.bn1(x))  # bn1's output is new: ReLU in place is safe
        identity = x if self.downsample is None else self.downsample(out)  # a projection reads the activated input
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv2(out)
        return out + identity


class PreActBottleneck(nn.Module):
    """Full pre-activation bottleneck (Fig. 4(e), appendix): BN-ReLU-1x1, BN-ReLU-3x3 (stride), BN-ReLU-1x1 x4."""

    expansion = 4
    branch_out = "conv3"  # the block contract: the branch ends at conv3; nothing follows the addition

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        preact: Preact = "branch",
    ) -> None:
        super().__init__()
        self.shortcut, self.preact = "B", preact
        self.bn1 = None if preact == "none" else nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv1x1(in_planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.bn1 is None else self.relu(self.bn1(x))
        identity = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn3(out)
        out = self.relu(out)
        out = self.conv3(out)
        return out + identity


Block = type[PreActBasicBlock] | type[PreActBottleneck]


def make_layer(
    block: Block, in_planes: int, planes: int, blocks: int, *, stride: int = 1, after_stem: bool = False
) -> nn.Sequential:
    """One stage: ``blocks`` units; the first changes stride and width through a 1x1 projection shortcut and is
    pre-activated before the split, except the network's first unit (``after_stem``), which uses conv1's BN-ReLU."""
    out_planes = planes * block.expansion
    downsample = conv1x1(in_planes, out_planes, stride) if stride != 1 or in_planes != out_planes else None
    first: Preact = "none" if after_stem else "both" if downsample is not None else "branch"
    layers = [block(in_planes, planes, stride, downsample, preact=first)]
    layers += [block(out_planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def init_weights(model: nn.Module) -> None:
    """The authors' Torch initialisation (KaimingHe/resnet-1k-layers): Kaiming-normal convs (fan_out, ReLU; He et
    al. 2015), BN = (1, 0), FC bias 0 (its weights keep PyTorch's default)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


# depth -> (unit, units per stage): basic 6n + 2 (Table 2's ResNet-110 and its shallower twins), bottleneck 9n + 2.
DEPTHS: dict[int, tuple[Block, int]] = {
    20: (PreActBasicBlock, 3),
    32: (PreActBasicBlock, 5),
    44: (PreActBasicBlock, 7),
    56: (PreActBasicBlock, 9),
    110: (PreActBasicBlock, 18),
    164: (PreActBottleneck, 18),
    1001: (PreActBottleneck, 111),
}


class PreActResNet(nn.Module):
    """A CIFAR pre-activation ResNet: conv1-BN-ReLU, three stages of units (16/32/64 planes on 32/16/8 maps), the
    extra BN-ReLU after the last addition, global average pool, FC.

    ``cam_layer``: ``relu_final``, the last stage's output after its BN-ReLU (8x8 at 32 px): the last activated
    feature map. ``stages``: the stem's output, then the three stages.
    """

    cam_layer = "relu_final"
    stages = ("relu", "layer1", "layer2", "layer3")

    def __init__(self, name: str, depth: int, *, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        block, n = DEPTHS[depth]
        e = block.expansion
        self.name, self.in_channels, self.min_size = name, in_channels, 4  # total stride 4
        self.conv1 = conv3x3(in_channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)  # the first unit's activation (section 4.1)
        self.layer1 = make_layer(block, 16, 16, n, after_stem=True)
        self.layer2 = make_layer(block, 16 * e, 32, n, stride=2)
        self.layer3 = make_layer(block, 32 * e, 64, n, stride=2)
        self.bn_final = nn.BatchNorm2d(64 * e)  # the extra activation after the last addition (section 4.1)
        self.relu_final = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64 * e, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shapes at 32x32 with e = unit expansion (1 basic, 4 bottleneck)."""
        check_input(x, name=self.name, in_channels=self.in_channels, min_size=self.min_size)
        # N x 3 x 32 x 32
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        # N x 16 x 32 x 32
        x = self.layer1(x)
        # N x 16e x 32 x 32
        x = self.layer2(x)
        # N x 32e x 16 x 16
        x = self.layer3(x)
        # N x 64e x 8 x 8
        x = self.bn_final(x)
        x = self.relu_final(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        # N x 64e
        x = self.fc(x)
        # N x num_classes
        return x


def _preact_resnet(name: str, depth: int, num_classes: int, in_channels: int) -> PreActResNet:
    """A pre-activation CIFAR ResNet of ``depth`` layers (:data:`DEPTHS`)."""
    return PreActResNet(name, depth, num_classes=num_classes, in_channels=in_channels)


@register_model(family="preact_resnet_cifar", paper=PAPER, input_size=(3, 32, 32))
def preact_resnet20(*, num_classes: int = 10, in_channels: int = 3) -> PreActResNet:
    """Pre-activation ResNet-20: basic units, n = 3."""
    return _preact_resnet("preact_resnet20", 20, num_classes, in_channels)


@register_model(family="preact_resnet_cifar", paper=PAPER, input_size=(3, 32, 32))
def preact_resnet32(*, num_classes: int = 10, in_channels: int = 3) -> PreActResNet:
    """Pre-activation ResNet-32: basic units, n = 5."""
    return _preact_resnet("preact_resnet32", 32, num_classes, in_channels)


@register_model(family="preact_resnet_cifar", paper=PAPER, input_size=(3, 32, 32))
def preact_resnet44(*, num_classes: int = 10, in_channels: int = 3) -> PreActResNet:
    """Pre-activation ResNet-44: basic units, n = 7."""
    return _preact_resnet("preact_resnet44", 44, num_classes, in_channels)


@register_model(family="preact_resnet_cifar", paper=PAPER, input_size=(3, 32, 32))
def preact_resnet56(*, num_classes: int = 10, in_channels: int = 3) -> PreActResNet:
    """Pre-activation ResNet-56: basic units, n = 9."""
    return _preact_resnet("preact_resnet56", 56, num_classes, in_channels)


@register_model(family="preact_resnet_cifar", paper=PAPER, input_size=(3, 32, 32))
def preact_resnet110(*, num_classes: int = 10, in_channels: int = 3) -> PreActResNet:
    """Pre-activation ResNet-110 (Table 2, 3): basic units, n = 18; 1.7M parameters."""
    return _preact_resnet("preact_resnet110", 110, num_classes, in_channels)


@register_model(family="preact_resnet_cifar", paper=PAPER, input_size=(3, 32, 32))
def preact_resnet164(*, num_classes: int = 10, in_channels: int = 3) -> PreActResNet:
    """Pre-activation ResNet-164 (Table 3): bottleneck units, n = 18; 1.7M parameters."""
    return _preact_resnet("preact_resnet164", 164, num_classes, in_channels)


@register_model(family="preact_resnet_cifar", paper=PAPER, input_size=(3, 32, 32))
def preact_resnet1001(*, num_classes: int = 10, in_channels: int = 3) -> PreActResNet:
    """Pre-activation ResNet-1001 (Table 3): bottleneck units, n = 111; 10.2M parameters."""
    return _preact_resnet("preact_resnet1001", 1001, num_classes, in_channels)
