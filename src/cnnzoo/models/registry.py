"""The model registry: ``@register_model``, :func:`list_models`, :func:`build_model`.

Names are the builders' names. Each builder is keyword-only (``num_classes``, ``in_channels``, plus family options)
and returns an ``nn.Module``. The registry also records what the CLI tables show: family, paper and default input.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from cnnzoo.errors import CnnzooError


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model without building it."""

    name: str
    family: str  # the architecture (the name's prefix: "resnet", "plain", ...), + "_cifar" for 32x32 nets
    paper: str  # "Authors year, Title (venue, arXiv id)"; tables show the part before the first comma
    input_size: tuple[int, int, int]  # default (C, H, W) the model is meant for
    builder: Callable[..., nn.Module]

    @property
    def arch(self) -> str:
        """The architecture: the family label without its ``_cifar`` suffix, and the prefix of every model name in
        it (``plain`` names a residual family's twin without shortcuts)."""
        return self.family.removesuffix("_cifar")

    @property
    def depth(self) -> int | None:
        """The number after the architecture in the name (``<arch><depth or config>[_bn][_<style>]``): the layer
        count of ResNets and plain nets (``resnet56`` -> 56), VGG's configuration; None when there is none."""
        found = re.match(rf"{re.escape(self.arch)}(\d+)", self.name)
        return int(found.group(1)) if found else None

    @property
    def num_classes(self) -> int:
        """The builder's own default number of classes (1000 for ImageNet nets, 10 for the CIFAR ones)."""
        return inspect.signature(self.builder).parameters["num_classes"].default


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


def list_models(pattern: str | None = None, *, family: str | None = None) -> list[str]:
    """Registered model names, sorted: all, those matching ``pattern`` (fnmatch wildcards: ``"resnet*"``,
    ``"*_cifar"``), and/or those of one ``family``."""
    return sorted(
        n
        for n, info in _REGISTRY.items()
        if (pattern is None or fnmatch.fnmatchcase(n, pattern)) and (family is None or info.family == family)
    )


def get_model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``; an unknown name raises a :class:`CnnzooError` suggesting close names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `cnnzoo models` lists them"
        raise CnnzooError(f"unknown model {name!r}{hint}") from None


def build_model(name: str, *, num_classes: int | None = None, in_channels: int | None = None, **kwargs) -> nn.Module:
    """Build the model registered as ``name``, freshly initialised (``cnnzoo.create_model`` adds starting weights).

    ``num_classes`` and ``in_channels`` are passed only when given, so each builder's own defaults apply (10 classes
    for the CIFAR nets, 1000 for the ImageNet ones; 3 channels). Other keyword arguments are family options
    (``aux_logits``, ``variant``, ``shortcut``, ...). A bad size or an unknown option is a :class:`CnnzooError`.
    """
    info = get_model_info(name)
    sizes = {"num_classes": num_classes, "in_channels": in_channels}
    for key, value in sizes.items():
        # bool is an int in Python, but True classes is a mistake, not 1.
        if value is not None and (not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1):
            raise CnnzooError(f"{name}: {key} must be an integer >= 1, got {value!r}")
    try:
        return info.builder(**{k: v for k, v in sizes.items() if v is not None}, **kwargs)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise CnnzooError(f"{name}: {e}") from None
        raise
