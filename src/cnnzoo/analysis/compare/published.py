"""Published accuracies that fill the overview's accuracy column where no run of this machine is given.

At ImageNet size: the top-1 of torchvision's IMAGENET1K_V1 weights for the same architecture (read from the
weights' metadata, no download). At 32x32: the CIFAR-10 test accuracy of an equivalent public implementation,
each with its source as printed there; where the equivalence or the number could not be confirmed the source says so.
A figure measured from ``--runs`` always wins over these.
"""

from __future__ import annotations

from cnnzoo.analysis.compare.worker import TORCHVISION

AKAMASTER = "akamaster/pytorch_resnet_cifar10 README (test error {err}%, the paper's option A net)"
KUANGLIU = "kuangliu/pytorch-cifar README ({net}, same CIFAR adaptation)"

# model -> (CIFAR-10 test top-1 as a fraction, source). Error rates are converted as 1 - error.
CIFAR10: dict[str, tuple[float, str]] = {
    "resnet20": (1 - 0.0827, AKAMASTER.format(err="8.27")),
    "resnet32": (1 - 0.0737, AKAMASTER.format(err="7.37")),
    "resnet44": (1 - 0.0690, AKAMASTER.format(err="6.90")),
    "resnet56": (1 - 0.0661, AKAMASTER.format(err="6.61")),
    "resnet110": (1 - 0.0632, AKAMASTER.format(err="6.32")),
    "resnet1202": (1 - 0.0793, "He et al. 2016, Table 6 (test error 7.93%)"),
    "vgg16_cifar": (0.9264, KUANGLIU.format(net="VGG16")),
    "resnet18_cifar": (0.9302, KUANGLIU.format(net="ResNet18")),
    "resnet50_cifar": (0.9362, KUANGLIU.format(net="ResNet50")),
    "googlenet_cifar": (
        0.942,
        "Nyquixt/cnn-cifar README (GoogLeNet, 200 epochs); its architecture not checked against ours, and "
        "kuangliu/pytorch-cifar's README table lists no GoogLeNet: unconfirmed",
    ),
    "alexnet_cifar": (
        0.82,
        "Krizhevsky's cuda-convnet layers-18pct (about 18% test error, the net this one is sized after, not the same "
        "net): unconfirmed",
    ),
}


def published_top1(name: str) -> float | None:
    """ImageNet top-1 (fraction) of torchvision's IMAGENET1K_V1 weights for this architecture; None if none.

    Read from the weights' metadata, no download. ``*_cifar`` and ``*_paper`` variants share no weights: None.
    """
    if name not in TORCHVISION:
        return None
    from torchvision.models import get_model_weights

    try:
        weights = get_model_weights(name)["IMAGENET1K_V1"]
    except (KeyError, ValueError):
        return None
    return weights.meta["_metrics"]["ImageNet-1K"]["acc@1"] / 100


def published_accuracy(name: str, input_shape: tuple[int, int, int]) -> tuple[float, str] | None:
    """(accuracy, source) published for ``name`` at this input size: ImageNet above 64x64, CIFAR-10 up to 64x64."""
    if input_shape[1] > 64:
        top1 = published_top1(name)
        return None if top1 is None else (top1, "published ImageNet top-1 (torchvision weights)")
    if name in CIFAR10:
        acc, source = CIFAR10[name]
        return acc, f"published CIFAR-10: {source}"
    return None
