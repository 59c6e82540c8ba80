"""Fine-tuning from starting weights: what a run takes from ``--weights``, freezing, layer-wise learning rates.

- :func:`start_config`: the config with what the weights prescribe filled in where the user gave nothing:
  normalisation mean/std, input channels and size (torchvision's ``weights.transforms()``, or the source run's),
  GoogLeNet's ``transform_input``, and the canonical weights name (``DEFAULT`` becomes
  ``ResNet50_Weights.IMAGENET1K_V2``, a path becomes absolute). The resolved values go into ``config.toml`` and every
  checkpoint, so evaluating and resuming the run never needs the weights again.
- :func:`load_start`: reads the weights (``weights_only=True``), copies them into the new run's model (a new class
  count re-initialises the classifier, and the log says so) and records the file's SHA-256.
- :func:`freeze`: ``--freeze backbone`` trains only the classifier (a linear probe); ``--freeze-until STAGE`` keeps
  every layer up to and including STAGE fixed. Frozen parameters get ``requires_grad=False`` (the optimizer never
  sees them) and frozen batch-norm layers stay in eval mode under ``net.train()``: they normalise with the running
  statistics of the weights and never update them (as torchvision's detection references' ``FrozenBatchNorm2d``,
  while keeping BN's own state_dict keys so checkpoints load into the plain model).
- :func:`lr_scales`: ``--backbone-lr-scale F``: every parameter outside the classifier learns at F times the
  scheduled lr (the "discriminative" / layer-wise learning rates of ULMFiT, Howard & Ruder 2018, and timm's
  ``layer_decay`` in its simplest form). The optimizer's groups carry the factor as ``lr_scale`` and
  :func:`cnnzoo.train.engine.set_lr` multiplies the one schedule ``lr_at`` by it, so warm-up and decay apply alike.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

from torch import nn

from cnnzoo.errors import CnnzooError
from cnnzoo.models.weights import classifier_layers, fetch_state_dict, load_state, resolve_weights
from cnnzoo.train.config import TrainConfig

# --- the run's config and its starting weights ---------------------------------------------------------------------


def start_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the weights' preprocessing, GoogLeNet option and canonical name filled in (no tensors read)."""
    if not cfg.weights:
        return cfg
    if cfg.weights_sha256 and cfg.mean and cfg.image_size is not None:  # already resolved (a resumed run)
        return cfg
    spec = resolve_weights(cfg.model, cfg.weights)
    values: dict[str, Any] = {"weights": spec.name}
    if not cfg.mean and spec.mean is not None:
        # A run's weights meet the data's own channels; torchvision's are given 3 (grey data is repeated).
        own = cfg.in_channels or (data_channels(cfg) if spec.source == "run" else len(spec.mean))
        if own == len(spec.mean):
            values["mean"], values["std"] = list(spec.mean), list(spec.std)
            values["in_channels"] = own
        else:  # the data keeps its channels and its own normalisation; load_start adapts the first convolution
            values["in_channels"] = own
    if cfg.image_size is None and spec.crop_size is not None:
        values["image_size"] = spec.crop_size
    if cfg.transform_input is None and "transform_input" in spec.options:
        values["transform_input"] = spec.options["transform_input"]
    return dataclasses.replace(cfg, **values)


def load_start(model: nn.Module, cfg: TrainConfig, log=print) -> str:
    """Copy ``cfg.weights`` into ``model`` (a new run's); returns the weights file's SHA-256. A ``cfg.weights_sha256``
    given beforehand must match (a pinned start)."""
    spec = resolve_weights(cfg.model, cfg.weights)
    state, digest = fetch_state_dict(spec, download=cfg.download)
    if cfg.weights_sha256 and cfg.weights_sha256 != digest:
        raise CnnzooError(f"{spec.file}: sha256 {digest[:16]}... is not the expected {cfg.weights_sha256[:16]}...")
    note = adapt_first_conv(model, state, source=spec.name)
    if note:
        log(note)
    for note in load_state(model, state, source=spec.name):
        log(note)
    log(f"starting from {spec.name} ({spec.file.name}, sha256 {digest[:12]})")
    return digest


def data_channels(cfg: TrainConfig) -> int:
    """The channels ``cfg.data`` has of its own (1 for the grey datasets, 3 for colour; an image folder's from its
    scan, which the data loader caches)."""
    own = {"digits": 1, "mnist": 1, "fashion-mnist": 1, "cifar10": 3, "cifar100": 3}
    if cfg.data in own:
        return own[cfg.data]
    from cnnzoo.data.load import decode

    decoded = decode(cfg.data, data_dir=cfg.data_dir, download=cfg.download or None)
    return int(getattr(decoded, "in_channels", None) or decoded.train_images.shape[1])


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    return next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def adapt_first_conv(model: nn.Module, state: dict[str, Any], *, source: str) -> str | None:
    """Fit the first convolution's kernels in ``state`` (changed in place) to ``model``'s input channels when they
    differ, as timm's ``adapt_input_conv`` does: 3 -> 1 sums the kernels over the channels (a grey image is the same
    value in R, G and B, so the summed kernel gives the same response), 1 -> 3 repeats the kernel on each channel and
    divides it by 3 (a grey image repeated into 3 channels gives the same response). Returns the one line saying
    so, None when the channels agree; any other pair is refused in one line naming ``--in-channels``."""
    found = _first_conv(model)
    if found is None or f"{found[0]}.weight" not in state:
        return None
    name, conv = found
    key = f"{name}.weight"
    kernel = state[key]
    have, want = int(kernel.shape[1]), conv.in_channels
    if have == want or kernel.dim() != 4 or conv.groups != 1:
        return None
    if (have, want) == (3, 1):
        state[key] = kernel.sum(dim=1, keepdim=True)
        how = "its kernels summed over the 3 channels"
    elif (have, want) == (1, 3):
        state[key] = kernel.repeat(1, 3, 1, 1) / 3
        how = "its kernel repeated on each of the 3 channels and divided by 3"
    else:
        raise CnnzooError(
            f"{source}: the weights take {have}-channel images, the data has {want}: cannot adapt the first "
            f"convolution; pass --in-channels {have}"
        )
    return (
        f"{source}: the weights were trained on {have}-channel images and the data has {want}: the first convolution "
        f"({name}) is adapted, {how} (as timm does); normalisation: the data's own; --in-channels {have} would "
        "convert the data instead"
    )


def model_options(cfg: TrainConfig) -> dict[str, Any]:
    """Builder options from the config's fine-tuning fields (``transform_input`` for GoogLeNet)."""
    return {} if cfg.transform_input is None else {"transform_input": cfg.transform_input}


# --- freezing ------------------------------------------------------------------------------------------------------


def _eval_only_train(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train()`` of a frozen BN layer: it stays in eval mode (running statistics used, never updated)."""
    return nn.Module.train(self, False)


def frozen_layers(model: nn.Module, cfg: TrainConfig) -> list[str]:
    """Names of the modules whose parameters ``cfg.freeze`` / ``cfg.freeze_until`` keep fixed (in model order)."""
    heads = classifier_layers(model)
    named = [(n, m) for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
    if cfg.freeze == "backbone":
        return [n for n, _ in named if not any(n == h or n.startswith(h + ".") for h in heads)]
    if not cfg.freeze_until:
        return []
    stage = cfg.freeze_until
    names = [n for n, _ in model.named_modules()]
    if stage not in names or stage == "":
        stages = getattr(model, "stages", None) or [n for n, _ in model.named_children()]
        raise CnnzooError(
            f"--freeze-until {stage}: {cfg.model} has no layer of that name (its stages: {', '.join(stages)})"
        )
    # Every module registered up to the end of STAGE's subtree (registration order is forward order in every family).
    end = max(i for i, n in enumerate(names) if n == stage or n.startswith(stage + "."))
    keep = set(names[: end + 1])
    frozen = [n for n, _ in named if n in keep]
    if any(n == h or n.startswith(h + ".") for n in frozen for h in heads):
        raise CnnzooError(f"--freeze-until {stage}: that freezes the classifier too; name an earlier stage")
    return frozen


def freeze(model: nn.Module, cfg: TrainConfig, log=None) -> list[str]:
    """Apply ``cfg.freeze`` / ``cfg.freeze_until`` to ``model`` (before its optimizer is made); returns the frozen
    module names (and ``log``s a line saying how many parameters still train)."""
    frozen = frozen_layers(model, cfg)
    modules = dict(model.named_modules())
    for name in frozen:
        module = modules[name]
        for p in module.parameters(recurse=False):
            p.requires_grad_(False)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train = types.MethodType(_eval_only_train, module)  # a bound method: deepcopy (EMA) rebinds it
            module.eval()
    if frozen and log is not None:
        log(describe_freeze(model, frozen))
    return frozen


def describe_freeze(model: nn.Module, frozen: list[str]) -> str:
    """One line: how many parameters train."""
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"frozen: {len(frozen)} layers; {trained:,} of {total:,} parameters train"


# --- layer-wise learning rates -------------------------------------------------------------------------------------


def lr_scales(model: nn.Module, backbone_lr_scale: float) -> dict[str, float]:
    """Parameter name -> factor on the scheduled lr: ``backbone_lr_scale`` outside the classifier, 1 inside it."""
    heads = classifier_layers(model)
    return {
        name: 1.0 if any(name.startswith(h + ".") for h in heads) else backbone_lr_scale
        for name, _ in model.named_parameters()
    }
