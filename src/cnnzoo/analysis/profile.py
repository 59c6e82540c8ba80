"""What a network costs: parameters, MACs and a per-layer summary, counted by torch itself.

MACs are multiply-accumulates, counted with ``torch.utils.flop_counter.FlopCounterMode`` (which counts 2 FLOPs per
multiply-add of convolutions and matrix products) as FLOPs / 2, for one image in eval mode. Element-wise work (ReLU,
BN, pooling, additions) is not counted, as in the papers' and torchvision's figures.

Parameters and MACs describe the same network: the one used at inference, i.e. the modules that run in an eval-mode
forward pass. Parameters of modules that only run in training (GoogLeNet's auxiliary heads) are reported apart, as
``aux_params``: GoogLeNet is 6,624,904 parameters, as torchvision and the paper (6.8M) quote, plus 6,379,984 in its
two auxiliary classifiers at 1000 classes. Models can be built on the meta device
(``torch.device("meta")``): shapes and counts without memory or arithmetic, so the whole zoo is profiled in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used, so `cnnzoo --help` needs no torch
    import torch
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

from cnnzoo.errors import CnnzooError


def parse_input(text: str) -> tuple[int, int, int]:
    """``"3x224x224"`` -> ``(3, 224, 224)``; anything else is a :class:`CnnzooError`."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise CnnzooError(f"--input must look like CxHxW with positive integers, e.g. 3x224x224; got {text!r}")
    return dims  # type: ignore[return-value]


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return total, sum(p.numel() for p in model.parameters() if p.requires_grad)


def _device_of(model: nn.Module) -> torch.device:
    import torch

    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _counted_forward(
    model: nn.Module, input_shape: tuple[int, int, int], hook=None
) -> tuple[FlopCounterMode, list[str]]:
    """One eval-mode forward pass of one ``(C, H, W)`` image under FlopCounterMode; the model's mode is restored.

    Returns the counter and the names of the modules that ran, in the order they finished. ``hook(name, output)``,
    if given, sees every module's output.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    ran: list[str] = []

    def record(name: str):
        def on_output(_module, _inputs, output):
            ran.append(name)
            if hook is not None:
                hook(name, output)

        return on_output

    handles = [m.register_forward_hook(record(name)) for name, m in model.named_modules()]
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            model(torch.zeros(1, *input_shape, device=_device_of(model)))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return counter, ran


def _params_of(model: nn.Module, names: set[str]) -> int:
    """Parameters owned directly by the named modules (each parameter counted once)."""
    modules = dict(model.named_modules())
    params = {id(p): p for n in names for p in modules[n].parameters(recurse=False)}
    return sum(p.numel() for p in params.values())


def count_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass of one ``(C, H, W)`` image in eval mode (FlopCounterMode / 2)."""
    return _counted_forward(model, input_shape)[0].get_total_flops() // 2


def count_inference(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(params, aux_params, MACs) of one eval-mode pass: ``params`` are those of the modules that ran (the network
    used at inference), ``aux_params`` the rest (training-only heads), ``MACs`` as :func:`count_macs`."""
    counter, ran = _counted_forward(model, input_shape)
    params = _params_of(model, set(ran))
    return params, count_params(model)[0] - params, counter.get_total_flops() // 2


@dataclass
class LayerRow:
    """One leaf module of a summary: its qualified name, type, output shape (batch 1), parameters and MACs."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


def layer_summary(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[list[LayerRow], int, int]:
    """Per-leaf-module rows in execution order, plus (params, MACs) of the network used at inference.

    Only modules that run in eval mode are rows, so the rows add up to the totals (GoogLeNet's auxiliary heads are
    neither; ``count_params(model)[0] - params`` is theirs). Output shapes come from forward hooks; MACs from
    FlopCounterMode's per-module breakdown (``get_flop_counts``, keyed ``"<ModelClass>.<qualified name>"``), never
    from hand-written formulas. A module called more than once (ResNet's blocks apply one ``relu`` two or three
    times) is a row at each call, named ``NAME (k/n, shared)``, with that call's output shape and its share of the
    module's MACs.
    """
    import torch

    leaves = {name: m for name, m in model.named_modules() if name and not list(m.children())}
    calls: list[tuple[str, tuple[int, ...]]] = []  # every call of a leaf, in execution order, with its output shape

    def record(name: str, output) -> None:
        if name in leaves:
            out = output[0] if isinstance(output, (tuple, list)) else output
            calls.append((name, tuple(out.shape) if isinstance(out, torch.Tensor) else ()))

    counter, ran = _counted_forward(model, input_shape, record)
    per_module = counter.get_flop_counts()
    prefix = type(model).__name__
    times = {name: sum(1 for n, _ in calls if n == name) for name, _ in calls}
    seen: dict[str, int] = {}
    rows = []
    for name, shape in calls:
        seen[name] = seen.get(name, 0) + 1
        total = int(sum(per_module.get(f"{prefix}.{name}", {}).values()))
        flops = total // times[name] + (total % times[name] if seen[name] == 1 else 0)
        # A module called several times (a bottleneck's one ReLU runs after bn1, bn2 and the addition) is a row
        # where each call runs, its parameters counted on the first only, so the rows still add up.
        params = sum(p.numel() for p in leaves[name].parameters(recurse=False)) if seen[name] == 1 else 0
        label = name if times[name] == 1 else f"{name} ({seen[name]}/{times[name]}, shared)"
        rows.append(LayerRow(label, type(leaves[name]).__name__, shape, params, flops // 2))
    return rows, _params_of(model, set(ran)), counter.get_total_flops() // 2


def profile_model(
    name: str, *, num_classes: int | None = None, input_shape: tuple[int, int, int] | None = None, meta: bool = True
) -> dict:
    """Params, auxiliary params and MACs of registered model ``name`` at ``input_shape`` (default: its registered
    input size); see :func:`count_inference`.

    ``num_classes`` defaults to the builder's own (1000 for ImageNet-size nets, 10 for the CIFAR ones). ``meta=True``
    builds the model on the meta device (no memory, no arithmetic; counts are identical, see the tests).
    """
    import torch

    from cnnzoo.models import create_model, get_model_info

    info = get_model_info(name)
    shape = input_shape or info.input_size
    classes = num_classes or info.num_classes
    with torch.device("meta" if meta else "cpu"):
        model = create_model(name, num_classes=classes, in_channels=shape[0])
        params, aux_params, macs = count_inference(model, shape)
    return {
        "name": name,
        "family": info.family,
        "paper": info.paper,
        "input_size": shape,
        "num_classes": classes,
        "params": params,
        "aux_params": aux_params,
        "macs": macs,
    }


def human(n: float, unit: str = "") -> str:
    """12345678 -> '12.35M' (K, M, G, T)."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def zoo_table(family: str | None = None) -> list[dict]:
    """:func:`profile_model` of every registered built-in model (or of ``family``'s), in ``list_models()`` order.

    Counting builds and runs every network on the meta device (seconds; resnet1202's forward alone takes ~10 s on
    two cores), so the table is cached as JSON in the cache dir (``$CNNZOO_CACHE_DIR``), keyed by the package
    version and a hash of the sources that decide the numbers (``cnnzoo/models/*.py`` and this file): any change to
    a model or to the counting gives a new key, and a cache that cannot be read or written is only recomputed.
    """
    import hashlib
    import json

    from cnnzoo import __version__
    from cnnzoo.atomic import write_atomic
    from cnnzoo.data.cache import cache_dir

    digest = hashlib.sha256(__version__.encode())
    here = Path(__file__).resolve()
    for source in [here, *sorted((here.parent.parent / "models").glob("*.py"))]:
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    path = cache_dir() / "zoo" / f"models-{digest.hexdigest()[:16]}.json"
    try:
        rows = json.loads(path.read_text())
        if isinstance(rows, list) and all(isinstance(r, dict) for r in rows):
            return _of_family(rows, family, sorted({r["family"] for r in rows}))
    except (OSError, ValueError, KeyError):
        pass
    from cnnzoo.models import get_model_info, list_models

    if family is not None:  # one family, not cached: counting only it is quicker than the whole zoo
        families = sorted({get_model_info(n).family for n in list_models()})
        names = list_models(family=family) if family in families else []
        return _of_family(json.loads(json.dumps([profile_model(n) for n in names])), family, families)
    rows = [profile_model(name) for name in list_models()]
    rows = json.loads(json.dumps(rows))  # the cached form (tuples become lists), so both paths return the same
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(rows))
    except OSError:
        pass  # a read-only cache dir: the table is still right, only slower next time
    return rows


def _of_family(rows: list[dict], family: str | None, families: list[str]) -> list[dict]:
    """``rows`` of ``family`` (all for None); an unknown family is one line naming the known ones."""
    if family is None:
        return rows
    if family not in families:
        raise CnnzooError(f"unknown family {family!r}; families: {', '.join(families)}")
    return [r for r in rows if r["family"] == family]
