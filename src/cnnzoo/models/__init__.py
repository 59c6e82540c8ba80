"""The classic CNNs, one file per family, behind one registry.

Importing the package imports every module in it, and importing a family's module registers its builders: adding a
family is adding one file (no import list to forget). Private modules (``_common``) and the registry are skipped.
"""

from __future__ import annotations

import importlib
import pkgutil

from torch import nn

from cnnzoo.models.registry import ModelInfo, build_model, get_model_info, list_models, register_model

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "registry":
        importlib.import_module(f"{__name__}.{_module.name}")


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    weights: str | None = None,
    download: bool = False,
    **kwargs,
) -> nn.Module:
    """Build the model registered as ``name`` (:func:`~cnnzoo.models.registry.build_model`).

    ``num_classes`` and ``in_channels`` are passed only when given, so each builder's own defaults apply (10 classes
    for the CIFAR nets, 1000 for the ImageNet ones; 3 channels). Other keyword arguments are family options
    (``aux_logits``, ``variant``, ``shortcut``, ...). A bad size or an unknown option is a :class:`CnnzooError`.
    ``weights``: start from these (:mod:`cnnzoo.models.weights`: a torchvision weights name, a state_dict file or a
    run directory; by default built for the weights' class count); ``download`` lets a torchvision file missing from
    torch.hub's cache be fetched. (Here, above both, so that the registry and the weights never import each other.)
    """
    if weights is None:
        return build_model(name, num_classes=num_classes, in_channels=in_channels, **kwargs)
    from cnnzoo.models.weights import create_pretrained

    return create_pretrained(
        name, weights, num_classes=num_classes, in_channels=in_channels, download=download, **kwargs
    )


__all__ = ["ModelInfo", "build_model", "create_model", "get_model_info", "list_models", "register_model"]
