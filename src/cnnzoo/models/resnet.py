"""ResNet, its plain twins, and the CIFAR ResNets.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, arXiv:1512.03385.

ImageNet nets (Table 1). Batch norm right after each conv, before the ReLU (section 3.4); in a residual block the
last ReLU comes after the addition. A stage's first block downsamples with stride 2; global average pool and one FC
layer end the net::

    layer    output   18-layer      34-layer      50-layer                        101-layer  152-layer
    conv1    112x112  7x7, 64, stride 2
    conv2_x  56x56    3x3 max pool, stride 2
                      [3x3,64]x2    [3x3,64]x3    [1x1,64; 3x3,64; 1x1,256]x3     x3         x3
    conv3_x  28x28    [3x3,128]x2   [3x3,128]x4   [1x1,128; 3x3,128; 1x1,512]x4   x4         x8
    conv4_x  14x14    [3x3,256]x2   [3x3,256]x6   [1x1,256; 3x3,256; 1x1,1024]x6  x23        x36
    conv5_x  7x7      [3x3,512]x2   [3x3,512]x3   [1x1,512; 3x3,512; 1x1,2048]x3  x3         x3
             1x1      average pool, 1000-d fc, softmax

Shortcuts (section 3.3): identity where input and output shapes agree; where they change (stride 2 or more
channels) either (A) identity on a stride-2 subsample with zero-padded extra channels, parameter-free, or
(B) a 1x1 projection conv + BN. The "plain" twins (Fig. 3 middle, section 4.1 and 4.2) are the same stacks with no
shortcut at all (``shortcut=None``): each block is ``relu(branch(x))``; the stride-2 first conv of a stage does the
downsampling.

CIFAR nets (section 4.2): a 3x3 conv with 16 filters, then 6n 3x3 layers in 3 stages, global average pool, FC;
depth 6n + 2, option A shortcuts, He initialisation::

    output map size  32x32  16x16  8x8
    # layers         1+2n   2n     2n
    # filters        16     32     64

Deliberate departures from the paper:

- The module layout and attribute names are torchvision's (``conv1, bn1, relu, maxpool, layer1..4, avgpool, fc``;
  blocks ``conv1, bn1, conv2, bn2, (conv3, bn3), downsample``), so torchvision's ImageNet state dicts load strictly
  and give identical outputs.
- Bottleneck nets default to ``variant="v1.5"`` (torchvision, NVIDIA): the stride-2 sits in the 3x3 conv of a
  bottleneck. ``variant="v1"`` puts it in the first 1x1 conv, as the paper (and Caffe release) did; the parameters
  are the same, only where the spatial size halves differs.
- ImageNet resnet18/34 use projection shortcuts (``shortcut="B"``) where the shape changes, as torchvision; the
  paper's Table 2 18/34-layer comparison used option A. The 50/101/152-layer nets use option B, as the paper.
- Weights (``init_weights``, torchvision's): Kaiming-normal with ``mode="fan_out"`` for convs (the backward-pass form
  of He et al. 2015, eq. 14, which the paper cites as [13]), BN weight 1 and bias 0, PyTorch's default for the FC
  layer.
- ``zero_init_residual`` (off by default) zeroes the last BN weight of each residual branch, so each block starts as
  the identity (Goyal et al. 2017, arXiv:1706.02677); not in the paper; not offered for plain nets.
- ``resnet18_cifar/34_cifar/50_cifar`` (``style="cifar"``) are not in the paper: the ImageNet blocks and widths with
  the common CIFAR adaptation of the stem (a 3x3 stride-1 conv with 64 filters and no max pool), so a 32x32 input
  reaches the last stage at 4x4 instead of 1x1.
- Option A appends the zero channels after the existing ones (the paper does not say where they go).
- ``in_channels`` sets the first conv's input channels (1 for MNIST-like data); adaptive average pooling lets any
  input at least as large as the net's total stride through, not just 224x224 or 32x32.
- ``shortcut="B"`` on the CIFAR nets (1x1 projection + BN at the two stage transitions) is offered for comparison;
  the paper's CIFAR nets use option A.

Words (the same in every family): ``style`` "torchvision" | "cifar" (the ImageNet ResNet's stem); ``shortcut`` "A" |
"B" | None (plain); ``variant`` "v1.5" | "v1" (where a bottleneck's stride sits).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cnnzoo.errors import CnnzooError
from cnnzoo.models._common import check_input
from cnnzoo.models.registry import register_model

PAPER = "He et al. 2016, Deep Residual Learning for Image Recognition (CVPR 2016, arXiv:1512.03385)"
Style = Literal["torchvision", "cifar"]
Shortcut = Literal["A", "B"]  # None: no shortcut (the plain twins)
Variant = Literal["v1.5", "v1"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 conv, padding 1, no bias (the following BN has one)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 conv, no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A shortcut (section 3.3): subsample by ``stride``, then append zero channels; no parameters.

    The output matches a 3x3 stride-s padding-1 conv's: ceil(H / s) x ceil(W / s), so odd sizes (28 -> 14 -> 7) work.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.extra = out_planes - in_planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))  # pad (W, H, C) from the last dim: zeros after the channels

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra}"


class BasicBlock(nn.Module):
    """Two 3x3 convs (Fig. 5 left): ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    ``shortcut=None`` drops the addition (a plain block); then ``downsample`` must be None.
    """

    expansion = 1
    branch_out = "bn2"  # the block contract (_common.blocks): the branch ends at bn2, before the addition

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        shortcut: Shortcut | None = "B",
    ) -> None:
        super().__init__()
        if downsample is not None and shortcut is None:
            raise ValueError("a plain block (shortcut=None) has no downsample")
        self.shortcut = shortcut
        self.conv1 = conv3x3(in_planes, planes, stride)  # this conv (and downsample) halves the map when stride 2
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.shortcut is not None:
            out = out + (x if self.downsample is None else self.downsample(x))  # not in place: hooks read bn2's output
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand x4 (Fig. 5 right), ResNet v1.5: the stride sits in the 3x3 conv (torchvision).

    ``shortcut=None`` drops the addition (a plain block); then ``downsample`` must be None.
    """

    expansion = 4
    stride_in_1x1 = False  # v1.5; see BottleneckV1
    branch_out = "bn3"  # the block contract (_common.blocks): the branch ends at bn3, before the addition

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        shortcut: Shortcut | None = "B",
    ) -> None:
        super().__init__()
        if downsample is not None and shortcut is None:
            raise ValueError("a plain block (shortcut=None) has no downsample")
        self.shortcut = shortcut
        stride1, stride2 = (stride, 1) if self.stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_planes, planes, stride1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride2)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv3(out)
        out = self.bn3(out)
        if self.shortcut is not None:
            out = out + (x if self.downsample is None else self.downsample(x))  # not in place: hooks read bn3's output
        return self.relu(out)


class BottleneckV1(Bottleneck):
    """The paper's bottleneck (ResNet v1): the stride-2 of a stage's first block sits in the first 1x1 conv."""

    stride_in_1x1 = True


Block = type[BasicBlock] | type[Bottleneck]


def make_layer(
    block: Block, in_planes: int, planes: int, blocks: int, *, stride: int = 1, shortcut: Shortcut | None = "B"
) -> nn.Sequential:
    """One stage (conv2_x .. conv5_x of Table 1): ``blocks`` blocks; the first changes stride and width.

    The first block gets a ``downsample`` where the shape changes: a 1x1 projection + BN for shortcut "B", the
    parameter-free :class:`ZeroPadShortcut` for "A". Plain stages (``shortcut=None``) get none.
    """
    out_planes = planes * block.expansion
    downsample: nn.Module | None = None
    if shortcut is not None and (stride != 1 or in_planes != out_planes):
        if shortcut == "A":
            downsample = ZeroPadShortcut(in_planes, out_planes, stride)
        else:
            downsample = nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))
    layers = [block(in_planes, planes, stride, downsample, shortcut=shortcut)]
    layers += [block(out_planes, planes, shortcut=shortcut) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def init_weights(model: nn.Module, *, zero_init_residual: bool = False) -> None:
    """torchvision's ResNet initialisation: Kaiming-normal convs (fan_out, ReLU; He et al. 2015, the paper's [13]),
    BN = (1, 0), PyTorch's default for the FC layer; optionally zero the last BN weight of each residual branch."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)


def _check_options(
    name: str, *, shortcut: Shortcut | None, zero_init_residual: bool, variant: Variant = "v1.5"
) -> None:
    """Turn a bad family option into a one-line :class:`CnnzooError`."""
    for option, value, allowed in (("shortcut", shortcut, ("A", "B", None)), ("variant", variant, ("v1.5", "v1"))):
        if value not in allowed:
            names = ", ".join(map(repr, (a for a in allowed if a is not None)))
            raise CnnzooError(f"{name}: {option} must be one of {names}; got {value!r}")
    if zero_init_residual and shortcut is None:
        raise CnnzooError(f"{name}: zero_init_residual needs residual blocks; a plain net would output zeros")


# Table 1: block type and number of blocks in conv2_x, conv3_x, conv4_x, conv5_x.
TABLE1: dict[int, tuple[Block, list[int]]] = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
}


class ResNet(nn.Module):
    """The ImageNet ResNet of Table 1 (and its plain twin, and the 3x3-stem CIFAR adaptation).

    ``style="torchvision"``: 7x7 stride-2 conv + 3x3 stride-2 max pool (total stride 32).
    ``style="cifar"``: 3x3 stride-1 conv, no max pool (total stride 8); not in the paper.

    ``cam_layer``: ``layer4`` (conv5_x), the last conv stage, as in Grad-CAM's ResNet examples (7x7 at 224, 4x4 at 32
    with the CIFAR stem). ``stages``: the stem's output, then conv2_x .. conv5_x.
    """

    cam_layer = "layer4"
    stages = ("maxpool", "layer1", "layer2", "layer3", "layer4")

    def __init__(
        self,
        name: str,
        block: Block,
        layers: list[int],
        *,
        style: Style = "torchvision",
        num_classes: int = 1000,
        in_channels: int = 3,
        shortcut: Shortcut | None = "B",
        variant: Variant = "v1.5",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        _check_options(name, shortcut=shortcut, zero_init_residual=zero_init_residual, variant=variant)
        if variant == "v1" and block is Bottleneck:
            block = BottleneckV1
        self.name, self.style, self.in_channels = name, style, in_channels
        if style == "torchvision":
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.min_size = 32  # total stride: the last stage still sees >= 1x1
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
            self.min_size = 8
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        e = block.expansion
        self.layer1 = make_layer(block, 64, 64, layers[0], shortcut=shortcut)
        self.layer2 = make_layer(block, 64 * e, 128, layers[1], stride=2, shortcut=shortcut)
        self.layer3 = make_layer(block, 128 * e, 256, layers[2], stride=2, shortcut=shortcut)
        self.layer4 = make_layer(block, 256 * e, 512, layers[3], stride=2, shortcut=shortcut)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * e, num_classes)
        init_weights(self, zero_init_residual=zero_init_residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shapes at 224x224 with e = block expansion (CIFAR stem at 32x32: 32, 32, 16, 8, 4)."""
        check_input(x, name=self.name, in_channels=self.in_channels, min_size=self.min_size)
        # N x 3 x 224 x 224
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        # N x 64 x 112 x 112
        x = self.maxpool(x)
        # N x 64 x 56 x 56
        x = self.layer1(x)
        # N x 64e x 56 x 56
        x = self.layer2(x)
        # N x 128e x 28 x 28
        x = self.layer3(x)
        # N x 256e x 14 x 14
        x = self.layer4(x)
        # N x 512e x 7 x 7
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        # N x 512e
        x = self.fc(x)
        # N x num_classes
        return x


# Section 4.2: depth 6n + 2 -> n BasicBlocks (two 3x3 convs each) in each of the 3 stages.
CIFAR_DEPTHS: dict[int, int] = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18, 1202: 200}


class CifarResNet(nn.Module):
    """The CIFAR-10 ResNet of section 4.2 (and its plain twin): 16/32/64 filters on 32/16/8 maps, depth 6n + 2.

    ``cam_layer``: ``layer3``, the last stage (8x8 at 32 px). ``stages``: the stem's output, then the three stages.
    """

    cam_layer = "layer3"
    stages = ("relu", "layer1", "layer2", "layer3")

    def __init__(
        self,
        name: str,
        depth: int,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        shortcut: Shortcut | None = "A",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        _check_options(name, shortcut=shortcut, zero_init_residual=zero_init_residual)
        n = CIFAR_DEPTHS[depth]
        self.name, self.in_channels, self.min_size = name, in_channels, 4  # total stride 4
        self.conv1 = conv3x3(in_channels, 16)  # the first of the 6n + 2 layers
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_layer(BasicBlock, 16, 16, n, shortcut=shortcut)
        self.layer2 = make_layer(BasicBlock, 16, 32, n, stride=2, shortcut=shortcut)
        self.layer3 = make_layer(BasicBlock, 32, 64, n, stride=2, shortcut=shortcut)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)  # the last of the 6n + 2 layers
        init_weights(self, zero_init_residual=zero_init_residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, name=self.name, in_channels=self.in_channels, min_size=self.min_size)
        # N x 3 x 32 x 32
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        # N x 16 x 32 x 32
        x = self.layer1(x)
        # N x 16 x 32 x 32
        x = self.layer2(x)
        # N x 32 x 16 x 16
        x = self.layer3(x)
        # N x 64 x 8 x 8
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        # N x 64
        x = self.fc(x)
        # N x num_classes
        return x


def _resnet(
    name: str,
    depth: int,
    num_classes: int,
    in_channels: int,
    zero_init_residual: bool = False,
    *,
    style: Style = "torchvision",
    shortcut: Shortcut | None = "B",
    variant: Variant = "v1.5",
) -> ResNet:
    """A ResNet of Table 1 (``shortcut=None``: its plain twin; ``style="cifar"``: behind the CIFAR stem)."""
    block, layers = TABLE1[depth]
    return ResNet(
        name,
        block,
        layers,
        style=style,
        num_classes=num_classes,
        in_channels=in_channels,
        shortcut=shortcut,
        variant=variant,
        zero_init_residual=zero_init_residual,
    )


def _cifar_resnet(
    name: str,
    depth: int,
    num_classes: int,
    in_channels: int,
    shortcut: Shortcut | None,
    zero_init_residual: bool = False,
) -> CifarResNet:
    """A section 4.2 net of depth 6n + 2 (``shortcut=None``: its plain twin)."""
    return CifarResNet(
        name,
        depth,
        num_classes=num_classes,
        in_channels=in_channels,
        shortcut=shortcut,
        zero_init_residual=zero_init_residual,
    )


# --- ImageNet ResNets (Table 1) ---------------------------------------------------------------------------------


@register_model(family="resnet", paper=PAPER)
def resnet18(*, num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False) -> ResNet:
    """ResNet-18 (Table 1): basic blocks [2, 2, 2, 2]."""
    return _resnet("resnet18", 18, num_classes, in_channels, zero_init_residual)


@register_model(family="resnet", paper=PAPER)
def resnet34(*, num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False) -> ResNet:
    """ResNet-34 (Table 1): basic blocks [3, 4, 6, 3]."""
    return _resnet("resnet34", 34, num_classes, in_channels, zero_init_residual)


@register_model(family="resnet", paper=PAPER)
def resnet50(
    *, num_classes: int = 1000, in_channels: int = 3, variant: Variant = "v1.5", zero_init_residual: bool = False
) -> ResNet:
    """ResNet-50 (Table 1): bottleneck blocks [3, 4, 6, 3]; ``variant`` "v1.5" (default) or "v1"."""
    return _resnet("resnet50", 50, num_classes, in_channels, zero_init_residual, variant=variant)


@register_model(family="resnet", paper=PAPER)
def resnet101(
    *, num_classes: int = 1000, in_channels: int = 3, variant: Variant = "v1.5", zero_init_residual: bool = False
) -> ResNet:
    """ResNet-101 (Table 1): bottleneck blocks [3, 4, 23, 3]; ``variant`` "v1.5" (default) or "v1"."""
    return _resnet("resnet101", 101, num_classes, in_channels, zero_init_residual, variant=variant)


@register_model(family="resnet", paper=PAPER)
def resnet152(
    *, num_classes: int = 1000, in_channels: int = 3, variant: Variant = "v1.5", zero_init_residual: bool = False
) -> ResNet:
    """ResNet-152 (Table 1): bottleneck blocks [3, 8, 36, 3]; ``variant`` "v1.5" (default) or "v1"."""
    return _resnet("resnet152", 152, num_classes, in_channels, zero_init_residual, variant=variant)


# --- Plain twins of ResNet-18/34 (Fig. 3 middle; Table 2, Fig. 4 left) -----------------------------------------


@register_model(family="plain", paper=PAPER)
def plain18(*, num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """Plain-18: ResNet-18 without shortcuts (the degradation study's baseline)."""
    return _resnet("plain18", 18, num_classes, in_channels, shortcut=None)


@register_model(family="plain", paper=PAPER)
def plain34(*, num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """Plain-34: ResNet-34 without shortcuts (the degradation study's baseline)."""
    return _resnet("plain34", 34, num_classes, in_channels, shortcut=None)


# --- ImageNet blocks with the CIFAR stem (3x3 stride-1 conv, no max pool; not in the paper) -------------------


@register_model(family="resnet_cifar", paper=PAPER, input_size=(3, 32, 32))
def resnet18_cifar(*, num_classes: int = 10, in_channels: int = 3, zero_init_residual: bool = False) -> ResNet:
    """ResNet-18 blocks and widths with the CIFAR stem: 3x3 stride-1 conv, 64 filters, no max pool."""
    return _resnet("resnet18_cifar", 18, num_classes, in_channels, zero_init_residual, style="cifar")


@register_model(family="resnet_cifar", paper=PAPER, input_size=(3, 32, 32))
def resnet34_cifar(*, num_classes: int = 10, in_channels: int = 3, zero_init_residual: bool = False) -> ResNet:
    """ResNet-34 blocks and widths with the CIFAR stem: 3x3 stride-1 conv, 64 filters, no max pool."""
    return _resnet("resnet34_cifar", 34, num_classes, in_channels, zero_init_residual, style="cifar")


@register_model(family="resnet_cifar", paper=PAPER, input_size=(3, 32, 32))
def resnet50_cifar(
    *, num_classes: int = 10, in_channels: int = 3, variant: Variant = "v1.5", zero_init_residual: bool = False
) -> ResNet:
    """ResNet-50 blocks and widths with the CIFAR stem: 3x3 stride-1 conv, 64 filters, no max pool."""
    return _resnet("resnet50_cifar", 50, num_classes, in_channels, zero_init_residual, style="cifar", variant=variant)


# --- CIFAR ResNets of section 4.2 (6n + 2 layers; option A shortcuts by default) -------------------------------


@register_model(family="resnet_cifar", paper=PAPER, input_size=(3, 32, 32))
def resnet20(
    *, num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut = "A", zero_init_residual: bool = False
) -> CifarResNet:
    """ResNet-20 (section 4.2, n = 3); ``shortcut`` "A" (zero-padding, default) or "B" (projection)."""
    return _cifar_resnet("resnet20", 20, num_classes, in_channels, shortcut, zero_init_residual)


@register_model(family="resnet_cifar", paper=PAPER, input_size=(3, 32, 32))
def resnet32(
    *, num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut = "A", zero_init_residual: bool = False
) -> CifarResNet:
    """ResNet-32 (section 4.2, n = 5); ``shortcut`` "A" (zero-padding, default) or "B" (projection)."""
    return _cifar_resnet("resnet32", 32, num_classes, in_channels, shortcut, zero_init_residual)


@register_model(family="resnet_cifar", paper=PAPER, input_size=(3, 32, 32))
def resnet44(
    *, num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut = "A", zero_init_residual: bool = False
) -> CifarResNet:
    """ResNet-44 (section 4.2, n = 7); ``shortcut`` "A" (zero-padding, default) or "B" (projection)."""
    return _cifar_resnet("resnet44", 44, num_classes, in_channels, shortcut, zero_init_residual)


@register_model(family="resnet_cifar", paper=PAPER, input_size=(3, 32, 32))
def resnet56(
    *, num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut = "A", zero_init_residual: bool = False
) -> CifarResNet:
    """ResNet-56 (section 4.2, n = 9); ``shortcut`` "A" (zero-padding, default) or "B" (projection)."""
    return _cifar_resnet("resnet56", 56, num_classes, in_channels, shortcut, zero_init_residual)


@register_model(family="resnet_cifar", paper=PAPER, input_size=(3, 32, 32))
def resnet110(
    *, num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut = "A", zero_init_residual: bool = False
) -> CifarResNet:
    """ResNet-110 (section 4.2, n = 18); ``shortcut`` "A" (zero-padding, default) or "B" (projection)."""
    return _cifar_resnet("resnet110", 110, num_classes, in_channels, shortcut, zero_init_residual)


@register_model(family="resnet_cifar", paper=PAPER, input_size=(3, 32, 32))
def resnet1202(
    *, num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut = "A", zero_init_residual: bool = False
) -> CifarResNet:
    """ResNet-1202 (section 4.2, n = 200; the paper's overfitting example); ``shortcut`` "A" (default) or "B"."""
    return _cifar_resnet("resnet1202", 1202, num_classes, in_channels, shortcut, zero_init_residual)


# --- Plain twins of the CIFAR ResNets (section 4.2, Fig. 6 left) ------------------------------------------------


@register_model(family="plain_cifar", paper=PAPER, input_size=(3, 32, 32))
def plain20(*, num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """Plain-20: ResNet-20 without shortcuts."""
    return _cifar_resnet("plain20", 20, num_classes, in_channels, shortcut=None)


@register_model(family="plain_cifar", paper=PAPER, input_size=(3, 32, 32))
def plain32(*, num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """Plain-32: ResNet-32 without shortcuts."""
    return _cifar_resnet("plain32", 32, num_classes, in_channels, shortcut=None)


@register_model(family="plain_cifar", paper=PAPER, input_size=(3, 32, 32))
def plain44(*, num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """Plain-44: ResNet-44 without shortcuts."""
    return _cifar_resnet("plain44", 44, num_classes, in_channels, shortcut=None)


@register_model(family="plain_cifar", paper=PAPER, input_size=(3, 32, 32))
def plain56(*, num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """Plain-56: ResNet-56 without shortcuts (the paper's degradation example, Fig. 1)."""
    return _cifar_resnet("plain56", 56, num_classes, in_channels, shortcut=None)


@register_model(family="plain_cifar", paper=PAPER, input_size=(3, 32, 32))
def plain110(*, num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """Plain-110: ResNet-110 without shortcuts (deeper than the paper's plain nets; it shows degradation best)."""
    return _cifar_resnet("plain110", 110, num_classes, in_channels, shortcut=None)
