"""GoogLeNet (Inception v1): Inception modules, 1x1 reductions, global average pooling, two auxiliary classifiers.

Szegedy, Liu, Jia, Sermanet, Reed, Anguelov, Erhan, Vanhoucke, Rabinovich, "Going Deeper with Convolutions",
CVPR 2015, arXiv:1409.4842.

Table 1 of the paper is ``INCEPTION`` below: each module has four parallel branches, concatenated on channels:
1x1; 1x1 reduction then 3x3; 1x1 reduction then 5x5; 3x3/1 max pool then 1x1 projection (section 5). The stem is
conv 7x7/2 (64), max pool 3x3/2, LRN, conv 1x1 (64), conv 3x3 (192), LRN, max pool 3x3/2 (Figure 3). After 5b: global
average pooling (7x7), dropout 0.4, a linear classifier. Two auxiliary classifiers on 4a and 4d (section 5): average
pool 5x5/3 (14x14 -> 4x4), 1x1 conv with 128 filters + ReLU, FC 1024 + ReLU, dropout 0.7, linear; used in training
with loss weight 0.3 and discarded at inference.

In training mode with ``aux_logits`` the nets return ``(logits, aux2, aux1)`` (torchvision's ``GoogLeNetOutputs``
order; the trainer adds ``0.3 * CE`` for each auxiliary output); in eval mode only the logits.

Deliberate departures from the paper:

- ``googlenet`` is torchvision's layout so that its state dicts load strictly: batch norm (eps 1e-3) after every
  conv and no LRN; the "5x5" branch uses a 3x3 conv (torchvision's own comment calls this "a known bug", kept for
  weight compatibility); the pool after 4e is 2x2/2 instead of 3x3/2 (same 7x7 output); the auxiliary heads pool
  adaptively to 4x4; dropout 0.2 before the classifier; weights truncated-normal N(0, 0.01).
- ``googlenet_paper`` follows the paper: no batch norm (convs with bias + ReLU), LRN in the stem (the paper gives
  no values; these are the BVLC Caffe reproduction's: local_size 5, alpha 1e-4 in Caffe's convention, which divides
  it by the size, so 2e-5 on the sum of squares; beta 0.75, k 1), real 5x5 convs, 3x3/2 pools, auxiliary pool 5x5/3,
  dropout 0.4. The paper trained with DistBelief and does not give the initialisation; we use the BVLC reproduction's
  (models/bvlc_googlenet/train_val.prototxt): Caffe's "xavier" filler, U(-sqrt(3 / fan_in), +sqrt(3 / fan_in)) with
  fan_in = input channels x kernel area (not PyTorch's ``xavier_uniform_``, which averages fan_in and fan_out), for
  every conv and FC weight; biases 0.2, except the three classifiers' (``fc`` and the auxiliary ``fc2``), which are 0.
  Input 224x224 exactly (the auxiliary FC layers take 4x4x128).
- ``googlenet_cifar`` (not in the paper) is the common CIFAR adaptation (kuangliu/pytorch-cifar): the stem becomes
  one 3x3 conv with 192 filters and no early pooling, the same Inception table with batch norm, 3x3/2 max pools
  (padding 1) after 3b and 4e (32 -> 16 -> 8; 28 -> 14 -> 7), global average pool, linear, no dropout by default.
  One difference from kuangliu's code: it builds the "5x5" branch as two stacked 3x3 convs; we keep the table's
  single 5x5 conv, so the three styles share one Inception class. No auxiliary heads by default
  (``aux_logits=True`` adds torchvision's adaptive ones): at 32x32 the net is shallow enough to train without them.
- ``in_channels`` replaces only the first conv's input channels; ``transform_input`` (torchvision's conversion of
  ImageNet-normalised input to the [-1, 1] scaling of Google's weights) is kept, off by default.

Styles (``style``): "torchvision", "paper", "cifar".
"""

from __future__ import annotations

import math
from collections import namedtuple
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cnnzoo.models._common import check_input, lrn
from cnnzoo.models.registry import register_model

PAPER = "Szegedy et al. 2015, Going Deeper with Convolutions (CVPR 2015, arXiv:1409.4842)"

GoogLeNetOutputs = namedtuple("GoogLeNetOutputs", ["logits", "aux_logits2", "aux_logits1"])

# Table 1: name, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj ("M" = the max pool between stages).
INCEPTION: list[tuple[str, int, int, int, int, int, int] | str] = [
    ("inception3a", 64, 96, 128, 16, 32, 32),
    ("inception3b", 128, 128, 192, 32, 96, 64),
    "maxpool3",
    ("inception4a", 192, 96, 208, 16, 48, 64),
    ("inception4b", 160, 112, 224, 24, 64, 64),
    ("inception4c", 128, 128, 256, 24, 64, 64),
    ("inception4d", 112, 144, 288, 32, 64, 64),
    ("inception4e", 256, 160, 320, 32, 128, 128),
    "maxpool4",
    ("inception5a", 256, 160, 320, 32, 128, 128),
    ("inception5b", 384, 192, 384, 48, 128, 128),
]

Style = Literal["torchvision", "paper", "cifar"]


class BasicConv2d(nn.Module):
    """conv -> BN (eps 1e-3) -> ReLU, torchvision's block (no conv bias: BN has one)."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = self.bn(x)
        return F.relu(x, inplace=True)


class ConvReLU(nn.Module):
    """conv (with bias) -> ReLU: the paper's block, before batch norm existed."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return F.relu(x, inplace=True)


class Inception(nn.Module):
    """Four branches concatenated on channels: 1x1 | 1x1 -> 3x3 | 1x1 -> "5x5" | 3x3 max pool -> 1x1."""

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch5x5red: int,
        ch5x5: int,
        pool_proj: int,
        *,
        block: type[nn.Module] = BasicConv2d,
        k5: int = 5,
    ) -> None:
        super().__init__()
        self.branch1 = block(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            block(in_channels, ch3x3red, kernel_size=1), block(ch3x3red, ch3x3, kernel_size=3, padding=1)
        )
        # k5 = 3 in torchvision's googlenet (see the module docstring), 5 as the paper.
        self.branch3 = nn.Sequential(
            block(in_channels, ch5x5red, kernel_size=1), block(ch5x5red, ch5x5, kernel_size=k5, padding=k5 // 2)
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            block(in_channels, pool_proj, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1 = self.branch1(x)
        branch2 = self.branch2(x)
        branch3 = self.branch3(x)
        branch4 = self.branch4(x)
        return torch.cat([branch1, branch2, branch3, branch4], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier: pool to 4x4, 1x1 conv 128, FC 1024 + ReLU, dropout 0.7, FC classes."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        style: Style,
        block: type[nn.Module] = BasicConv2d,
        dropout: float = 0.7,
    ) -> None:
        super().__init__()
        # The paper: average pool 5x5 stride 3 (14x14 -> 4x4); torchvision: adaptive to 4x4 (any input size).
        self.pool = nn.AvgPool2d(kernel_size=5, stride=3) if style == "paper" else nn.AdaptiveAvgPool2d((4, 4))
        self.conv = block(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # aux1: N x 512 x 14 x 14, aux2: N x 528 x 14 x 14
        x = self.pool(x)
        # aux1: N x 512 x 4 x 4, aux2: N x 528 x 4 x 4
        x = self.conv(x)
        # N x 128 x 4 x 4
        x = torch.flatten(x, 1)
        # N x 2048
        x = self.fc1(x)
        x = F.relu(x, inplace=True)
        # N x 1024
        x = self.dropout(x)
        x = self.fc2(x)
        # N x num_classes
        return x


def _stage_pool(entry: str, style: Style) -> nn.MaxPool2d:
    """The max pool between Inception groups: 28 -> 14 -> 7 (CIFAR: 32 -> 16 -> 8)."""
    if style == "cifar":
        return nn.MaxPool2d(3, stride=2, padding=1)
    if style == "torchvision" and entry == "maxpool4":
        return nn.MaxPool2d(2, stride=2, ceil_mode=True)  # torchvision's 2x2/2 after 4e (same 7x7 output)
    return nn.MaxPool2d(3, stride=2, ceil_mode=True)


def _caffe_xavier_(weight: torch.Tensor) -> None:
    """Caffe's "xavier" filler (its default variance_norm FAN_IN): U(-sqrt(3 / fan_in), +sqrt(3 / fan_in))."""
    fan_in = weight[0].numel()  # input channels x kernel area (in_features for a linear layer)
    bound = math.sqrt(3.0 / fan_in)
    nn.init.uniform_(weight, -bound, bound)


def init_weights(model: GoogLeNet) -> None:
    """Style "paper": the BVLC Caffe reproduction's (bvlc_googlenet/train_val.prototxt): Caffe's xavier filler for
    every weight; bias 0.2, but 0 for the classifiers (``fc``, ``aux*.fc2``). Other styles: torchvision's GoogLeNet,
    truncated-normal N(0, 0.01) in [-2, 2] for conv and FC weights, biases 0, BN (1, 0)."""
    classifiers = {model.fc} | {aux.fc2 for aux in (model.aux1, model.aux2) if aux is not None}
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if model.style == "paper":
                _caffe_xavier_(m.weight)
                nn.init.constant_(m.bias, 0.0 if m in classifiers else 0.2)
            else:
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class GoogLeNet(nn.Module):
    """GoogLeNet in three styles sharing the Inception table: ``torchvision``, ``paper`` and ``cifar``.

    ``cam_layer``: ``inception5b``, the last Inception module (7x7 at 224, 8x8 at 32): global average pooling and the
    classifier follow it directly, as in Grad-CAM's own GoogLeNet example. ``stages``: the stem's output, then the
    last module of each Inception group (3, 4, 5).
    """

    cam_layer = "inception5b"
    stages = ("maxpool2", "inception3b", "inception4e", "inception5b")

    def __init__(
        self,
        name: str,
        *,
        style: Style,
        num_classes: int,
        in_channels: int = 3,
        aux_logits: bool = True,
        transform_input: bool = False,
        dropout: float = 0.2,
        dropout_aux: float = 0.7,
    ) -> None:
        super().__init__()
        self.name, self.style, self.in_channels = name, style, in_channels
        self.aux_logits, self.transform_input = aux_logits, transform_input
        block = ConvReLU if style == "paper" else BasicConv2d
        k5 = 3 if style == "torchvision" else 5
        # Smallest side leaving every pool a non-empty map: 15 px (ImageNet stem, ceil-mode pools), any (CIFAR);
        # exactly 224 for the paper's auxiliary heads, whose FC layers take 4x4x128.
        self.min_size, self.exact_size = {"torchvision": (15, None), "paper": (1, 224), "cifar": (1, None)}[style]

        # The stem (Figure 3). Attribute names are torchvision's; the CIFAR stem is conv1 alone (the rest identities).
        if style == "cifar":
            self.conv1 = block(in_channels, 192, kernel_size=3, padding=1)
            for absent in ("maxpool1", "lrn1", "conv2", "conv3", "lrn2", "maxpool2"):
                setattr(self, absent, nn.Identity())
        else:
            self.conv1 = block(in_channels, 64, kernel_size=7, stride=2, padding=3)
            self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
            self.lrn1 = _lrn() if style == "paper" else nn.Identity()
            self.conv2 = block(64, 64, kernel_size=1)
            self.conv3 = block(64, 192, kernel_size=3, padding=1)
            self.lrn2 = _lrn() if style == "paper" else nn.Identity()
            self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        channels = 192
        for entry in INCEPTION:
            if isinstance(entry, str):
                setattr(self, entry, _stage_pool(entry, style))
                continue
            name_, *widths = entry
            setattr(self, name_, Inception(channels, *widths, block=block, k5=k5))
            channels = widths[0] + widths[2] + widths[4] + widths[5]

        if aux_logits:  # on 4a (512 channels) and 4d (528 channels)
            self.aux1 = InceptionAux(512, num_classes, style=style, block=block, dropout=dropout_aux)
            self.aux2 = InceptionAux(528, num_classes, style=style, block=block, dropout=dropout_aux)
        else:
            self.aux1 = self.aux2 = None
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))  # global average pooling (section 5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(1024, num_classes)
        init_weights(self)

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised input -> the (x - 0.5) / 0.5 scaling Google's weights were trained on (torchvision)."""
        if not self.transform_input:
            return x
        x_ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
        x_ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
        x_ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
        return torch.cat((x_ch0, x_ch1, x_ch2), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | GoogLeNetOutputs:
        """Shapes at 224x224 (cifar at 32x32: the stem is conv1 alone, N x 192 x 32 x 32, then 32 -> 16 -> 8)."""
        check_input(x, name=self.name, in_channels=self.in_channels, min_size=self.min_size, exact_size=self.exact_size)
        x = self._transform_input(x)
        # N x 3 x 224 x 224
        x = self.conv1(x)
        # N x 64 x 112 x 112
        x = self.maxpool1(x)
        x = self.lrn1(x)
        # N x 64 x 56 x 56
        x = self.conv2(x)
        # N x 64 x 56 x 56
        x = self.conv3(x)
        x = self.lrn2(x)
        # N x 192 x 56 x 56
        x = self.maxpool2(x)
        # N x 192 x 28 x 28
        x = self.inception3a(x)
        # N x 256 x 28 x 28
        x = self.inception3b(x)
        # N x 480 x 28 x 28
        x = self.maxpool3(x)
        # N x 480 x 14 x 14
        x = self.inception4a(x)
        # N x 512 x 14 x 14
        aux1 = self.aux1(x) if self.aux1 is not None and self.training else None
        x = self.inception4b(x)
        # N x 512 x 14 x 14
        x = self.inception4c(x)
        # N x 512 x 14 x 14
        x = self.inception4d(x)
        # N x 528 x 14 x 14
        aux2 = self.aux2(x) if self.aux2 is not None and self.training else None
        x = self.inception4e(x)
        # N x 832 x 14 x 14
        x = self.maxpool4(x)
        # N x 832 x 7 x 7
        x = self.inception5a(x)
        # N x 832 x 7 x 7
        x = self.inception5b(x)
        # N x 1024 x 7 x 7
        x = self.avgpool(x)
        # N x 1024 x 1 x 1
        x = torch.flatten(x, 1)
        # N x 1024
        x = self.dropout(x)
        x = self.fc(x)
        # N x num_classes
        if self.training and self.aux_logits:
            return GoogLeNetOutputs(x, aux2, aux1)
        return x


def _lrn() -> nn.Module:
    """The stem's LRN: the BVLC reproduction's Caffe values (the paper gives none), alpha 1e-4 / size on the sum."""
    return lrn(size=5, alpha=1e-4 / 5, beta=0.75, k=1.0)


def _googlenet(
    name: str,
    style: Style,
    num_classes: int,
    in_channels: int,
    aux_logits: bool,
    dropout: float,
    transform_input: bool = False,
) -> GoogLeNet:
    return GoogLeNet(
        name,
        style=style,
        num_classes=num_classes,
        in_channels=in_channels,
        aux_logits=aux_logits,
        transform_input=transform_input,
        dropout=dropout,
    )


@register_model(family="googlenet", paper=PAPER)
def googlenet(
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    aux_logits: bool = True,
    transform_input: bool = False,
    dropout: float = 0.2,
) -> GoogLeNet:
    """torchvision's GoogLeNet (batch norm, 3x3 in the "5x5" branch), with its two auxiliary classifiers."""
    return _googlenet("googlenet", "torchvision", num_classes, in_channels, aux_logits, dropout, transform_input)


@register_model(family="googlenet", paper=PAPER)
def googlenet_paper(
    *, num_classes: int = 1000, in_channels: int = 3, aux_logits: bool = True, dropout: float = 0.4
) -> GoogLeNet:
    """Inception v1 as the paper: no batch norm, LRN in the stem, real 5x5 convs, auxiliary heads (pool 5x5/3);
    the BVLC reproduction's initialisation (Caffe xavier, biases 0.2, classifier biases 0)."""
    return _googlenet("googlenet_paper", "paper", num_classes, in_channels, aux_logits, dropout)


@register_model(family="googlenet_cifar", paper=PAPER, input_size=(3, 32, 32))
def googlenet_cifar(
    *, num_classes: int = 10, in_channels: int = 3, aux_logits: bool = False, dropout: float = 0.0
) -> GoogLeNet:
    """The CIFAR adaptation: one 3x3 conv stem (192), no early pooling, batch norm, real 5x5 convs."""
    return _googlenet("googlenet_cifar", "cifar", num_classes, in_channels, aux_logits, dropout)
