"""ImageNet-size training steps, cnnzoo's against torchvision's same architecture, in one process.

For each model, on synthetic input (a fixed random batch at 3x224x224, 1000 classes):
- cnnzoo: the trainer's own step (``setup_training`` + ``train_step``: bf16 autocast, channels_last and fused SGD on
  CUDA, the model compiled with ``torch.compile`` unless ``--no-compile``), same hyperparameters as torchvision's side;
- torchvision: ``torchvision.models.<name>`` as a user would train it: plain ``torch.autocast(bf16)`` and
  ``torch.compile(model)``, SGD(lr 0.1, momentum 0.9, weight decay 5e-4), default memory format. GoogLeNet's
  auxiliary losses are added with weight 0.3 on both sides (Szegedy et al. 2015, section 5).
Both run the same number of steps, in interleaved blocks (ours, theirs, ours, ...) so both see the same machine; the
reported time per step is the median over blocks. Timing: after ``--warmup`` steps (compilation, cudnn autotuning),
``torch.cuda.synchronize()`` around each block on CUDA. MFU = 6 x MACs per image x images/s / peak: forward 2 FLOPs per
MAC, backward twice the forward; peak 800 TFLOP/s, the bf16 matrix rate measured on the H100 (``--peak-tflops``).

Run (GPU):  python benchmarks/imagenet_step.py --device cuda --batch-size 128 --json runs/imagenet_step.json
Run (CPU, a check of the logic, fp32, no compile):
  python benchmarks/imagenet_step.py --device cpu --models resnet18 --input 3x64x64 --batch-size 4 --no-compile
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision

import cnnzoo
from cnnzoo.analysis.profile import parse_input, profile_model
from cnnzoo.train.config import build_config
from cnnzoo.train.engine import configure_backends, setup_training, train_step

MODELS = ("alexnet", "vgg16", "googlenet", "resnet18", "resnet50", "resnet152")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cnnzoo_step(name: str, x: torch.Tensor, y: torch.Tensor, device: torch.device, compile_: bool):
    """A closure running one cnnzoo training step (the trainer's own code path, torchvision's side's arithmetic:
    SGD 0.1 / momentum 0.9 / weight decay 5e-4 on every parameter, no label smoothing)."""
    cfg = build_config(
        device=str(device),
        compile=compile_,
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        nesterov=False,
        weight_decay=5e-4,
        wd_exclude_bn_bias=False,
        label_smoothing=0.0,
    )
    net, optimizer, ctx = setup_training(cnnzoo.create_model(name, num_classes=1000), cfg, device)
    xs = ctx.layout(x)  # the batch in the model's layout once, as the data path hands it over
    return lambda: train_step(net, optimizer, xs, y, ctx)


def torchvision_step(name: str, x: torch.Tensor, y: torch.Tensor, device: torch.device, compile_: bool):
    """A closure running one training step of torchvision's model the plain way: autocast + torch.compile."""
    kw = {"init_weights": True} if name == "googlenet" else {}
    model = getattr(torchvision.models, name)(weights=None, num_classes=1000, **kw).to(device)
    net = torch.compile(model) if compile_ else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            out = net(x)
            if isinstance(out, tuple):  # GoogLeNetOutputs(logits, aux2, aux1) in training mode
                loss = F.cross_entropy(out[0].float(), y)
                loss = loss + 0.3 * sum(F.cross_entropy(a.float(), y) for a in out[1:] if a is not None)
            else:
                loss = F.cross_entropy(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def time_block(step, steps: int, device: torch.device) -> float:
    """Seconds per step over ``steps`` back-to-back steps (no host sync inside the block)."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--input", default="3x224x224")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, autotuning)")
    p.add_argument("--steps", type=int, default=10, help="steps per timed block")
    p.add_argument("--blocks", type=int, default=3, help="interleaved timed blocks per side")
    p.add_argument("--no-compile", action="store_true", help="eager on both sides")
    p.add_argument("--peak-tflops", type=float, default=None, help="for MFU (default 800 on CUDA, none on the CPU)")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    device = torch.device(args.device)
    shape = parse_input(args.input)
    compile_ = not args.no_compile
    peak = args.peak_tflops or (800.0 if device.type == "cuda" else None)
    configure_backends(build_config(device=str(device)), device)  # the trainer's flags (cudnn autotuning, TF32)
    name_of = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"torch {torch.__version__} | {name_of} | input {args.input} | batch {args.batch_size} | "
        f"compile {compile_} | synthetic data | MFU against {peak} TFLOP/s",
        flush=True,
    )
    results = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        x = torch.randn(args.batch_size, *shape, device=device)
        y = torch.randint(0, 1000, (args.batch_size,), device=device)
        sides = {
            "cnnzoo": cnnzoo_step(name, x, y, device, compile_),
            "torchvision": torchvision_step(name, x, y, device, compile_),
        }
        for step in sides.values():
            for _ in range(args.warmup):
                step()
        times: dict[str, list[float]] = {k: [] for k in sides}
        for _ in range(args.blocks):
            for k, step in sides.items():
                times[k].append(time_block(step, args.steps, device))
        macs = profile_model(name, num_classes=1000, input_shape=shape)["macs"]
        row = {"model": name, "macs": macs, "batch_size": args.batch_size}
        for k in sides:
            sec = statistics.median(times[k])
            row[f"{k}_ms_per_step"] = 1000 * sec
            row[f"{k}_img_s"] = args.batch_size / sec
            row[f"{k}_mfu"] = 6 * macs * args.batch_size / sec / (peak * 1e12) if peak else None
        row["ratio"] = row["torchvision_ms_per_step"] / row["cnnzoo_ms_per_step"]  # >1: cnnzoo faster
        results.append(row)
        mfu = "" if peak is None else f"  MFU {100 * row['cnnzoo_mfu']:.1f}% vs {100 * row['torchvision_mfu']:.1f}%"
        print(
            f"{name:10s} cnnzoo {row['cnnzoo_ms_per_step']:8.2f} ms/step ({row['cnnzoo_img_s']:8.0f} img/s)  "
            f"torchvision {row['torchvision_ms_per_step']:8.2f} ms/step  ratio x{row['ratio']:.3f}{mfu}",
            flush=True,
        )
        del sides
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if args.json:  # after every model: compiling 12 nets can outlast a time limit, the rows so far survive it
            meta = {
                "torch": torch.__version__,
                "device": name_of,
                "input": args.input,
                "compile": compile_,
                "peak_tflops": peak,
            }
            with open(args.json, "w") as f:
                json.dump({"meta": meta, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
