"""``study gradients``: the gradient reaching each layer, plain vs residual, at initialisation and after training.

Batch norm after a convolution makes the loss invariant to that convolution's weight scale, so its weight gradient
scales as 1/||W||: a raw ||dL/dW|| falls as training grows ||W||, whatever happens to the signal. Two measures do not
depend on it: per convolution ``scale_free`` = ||dL/dW|| * ||W|| (the gradient with respect to the log-scale of the
weights, the size of the update direction relative to the weights), and per block the back-propagated signal
||dL/dx|| at the block's input (read through the block contract of :func:`cnnzoo.models._common.blocks`). Each is the
mean over several batches and seeds; the raw norm is kept beside them, to show what batch norm does to it.

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

    kinds: ``conv`` (each conv weight, in forward order: ``norm`` = ||dL/dW||, ``weight_norm`` = ||W||,
    ``scale_free`` = their product), ``block_input`` (``norm`` of dL/dx at each block's input), ``branch`` and
    ``shortcut`` (the parts of dL/dx that flow through the residual branch and through the shortcut; for plain
    blocks the shortcut part is 0).
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
    for i, (n, m) in enumerate(convs):
        grad, weight = m.weight.grad.norm().item(), m.weight.detach().norm().item()
        rows.append(
            {
                "kind": "conv",
                "index": i + 1,
                "layer": n,
                "norm": grad,
                "weight_norm": weight,
                "scale_free": grad * weight,
            }
        )
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


def decay_ratio(rows: list[dict], kind: str = "conv", key: str = "norm") -> float:
    """``key`` (``norm`` or ``scale_free``) at the first layer (next to the input) over that at the last one, among
    the rows of ``kind`` (of one model and phase).

    1 means the gradient keeps its size through the depth; far from 1 (either way) means it does not. With batch norm
    the raw ``norm`` of a conv also moves with 1/||W|| (see the module's docstring): read ``scale_free`` for what
    reaches the layer."""
    values = [r[key] for r in sorted((r for r in rows if r["kind"] == kind), key=lambda r: int(r["index"]))]
    return float(values[0]) / float(values[-1])


def train_steps(model: nn.Module, bundle, steps: int, device: torch.device, seed: int) -> None:
    """``steps`` steps of :func:`cnnzoo.train.engine.train_step` with :data:`SGD_START`, epoch after epoch."""
    from cnnzoo.train.config import build_config
    from cnnzoo.train.engine import make_optimizer, step_context, train_step

    cfg = build_config(seed=seed, device=str(device), **SGD_START)
    optimizer, ctx = make_optimizer(model, cfg, device), step_context(cfg, device)
    model.train()
    done, epoch = 0, 1  # epoch 0's first batches are the probes
    while done < steps:
        for x, y in bundle.train.epoch(epoch):
            train_step(model, optimizer, x, y, ctx)
            done += 1
            if done == steps:
                return
        epoch += 1


MEASURES = ("norm", "weight_norm", "scale_free")
FIELDS = [
    "model",
    "residual",
    "phase",
    "kind",
    "index",
    "layer",
    "norm",
    "norm_std",
    "weight_norm",
    "scale_free",
    "scale_free_std",
    "samples",
]


def average(rows: list[dict]) -> list[dict]:
    """One row per (model, phase, kind, layer): the mean and sample std over every batch and seed measured."""
    import statistics

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["phase"], r["kind"], r["index"], r["layer"]), []).append(r)
    out = []
    for (model, phase, kind, index, layer), rs in groups.items():
        row = {"model": model, "residual": rs[0]["residual"], "phase": phase, "kind": kind, "index": index}
        row |= {"layer": layer, "samples": len(rs)}
        for key in MEASURES:
            values = [r[key] for r in rs if r.get(key) is not None]
            row[key] = statistics.fmean(values) if values else None
            if key != "weight_norm":
                row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
        out.append(row)
    return out


def estimate_line(models: list[str], bundle, batch, device, *, steps: int, batches: int, seeds: int) -> str:
    """One line starting ``estimate:`` before anything is measured: each model's measurement (a forward and backward
    pass) timed once after an untimed one, times what the study does with it: ``2 * batches`` measurements and
    ``steps`` training steps (counted as 1.2 measurements: the update on top) for each of ``seeds``."""
    import time

    from cnnzoo.analysis.study.plan import hms
    from cnnzoo.models import create_model
    from cnnzoo.train.engine import sync

    x, y = batch
    timed, total = [], 0.0
    for name in models:
        model = create_model(name, num_classes=len(bundle.classes), in_channels=bundle.in_channels).to(device)
        gradient_norms(model, x, y)  # untimed: kernel selection, allocation
        tick = time.perf_counter()
        gradient_norms(model, x, y)
        sync(device)
        seconds = time.perf_counter() - tick
        timed.append(f"{name} {seconds:.2f} s")
        total += seconds * seeds * (2 * batches + 1.2 * steps)
    return f"estimate: {hms(total)} on {device} (one timed forward and backward per model: {', '.join(timed)})"


def run_gradients(
    models: list[str],
    *,
    data: str = "digits",
    data_dir: str | None = None,
    steps: int = 100,
    batches: int = 4,
    seeds: list[int] | tuple[int, ...] = (0, 1),
    batch_size: int = 128,
    device: str = "auto",
    out: str | Path = "runs/study-gradients",
    label: str | None = None,
    log=print,
) -> list[dict]:
    """Measure every model at initialisation and after ``steps`` training steps, each on ``batches`` batches for
    every seed (the seed sets the initialisation and the data order); write gradients.csv (means and stds over the
    batches and seeds) and gradients.png. ``log`` gets a progress line with the ETA after each model and seed."""
    import time

    import torch

    from cnnzoo.analysis.study.plan import hms
    from cnnzoo.analysis.study.plots import plot_gradients
    from cnnzoo.analysis.study.tables import write_csv
    from cnnzoo.data import load_data
    from cnnzoo.models import create_model
    from cnnzoo.train.engine import resolve_device

    if steps < 0 or batch_size < 1 or batches < 1 or not seeds:
        raise CnnzooError(
            f"--steps must be >= 0, --batches and --batch-size >= 1 and --seeds not empty; got {steps}, {batches}, "
            f"{batch_size} and {list(seeds)}"
        )
    out, dev = Path(out), resolve_device(device)
    out.mkdir(parents=True, exist_ok=True)
    phases = "at init" + (f" and after {steps} steps" if steps else "")
    log(
        f"study gradients: {', '.join(models)} x seed {', '.join(map(str, seeds))}, {phases}, each measured on "
        f"{batches} batch(es) of {batch_size} from {data}, on {dev}"
    )
    rows, start, done, total = [], time.perf_counter(), 0, len(models) * len(seeds)
    for seed in seeds:
        bundle = load_data(data, data_dir=data_dir, batch_size=batch_size, device=dev, seed=seed)
        probes = [b for _, b in zip(range(batches), bundle.train.epoch(0), strict=False)]
        if len(probes) < batches:
            raise CnnzooError(f"{data} has {len(probes)} training batches of {batch_size}, fewer than --batches")
        if seed == seeds[0]:
            log(estimate_line(models, bundle, probes[0], dev, steps=steps, batches=batches, seeds=len(seeds)))
        for name in models:
            torch.manual_seed(seed)
            model = create_model(name, num_classes=len(bundle.classes), in_channels=bundle.in_channels).to(dev)
            found = blocks(model)
            if not found:
                raise CnnzooError(f"{name} has no residual or plain blocks to study (`cnnzoo models`: a ResNet family)")
            tag = {"model": name, "residual": int(any(b.shortcut is not None for _, b, _ in found)), "seed": seed}
            rows += [dict(r, **tag, phase="init") for x, y in probes for r in gradient_norms(model, x, y)]
            if steps > 0:
                train_steps(model, bundle, steps, dev, seed)
                phase = f"after {steps} steps"
                rows += [dict(r, **tag, phase=phase) for x, y in probes for r in gradient_norms(model, x, y)]
            done += 1
            elapsed = time.perf_counter() - start
            log(
                f"[{done}/{total}] {name} seed {seed} measured; {hms(elapsed)} elapsed, "
                f"ETA {hms(elapsed / done * (total - done))}"
            )
    table = average(rows)
    write_csv(out / "gradients.csv", table, FIELDS)
    plot_gradients(table, out / "gradients.png", label or data)
    return table
