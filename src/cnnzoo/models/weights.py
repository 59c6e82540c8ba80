"""Starting weights: torchvision's by name, a state_dict file, or a cnnzoo run directory's best weights.

A weights spec is one string, resolved by :func:`resolve_weights`:

- a torchvision weights name for the torchvision-named models (``alexnet``, ``vgg11..19(_bn)``, ``googlenet``,
  ``resnet18..152``, whose layouts load torchvision's ``state_dict()`` key for key): ``DEFAULT``,
  ``IMAGENET1K_V1``, ``IMAGENET1K_V2`` or the full enum name (``ResNet50_Weights.IMAGENET1K_V2``). The file is
  torchvision's, in torch.hub's cache (``$TORCH_HOME/hub/checkpoints``). The cache is checked first: a missing
  file is fetched (with ``Weights.get_state_dict``, hash-checked) only when the caller allows the network
  (``download=True``, ``--download``); otherwise it is a one-line error naming the file and the folder, so an
  offline machine never waits on a connection;
- the path of a state_dict file (``.pth`` / ``.pt``: a dict of tensors, a cnnzoo checkpoint, or a dict holding one
  under ``"state_dict"`` or ``"model"``; ``module.`` and ``_orig_mod.`` prefixes from DDP / torch.compile dropped);
  ``.safetensors`` with the ``safetensors`` extra installed;
- a cnnzoo run directory: its ``best.pt``, with the run's preprocessing and class names.

Every file is read with ``torch.load(..., weights_only=True)``: tensors and plain containers only, nothing runs.

:func:`load_state` puts the tensors into a built model. A different class count is the one mismatch it repairs:
the classifier (every ``nn.Linear`` that outputs the classes: ResNet's and GoogLeNet's ``fc``, the last layer of
VGG's and AlexNet's ``classifier``, GoogLeNet's auxiliary ``aux1.fc2`` / ``aux2.fc2``) keeps the fresh
initialisation of the model built for the new count, and the caller is told so. GoogLeNet's auxiliary heads are
dropped when the model has none (torchvision's ``aux_logits=False`` does the same). Any other missing, extra or
misshapen key is an error listing them.

torchvision's GoogLeNet weights were trained (ported from TensorFlow) on inputs scaled to [-1, 1]; its builder
sets ``transform_input=True`` for them, which converts ImageNet-normalised input to that scale in ``forward``.
:attr:`WeightsSpec.options` carries the same for cnnzoo's ``googlenet``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from cnnzoo import serialize
from cnnzoo.atomic import check_regular
from cnnzoo.errors import CnnzooError

_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers' key prefixes


@dataclass
class WeightsSpec:
    """A resolved weights spec: where the tensors come from and the preprocessing that travels with them."""

    source: str  # "torchvision" | "file" | "run"
    name: str  # canonical: "ResNet18_Weights.IMAGENET1K_V1", or the absolute path of the file / run directory
    file: Path  # the file holding the tensors (for torchvision: where torch.hub caches it)
    url: str | None = None  # torchvision: where it is downloaded from
    num_classes: int | None = None  # the classifier size of the weights (None: unknown until read)
    categories: list[str] | None = None  # class names, index order
    mean: tuple[float, ...] | None = None  # normalisation the weights were trained with
    std: tuple[float, ...] | None = None
    crop_size: int | None = None  # evaluation: centre crop side
    resize_size: int | None = None  # evaluation: shorter side resized to this first
    options: dict[str, Any] = field(default_factory=dict)  # builder options the weights need (transform_input)


def looks_like_path(spec: str) -> bool:
    """A spec names a file or folder (rather than a torchvision weights name)."""
    suffixes = (".pt", ".pth", ".safetensors")
    return os.sep in spec or "/" in spec or spec.startswith((".", "~")) or spec.endswith(suffixes)


def resolve_weights(model: str, spec: str) -> WeightsSpec:
    """The :class:`WeightsSpec` of ``spec`` for the model named ``model``, without reading any tensors (a run
    directory's checkpoint is read for its metadata)."""
    spec = str(spec).strip()
    if not spec:
        raise CnnzooError("--weights is empty: expected a torchvision weights name, a .pth file or a run directory")
    path = Path(spec).expanduser()
    if path.is_dir():
        return _run_spec(model, path)
    if path.exists() or looks_like_path(spec):
        if not path.is_file():
            raise CnnzooError(f"{spec}: no such weights file (expected a .pth/.pt state_dict or a run directory)")
        return WeightsSpec("file", str(path.resolve()), path.resolve())
    return _torchvision_spec(model, spec)


def torchvision_weights(model: str, name: str):
    """The torchvision weights enum member ``name`` (short like ``IMAGENET1K_V1`` / ``DEFAULT``, or the full enum
    name) for the model ``model``; an unknown model or name is a one-line :class:`CnnzooError`."""
    from torchvision.models import get_model_weights, get_weight

    try:
        enum = get_model_weights(model)
    except (ValueError, KeyError):
        raise CnnzooError(
            f"{model}: torchvision has no weights for this model (torchvision names: alexnet, vgg11..19(_bn), "
            f"googlenet, resnet18..152); give --weights a .pth file or a run directory instead"
        ) from None
    if "." in name:  # the full enum name
        try:
            member = get_weight(name)
        except (ValueError, KeyError, AttributeError):
            member = None
        if member is None or type(member) is not enum:
            raise CnnzooError(f"{name}: not a weights name of {model} (its names: {_names(enum)})")
        return member
    try:
        return enum[name]
    except KeyError:
        raise CnnzooError(f"{model}: no torchvision weights named {name!r} (its names: {_names(enum)})") from None


def _names(enum) -> str:
    return ", ".join(enum.__members__) + f" or {enum.__name__}.NAME"


def hub_checkpoints() -> Path:
    """The folder torch.hub (and so torchvision) caches weights files in: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _torchvision_spec(model: str, name: str) -> WeightsSpec:
    w = torchvision_weights(model, name)
    t = w.transforms()  # torchvision's ImageClassification: the eval preprocessing the weights were measured with
    categories = list(w.meta.get("categories") or []) or None
    return WeightsSpec(
        source="torchvision",
        name=f"{type(w).__name__}.{w.name}",
        file=hub_checkpoints() / os.path.basename(urlparse(w.url).path),
        url=w.url,
        num_classes=len(categories) if categories else None,
        categories=categories,
        mean=tuple(t.mean),
        std=tuple(t.std),
        crop_size=t.crop_size[0],
        resize_size=t.resize_size[0],
        options={"transform_input": True} if model == "googlenet" else {},
    )


def _run_spec(model: str, run_dir: Path) -> WeightsSpec:
    from cnnzoo import serialize as checkpoint  # the safe loader, below the trainer

    best = run_dir / "best.pt"
    if not best.is_file():
        raise CnnzooError(f"{run_dir}: no best.pt (expected a cnnzoo run directory that finished an epoch)")
    ckpt = checkpoint.load(best)
    meta, config = ckpt["meta"], ckpt["config"]
    if meta["model"] != model:
        raise CnnzooError(f"{run_dir}: the run trained {meta['model']}, not {model}")
    return WeightsSpec(
        source="run",
        name=str(run_dir.resolve()),
        file=best.resolve(),
        num_classes=meta["num_classes"],
        categories=list(meta["classes"]),
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        crop_size=meta["image_size"],
        options={"transform_input": True} if config.get("transform_input") else {},
    )


# --- reading -------------------------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    """The hex SHA-256 of a file (read in 1 MiB blocks)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fetch_state_dict(
    spec: WeightsSpec, *, download: bool = False, progress: bool = True
) -> tuple[dict[str, torch.Tensor], str]:
    """(state_dict, sha256 of its file) for ``spec``. A torchvision file missing from the cache is downloaded by
    torchvision's own code only with ``download=True``; else a one-line error says which file to put where."""
    if spec.source == "torchvision":
        if not spec.file.is_file():
            if not download:
                raise CnnzooError(
                    f"{spec.name}: weights file {spec.file.name} is not in {spec.file.parent} (offline); download it "
                    f"from {spec.url} into that folder, or pass --download (download=True) to fetch it"
                )
            _download(spec, progress)
        digest = sha256(spec.file)
        _check_hub_hash(spec.file, digest)
        return _read_file(spec.file), digest
    if spec.source == "run":
        from cnnzoo import serialize as checkpoint  # the safe loader, below the trainer

        return dict(checkpoint.load(spec.file)["model"]), sha256(spec.file)
    return _read_file(spec.file), sha256(spec.file)


def _check_hub_hash(path: Path, digest: str) -> None:
    """torchvision's file names carry the first hex digits of the file's SHA-256 (``resnet18-f37072fd.pth``, what
    torch.hub's ``check_hash`` verifies on download): a cached file that does not match is not those weights."""
    found = re.search(r"-([a-f0-9]{6,})\.", path.name)
    if found and not digest.startswith(found.group(1)):
        raise CnnzooError(
            f"{path}: its SHA-256 starts {digest[: len(found.group(1))]}, not {found.group(1)} as its name says: not "
            "torchvision's file (damaged or replaced); delete it and fetch it again with --download"
        )


def _download(spec: WeightsSpec, progress: bool) -> None:
    """torchvision's download into torch.hub's cache, the file's hash checked against the name's prefix."""
    from torchvision.models import get_weight

    try:
        get_weight(spec.name).get_state_dict(progress=progress, check_hash=True, weights_only=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; a hash mismatch a RuntimeError
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CnnzooError(f"{spec.name}: download from {spec.url} failed ({reason})") from None


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from a .pth/.pt (weights_only) or .safetensors file, unwrapped and without wrapper prefixes."""
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CnnzooError(f"{path}: reading .safetensors needs the package: pip install safetensors") from None
        try:
            obj: Any = load_file(str(path))
        except Exception as e:  # safetensors raises its own SafetensorError on a bad header
            raise CnnzooError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    else:
        check_regular(path, "weights file")  # a FIFO or device would block torch.load
        _check_expansion(path)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise CnnzooError(f"{path}: {serialize.refusal(str(e), 'weights file')}") from None
        except (RuntimeError, EOFError, OSError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CnnzooError(f"{path}: not a readable weights file ({reason})") from None
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):  # a cnnzoo checkpoint, or the common {"state_dict": ...} wrapper
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CnnzooError(f"{path}: not a state_dict (expected a dict of parameter names to tensors)")
    odd = [k for k in obj if not isinstance(k, str)]
    if odd:
        raise CnnzooError(f"{path}: not a state_dict ({len(odd)} key(s) that are not names, first {odd[0]!r:.40})")
    for key, value in obj.items():
        if value.layout != torch.strided:
            raise CnnzooError(f"{path}: {key} is a {value.layout} tensor; a state_dict holds dense tensors")
        if not (value.is_floating_point() or value.dtype in (torch.int64, torch.int32)) or value.is_complex():
            raise CnnzooError(f"{path}: {key} holds {value.dtype}, not floating-point weights")
    return {_strip(k): v for k, v in obj.items()}


MAX_EXPANDED = 1 << 34  # 16 GiB: more than any of torchvision's classification weights by far


def _check_expansion(path: Path) -> None:
    """Refuse, before anything is expanded, a zip (torch's file format) whose members would expand past a sane
    bound: torch stores tensors uncompressed, so a large ratio is a compression bomb, not weights."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as z:
            total = sum(info.file_size for info in z.infolist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return  # torch.load says what is wrong with it
    size = path.stat().st_size
    if total > MAX_EXPANDED or total > 4 * size + (64 << 20):
        raise CnnzooError(
            f"{path}: would expand to {total:,} bytes from {size:,}: not a weights file (a compression bomb?)"
        )


def _strip(key: str) -> str:
    for prefix in _PREFIXES:
        while key.startswith(prefix):
            key = key[len(prefix) :]
    return key


# --- loading into a model ------------------------------------------------------------------------------------------


def classifier_layers(model: nn.Module) -> list[str]:
    """Names of the layers that output the classes: every ``nn.Linear`` whose output size is that of the model's
    last ``nn.Linear`` (``fc``; VGG / AlexNet ``classifier.6``; GoogLeNet also ``aux1.fc2``, ``aux2.fc2``)."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        return []
    classes = linears[-1][1].out_features
    return [name for name, m in linears if m.out_features == classes]


def load_state(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> list[str]:
    """Copy ``state`` into ``model``; returns one line per repair made (a classifier re-initialised for another
    class count, auxiliary heads dropped). Any other mismatch raises a :class:`CnnzooError` listing the keys."""
    own = model.state_dict()
    lone = sorted(
        k for k in state if k.endswith(".bias") and k[:-5] + ".weight" in own and k[:-5] + ".weight" not in state
    )
    if lone:  # a bias without its weight: not a state_dict of this architecture
        raise CnnzooError(
            f"{source}: {len(lone)} bias(es) without their weight (first {lone[0][:-5]}.weight is missing)"
        )
    heads = classifier_layers(model)
    in_head = {k for k in own if any(k.startswith(h + ".") for h in heads)}
    notes, use = [], dict(state)
    has_aux = getattr(model, "aux1", None) is not None
    aux = sorted(k for k in use if k.startswith(("aux1.", "aux2.")) and k not in own)
    if aux and not has_aux:  # GoogLeNet weights with auxiliary heads into a model built without them
        for k in aux:
            del use[k]
        notes.append(f"{source}: auxiliary classifiers aux1, aux2 dropped (the model has none)")
    reinit = sorted({k.rsplit(".", 1)[0] for k in in_head if k in use and use[k].shape != own[k].shape})
    for k in [k for k in use if k.rsplit(".", 1)[0] in reinit]:
        del use[k]
    if reinit:
        counts = f"{state[reinit[0] + '.weight'].shape[0]} -> {own[reinit[0] + '.weight'].shape[0]} classes"
        notes.append(f"{source}: classifier {', '.join(reinit)} replaced and freshly initialised ({counts})")
    missing = [k for k in own if k not in use and k.rsplit(".", 1)[0] not in reinit]
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]  # old torchvision files predate it
    if has_aux and missing and all(k.startswith(("aux1.", "aux2.")) for k in missing):
        notes.append(f"{source}: the weights have no auxiliary classifiers; aux1, aux2 keep a fresh initialisation")
        missing = []
    unexpected = [k for k in use if k not in own]
    shapes = [
        f"{k} {tuple(use[k].shape)} vs {tuple(own[k].shape)}" for k in use if k in own and use[k].shape != own[k].shape
    ]
    problems = [("missing", missing), ("unexpected", unexpected), ("shape (weights vs model)", shapes)]
    found = [f"{what}: {_few(keys)}" for what, keys in problems if keys]
    if found:
        raise CnnzooError(f"{source}: the weights do not fit {type(model).__name__}: {'; '.join(found)}")
    model.load_state_dict(use, strict=False)
    return notes


def _few(keys: list[str], most: int = 6) -> str:
    more = f" (+{len(keys) - most} more)" if len(keys) > most else ""
    return ", ".join(keys[:most]) + more


def create_pretrained(
    name: str,
    spec: str,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    download: bool = False,
    **kwargs,
) -> nn.Module:
    """``create_model(name, weights=spec)``: the model built for the weights' class count (unless ``num_classes``
    says another: the classifier is then new, and a warning says so) with the weights loaded."""
    from cnnzoo.models.registry import build_model as create_model  # fresh weights: the registry alone

    spec_ = resolve_weights(name, spec)
    state, _ = fetch_state_dict(spec_, download=download)
    if num_classes is None:
        num_classes = spec_.num_classes or _classes_of(state)
    if in_channels is None and spec_.mean is not None:
        in_channels = len(spec_.mean)
    sizes = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels)) if v is not None}
    model = create_model(name, **sizes, **{**spec_.options, **kwargs})
    for note in load_state(model, state, source=spec_.name):
        warnings.warn(note, stacklevel=3)  # the caller of create_model
    return model


def _classes_of(state: dict[str, torch.Tensor]) -> int | None:
    """The class count of a bare state_dict: the rows of its last matrix (the classifier is the last layer
    registered in every family, so its weight is the last 2-d tensor)."""
    matrices = [v for v in state.values() if v.dim() == 2]
    return matrices[-1].shape[0] if matrices else None
