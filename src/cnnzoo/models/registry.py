"""The model registry: ``@register_model``, :func:`list_models`, :func:`create_model`.

Names are the builders' names. Each builder is keyword-only (``num_classes``, ``in_channels``, plus family options)
and returns an ``nn.Module``. The registry also records what the CLI tables show: family, paper and default input.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from cnnzoo.errors import CnnzooError


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model without building it."""

    name: str
    family: str  # "alexnet", "vgg", "googlenet", "resnet", "resnet_cifar", "plain", ...
    paper: str  # short citation, e.g. "He et al. 2016"
    input_size: tuple[int, int, int]  # default (C, H, W) the model is meant for
    builder: Callable[..., nn.Module]


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(*, family: str, paper: str, input_size: tuple[int, int, int] = (3, 224, 224)):
    """Decorator: register a keyword-only builder under its own function name."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _REGISTRY:
            raise RuntimeError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelInfo(name=name, family=family, paper=paper, input_size=input_size, builder=fn)
        return fn

    return wrap


def list_models(family: str | None = None) -> list[str]:
    """All registered model names (optionally of one family), sorted."""
    return sorted(n for n, info in _REGISTRY.items() if family is None or info.family == family)


def get_model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``; an unknown name raises a :class:`CnnzooError` suggesting close names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `cnnzoo models` lists them"
        raise CnnzooError(f"unknown model {name!r}{hint}") from None


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    weights: str | None = None,
    download: bool = False,
    **kwargs,
) -> nn.Module:
    """Build the model registered as ``name``.

    ``num_classes`` and ``in_channels`` are passed to every builder; other keyword arguments are family options
    (``aux_logits``, ``variant``, ``shortcut``, ...). An unknown option is a :class:`CnnzooError`.
    ``weights``: start from these (:mod:`cnnzoo.models.weights`: a torchvision weights name, a state_dict file or a
    run directory); ``download`` lets a torchvision file missing from torch.hub's cache be fetched.
    """
    if weights is not None:
        from cnnzoo.models.weights import create_pretrained

        sizes = {"num_classes": num_classes, "in_channels": in_channels}
        return create_pretrained(name, weights, download=download, **sizes, **kwargs)
    info = get_model_info(name)
    if num_classes < 1:
        raise CnnzooError(f"num_classes must be >= 1, got {num_classes}")
    if in_channels < 1:
        raise CnnzooError(f"in_channels must be >= 1, got {in_channels}")
    try:
        return info.builder(num_classes=num_classes, in_channels=in_channels, **kwargs)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise CnnzooError(f"{name}: {e}") from None
        raise
