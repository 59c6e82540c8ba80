"""``study gradients``: the gradient norm reaching each layer, plain vs residual, at initialisation and after training.

The branch share is computed exactly: with ``s = branch(x) + shortcut(x)`` and ``g = dL/ds``, autograd gives
``J_branch^T g``; the shortcut share is the rest of ``dL/dx`` (the sum is linear). The paper shows no gradient
norms; it argues (section 4.1) that with BN plain nets' gradients do not vanish at initialisation. This measures it.
The short training between the two measurements is the trainer's own step (:func:`cnnzoo.train.engine.train_step`)
with the start of the paper's recipe: SGD at lr 0.1, momentum 0.9, weight decay 1e-4 on every parameter, no warm-up,
no schedule, fp32.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used, so `cnnzoo --help` needs no torch
    import torch
    from torch import nn

from cnnzoo.errors import CnnzooError

# The start of He et al. 2016's CIFAR recipe (section 4.2), constant: what `study gradients` trains with.
SGD_START = {
    "optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "wd_exclude_bn_bias": False,
    "schedule": "constant",
    "precision": "fp32",
}


def blocks(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """(name, block, the module that ends its branch) for every residual/plain block: the block contract of
    :func:`cnnzoo.models._common.blocks` (a ``shortcut`` attribute and a ``branch_out`` submodule name)."""
    from cnnzoo.models._common import blocks as contract_blocks

    return contract_blocks(model)


def gradient_norms(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[dict]:
    """One forward/backward on a batch; rows of gradient norms (model in train mode, as during training).

    kinds: ``conv`` (norm of each conv weight's gradient, in forward order), ``block_input`` (norm of dL/dx at each
    block's input), ``branch`` and ``shortcut`` (the parts of dL/dx that flow through the residual branch and
    through the shortcut; for plain blocks the shortcut part is 0).
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    model.train()
    found = blocks(model)
    names = [n for n, _, _ in found]
    logits, inputs, branch_out = _capture(model, found, images)
    loss = F.cross_entropy(logits, labels)
    grads = torch.autograd.grad(loss, [inputs[n] for n in names] + [branch_out[n] for n in names], retain_graph=True)
    d_input, d_branch = grads[: len(names)], grads[len(names) :]
    rows = []
    for i, name in enumerate(names):
        through_branch = torch.autograd.grad(
            branch_out[name], inputs[name], grad_outputs=d_branch[i], retain_graph=True
        )[0]
        total = d_input[i]
        rows += [
            {"kind": "block_input", "index": i + 1, "layer": name, "norm": total.norm().item()},
            {"kind": "branch", "index": i + 1, "layer": name, "norm": through_branch.norm().item()},
            {"kind": "shortcut", "index": i + 1, "layer": name, "norm": (total - through_branch).norm().item()},
        ]
    loss.backward()
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    rows += [
        {"kind": "conv", "index": i + 1, "layer": n, "norm": m.weight.grad.norm().item()}
        for i, (n, m) in enumerate(convs)
    ]
    return rows


def _capture(model: nn.Module, found: list, images: torch.Tensor) -> tuple[torch.Tensor, dict, dict]:
    """Forward ``images``: (logits, each block's input, each block's branch output), by block name."""
    inputs: dict[str, torch.Tensor] = {}
    branch_out: dict[str, torch.Tensor] = {}
    hooks = []
    for name, block, last_bn in found:
        hooks.append(block.register_forward_pre_hook(lambda _m, args, n=name: inputs.__setitem__(n, args[0])))
        hooks.append(last_bn.register_forward_hook(lambda _m, _a, out, n=name: branch_out.__setitem__(n, out)))
    model.zero_grad(set_to_none=True)
    try:
        out = model(images)
    finally:
        for h in hooks:
            h.remove()
    return (out[0] if isinstance(out, tuple) else out), inputs, branch_out


def decay_ratio(rows: list[dict], kind: str = "conv") -> float:
    """Gradient norm at the first layer (next to the input) over that at the last one (of ``kind``).

    1 means the gradient keeps its size through the depth; far from 1 (either way) means it does not. Measured here
    with batch norm at initialisation, plain nets' gradients *grow* towards the input (ratio 15-20 for plain20, ~1e3
    for plain56 on digits) while the residual twins stay within about one order of magnitude (5-8 and 10-16): the
    paper's own remark (section 4.1) that BN keeps plain nets' gradients from vanishing, and that their trouble is
    optimisation, not vanishing signals."""
    norms = [r["norm"] for r in sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["index"])]
    return norms[0] / norms[-1]


def train_steps(model: nn.Module, bundle, steps: int, device: torch.device, seed: int) -> None:
    """``steps`` steps of :func:`cnnzoo.train.engine.train_step` with :data:`SGD_START`, epoch after epoch."""
    from cnnzoo.train.config import build_config
    from cnnzoo.train.engine import make_optimizer, step_context, train_step

    cfg = build_config(seed=seed, device=str(device), **SGD_START)
    optimizer, ctx = make_optimizer(model, cfg, device), step_context(cfg, device)
    model.train()
    done, epoch = 0, 1
    while done < steps:
        for x, y in bundle.train.epoch(epoch):
            train_step(model, optimizer, x, y, ctx)
            done += 1
            if done == steps:
                return
        epoch += 1


def run_gradients(
    models: list[str],
    *,
    data: str = "digits",
    data_dir: str | None = None,
    steps: int = 100,
    batch_size: int = 128,
    device: str = "auto",
    seed: int = 0,
    out: str | Path = "runs/study-gradients",
    label: str | None = None,
) -> list[dict]:
    """Measure every model at initialisation and after ``steps`` training steps; write gradients.csv and .png."""
    import torch

    from cnnzoo.analysis.study.plots import plot_gradients
    from cnnzoo.analysis.study.tables import write_csv
    from cnnzoo.data import load_data
    from cnnzoo.models import create_model
    from cnnzoo.train.engine import resolve_device

    if steps < 0 or batch_size < 1:
        raise CnnzooError(f"--steps must be >= 0 and --batch-size >= 1, got {steps} and {batch_size}")
    out, dev = Path(out), resolve_device(device)
    out.mkdir(parents=True, exist_ok=True)
    bundle = load_data(data, data_dir=data_dir, batch_size=batch_size, device=dev, seed=seed)
    probe_x, probe_y = next(iter(bundle.train.epoch(0)))  # the same real batch for every model and phase
    rows = []
    for name in models:
        torch.manual_seed(seed)
        model = create_model(name, num_classes=len(bundle.classes), in_channels=bundle.in_channels).to(dev)
        if not blocks(model):
            raise CnnzooError(
                f"{name} has no residual or plain blocks to study (use a residual or plain family: `cnnzoo models`)"
            )
        rows += [dict(r, model=name, phase="init") for r in gradient_norms(model, probe_x, probe_y)]
        if steps > 0:
            train_steps(model, bundle, steps, dev, seed)
            rows += [dict(r, model=name, phase=f"after {steps} steps") for r in gradient_norms(model, probe_x, probe_y)]
    write_csv(out / "gradients.csv", rows, ["model", "phase", "kind", "index", "layer", "norm"])
    plot_gradients(rows, out / "gradients.png", label or data)
    return rows
