"""What a network costs: parameters, MACs and a per-layer summary, counted by torch itself.

MACs are multiply-accumulates, counted with ``torch.utils.flop_counter.FlopCounterMode`` (which counts 2 FLOPs per
multiply-add of convolutions and matrix products) as FLOPs / 2, for one image in eval mode (so GoogLeNet's
auxiliary heads, dropped at inference, are not counted; their parameters are). Element-wise work (ReLU, BN, pooling,
additions) is not counted, as in the papers' and torchvision's figures. Models can be built on the meta device
(``torch.device("meta")``): shapes and counts without memory or arithmetic, so the whole zoo is profiled in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _counted_forward(model: nn.Module, input_shape: tuple[int, int, int]) -> FlopCounterMode:
    """One eval-mode forward pass of one ``(C, H, W)`` image under FlopCounterMode; the model's mode is restored."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            model(torch.zeros(1, *input_shape, device=_device_of(model)))
    finally:
        model.train(was_training)
    return counter


def count_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass of one ``(C, H, W)`` image in eval mode (FlopCounterMode / 2)."""
    return _counted_forward(model, input_shape).get_total_flops() // 2


@dataclass
class LayerRow:
    """One leaf module of a summary: its qualified name, type, output shape (batch 1), parameters and MACs."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


def layer_summary(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[list[LayerRow], int, int]:
    """Per-leaf-module rows in execution order, plus (total params, total MACs).

    Output shapes come from forward hooks; MACs from FlopCounterMode's per-module breakdown (``get_flop_counts``,
    keyed ``"<ModelClass>.<qualified name>"``), never from hand-written formulas. A module called twice (none of the
    zoo's are) would show its last output shape and its summed MACs.
    """
    leaves = {name: m for name, m in model.named_modules() if name and not list(m.children())}
    shapes: dict[str, tuple[int, ...]] = {}
    order: list[str] = []

    def hook(name: str):
        def record(_module, _inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            if name not in shapes:
                order.append(name)
            shapes[name] = tuple(out.shape) if isinstance(out, torch.Tensor) else ()

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in leaves.items()]
    try:
        counter = _counted_forward(model, input_shape)
    finally:
        for h in handles:
            h.remove()
    per_module = counter.get_flop_counts()
    prefix = type(model).__name__
    rows = []
    for name in order:
        flops = sum(per_module.get(f"{prefix}.{name}", {}).values())
        params = sum(p.numel() for p in leaves[name].parameters(recurse=False))
        rows.append(LayerRow(name, type(leaves[name]).__name__, shapes[name], params, int(flops) // 2))
    return rows, count_params(model)[0], counter.get_total_flops() // 2


def profile_model(name: str, *, num_classes: int | None = None, input_shape: tuple[int, int, int] | None = None,
                  meta: bool = True) -> dict:  # fmt: skip
    """Params and MACs of registered model ``name`` at ``input_shape`` (default: its registered input size).

    ``num_classes`` defaults to 1000 for ImageNet-size nets and 10 for the small-input ones. ``meta=True`` builds the
    model on the meta device (no memory, no arithmetic; counts are identical, see the tests).
    """
    from cnnzoo.models import create_model, get_model_info

    info = get_model_info(name)
    shape = input_shape or info.input_size
    classes = num_classes or (10 if info.input_size[1] <= 32 else 1000)
    with torch.device("meta" if meta else "cpu"):
        model = create_model(name, num_classes=classes, in_channels=shape[0])
        params, _ = count_params(model)
        macs = count_macs(model, shape)
    return {"name": name, "family": info.family, "paper": info.paper, "input_size": shape, "num_classes": classes,
            "params": params, "macs": macs}  # fmt: skip


def human(n: float, unit: str = "") -> str:
    """12345678 -> '12.35M' (K, M, G, T)."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"
