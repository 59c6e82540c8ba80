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
- ``googlenet_paper`` follows the paper: no batch norm (convs with bias + ReLU), LRN in the stem (size 5, alpha 1e-4,
  beta 0.75, k 1: the paper gives no values; these are the BVLC Caffe reproduction's), real 5x5 convs, 3x3/2 pools,
  auxiliary pool 5x5/3, dropout 0.4. The paper trained with DistBelief and does not give the initialisation; we use
  the BVLC reproduction's Xavier weights and bias 0.2. Input 224x224 exactly (the auxiliary FC layers take 4x4x128).
- ``googlenet_cifar`` (not in the paper) is the common CIFAR adaptation (kuangliu/pytorch-cifar): the stem becomes
  one 3x3 conv with 192 filters and no early pooling, the same Inception table with batch norm, 3x3/2 max pools
  (padding 1) after 3b and 4e (32 -> 16 -> 8; 28 -> 14 -> 7), global average pool, linear, no dropout by default.
  One difference from kuangliu's code: it builds the "5x5" branch as two stacked 3x3 convs; we keep the table's
  single 5x5 conv, so the three variants share one Inception class. No auxiliary heads by default
  (``aux_logits=True`` adds torchvision's adaptive ones): at 32x32 the net is shallow enough to train without them.
- ``in_channels`` replaces only the first conv's input channels; ``transform_input`` (torchvision's conversion of
  ImageNet-normalised input to the [-1, 1] scaling of Google's weights) is kept, off by default.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cnnzoo.models._common import check_input
from cnnzoo.models.registry import register_model

PAPER = "Szegedy et al. 2015, Going Deeper with Convolutions (arXiv:1409.4842)"

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

Variant = Literal["torchvision", "paper", "cifar"]


class BasicConv2d(nn.Module):
    """conv -> BN (eps 1e-3) -> ReLU, torchvision's block (no conv bias: BN has one)."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class ConvReLU(nn.Module):
    """conv (with bias) -> ReLU: the paper's block, before batch norm existed."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x), inplace=True)


class Inception(nn.Module):
    """Four branches concatenated on channels: 1x1 | 1x1 -> 3x3 | 1x1 -> "5x5" | 3x3 max pool -> 1x1."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int, *, block: type[nn.Module] = BasicConv2d, k5: int = 5) -> None:  # fmt: skip
        super().__init__()
        self.branch1 = block(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(block(in_channels, ch3x3red, kernel_size=1),
                                     block(ch3x3red, ch3x3, kernel_size=3, padding=1))  # fmt: skip
        # k5 = 3 in torchvision's googlenet (see the module docstring), 5 as the paper.
        self.branch3 = nn.Sequential(block(in_channels, ch5x5red, kernel_size=1),
                                     block(ch5x5red, ch5x5, kernel_size=k5, padding=k5 // 2))  # fmt: skip
        self.branch4 = nn.Sequential(nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
                                     block(in_channels, pool_proj, kernel_size=1))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier: pool to 4x4, 1x1 conv 128, FC 1024 + ReLU, dropout 0.7, FC classes."""

    def __init__(self, in_channels: int, num_classes: int, *, block: type[nn.Module] = BasicConv2d,
                 paper_pool: bool = False, dropout: float = 0.7) -> None:  # fmt: skip
        super().__init__()
        # The paper: average pool 5x5 stride 3 (14x14 -> 4x4); torchvision: adaptive to 4x4 (any input size).
        self.pool = nn.AvgPool2d(kernel_size=5, stride=3) if paper_pool else nn.AdaptiveAvgPool2d((4, 4))
        self.conv = block(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.conv(self.pool(x)), 1)  # (N, 2048)
        return self.fc2(self.dropout(F.relu(self.fc1(x), inplace=True)))


class GoogLeNet(nn.Module):
    """GoogLeNet in three variants sharing the Inception table: ``torchvision``, ``paper`` and ``cifar``."""

    def __init__(self, name: str, *, num_classes: int, in_channels: int = 3, variant: Variant = "torchvision",
                 aux_logits: bool = True, transform_input: bool = False, dropout: float = 0.2,
                 dropout_aux: float = 0.7) -> None:  # fmt: skip
        super().__init__()
        self.name, self.in_channels, self.variant = name, in_channels, variant
        self.aux_logits, self.transform_input = aux_logits, transform_input
        paper, cifar = variant == "paper", variant == "cifar"
        block = ConvReLU if paper else BasicConv2d
        k5 = 3 if variant == "torchvision" else 5

        # The stem (Figure 3). Attribute names are torchvision's; the CIFAR stem is conv1 alone.
        if cifar:
            self.conv1 = block(in_channels, 192, kernel_size=3, padding=1)
        else:
            self.conv1 = block(in_channels, 64, kernel_size=7, stride=2, padding=3)  # 224 -> 112
            self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)  # -> 56
            self.lrn1 = LRN() if paper else nn.Identity()
            self.conv2 = block(64, 64, kernel_size=1)
            self.conv3 = block(64, 192, kernel_size=3, padding=1)
            self.lrn2 = LRN() if paper else nn.Identity()
            self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)  # -> 28

        channels = 192
        for entry in INCEPTION:
            if isinstance(entry, str):  # 28 -> 14 -> 7 (CIFAR: 32 -> 16 -> 8)
                pool = nn.MaxPool2d(2, stride=2, ceil_mode=True) if entry == "maxpool4" and not (paper or cifar) \
                    else nn.MaxPool2d(3, stride=2, padding=1 if cifar else 0, ceil_mode=not cifar)
                setattr(self, entry, pool)
                continue
            name_, *widths = entry
            setattr(self, name_, Inception(channels, *widths, block=block, k5=k5))
            channels = widths[0] + widths[2] + widths[4] + widths[5]

        if aux_logits:  # on 4a (512 channels) and 4d (528 channels)
            self.aux1 = InceptionAux(512, num_classes, block=block, paper_pool=paper, dropout=dropout_aux)
            self.aux2 = InceptionAux(528, num_classes, block=block, paper_pool=paper, dropout=dropout_aux)
        else:
            self.aux1 = self.aux2 = None
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))  # global average pooling (section 5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(1024, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if self.variant == "paper":  # BVLC Caffe reproduction: Xavier, bias 0.2
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.constant_(m.bias, 0.2)
                else:  # torchvision: truncated normal, std 0.01
                    nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised input -> the (x - 0.5) / 0.5 scaling Google's weights were trained on (torchvision)."""
        if not self.transform_input:
            return x
        x_ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
        x_ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
        x_ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
        return torch.cat((x_ch0, x_ch1, x_ch2), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | GoogLeNetOutputs:
        if self.variant == "paper":  # the auxiliary heads' FC layers take exactly 4x4x128
            check_input(x, name=self.name, in_channels=self.in_channels, exact_size=224)
        else:
            # Smallest side leaving every pool a non-empty map: 15 px (ImageNet stem, ceil-mode pools), any (CIFAR).
            check_input(x, name=self.name, in_channels=self.in_channels, min_size=1 if self.variant == "cifar" else 15)
        x = self._transform_input(x)
        if self.variant == "cifar":
            x = self.conv1(x)
        else:
            x = self.maxpool1(self.conv1(x))
            x = self.maxpool2(self.lrn2(self.conv3(self.conv2(self.lrn1(x)))))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        aux1 = self.aux1(x) if self.aux1 is not None and self.training else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if self.aux2 is not None and self.training else None
        x = self.maxpool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        x = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
        if self.training and self.aux_logits:
            return GoogLeNetOutputs(x, aux2, aux1)
        return x


def LRN() -> nn.LocalResponseNorm:  # noqa: N802  (reads as the layer it is)
    """The stem's local response normalisation (BVLC GoogLeNet values; the paper gives none)."""
    return nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=1.0)


@register_model(family="googlenet", paper=PAPER)
def googlenet(*, num_classes: int = 1000, in_channels: int = 3, aux_logits: bool = True,
              transform_input: bool = False, dropout: float = 0.2) -> GoogLeNet:  # fmt: skip
    """torchvision's GoogLeNet (batch norm, 3x3 in the "5x5" branch), with its two auxiliary classifiers."""
    return GoogLeNet("googlenet", num_classes=num_classes, in_channels=in_channels, aux_logits=aux_logits,
                     transform_input=transform_input, dropout=dropout)  # fmt: skip


@register_model(family="googlenet", paper=PAPER)
def googlenet_paper(*, num_classes: int = 1000, in_channels: int = 3, aux_logits: bool = True,
                    dropout: float = 0.4) -> GoogLeNet:  # fmt: skip
    """Inception v1 as the paper: no batch norm, LRN in the stem, real 5x5 convs, auxiliary heads (pool 5x5/3)."""
    return GoogLeNet("googlenet_paper", num_classes=num_classes, in_channels=in_channels, variant="paper",
                     aux_logits=aux_logits, dropout=dropout)  # fmt: skip


@register_model(family="googlenet", paper=PAPER, input_size=(3, 32, 32))
def googlenet_cifar(*, num_classes: int = 10, in_channels: int = 3, aux_logits: bool = False,
                    dropout: float = 0.0) -> GoogLeNet:  # fmt: skip
    """The CIFAR adaptation: one 3x3 conv stem (192), no early pooling, batch norm, real 5x5 convs."""
    return GoogLeNet("googlenet_cifar", num_classes=num_classes, in_channels=in_channels, variant="cifar",
                     aux_logits=aux_logits, dropout=dropout)  # fmt: skip
