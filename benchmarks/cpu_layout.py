"""Does channels_last help on this CPU? The trainer's step (``setup_training`` + ``train_step``) in NCHW and in NHWC.

For each model and batch size: the same model (same initial weights) and the same random batch, once with model and
input contiguous (NCHW) and once both channels_last (NHWC); fp32, the trainer's CPU defaults otherwise. The two
layouts are timed in interleaved ABBA rounds (so both see the same machine load) after two warm-up steps; the median
step time of each is reported and their ratio (> 1: NHWC faster).

Run:  python benchmarks/cpu_layout.py --models resnet20,resnet56,resnet18_cifar --batch-sizes 32,128
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

import cnnzoo
from cnnzoo.analysis.profile import parse_input
from cnnzoo.train.config import build_config
from cnnzoo.train.engine import setup_training, train_step


def make_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, channels_last: bool):
    cfg = build_config(recipe="fast", device="cpu", channels_last=channels_last)
    net, optimizer, ctx = setup_training(model, cfg, "cpu")
    xs = ctx.layout(x)
    return lambda: train_step(net, optimizer, xs, y, ctx)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet20,resnet56,resnet18_cifar,vgg16_cifar,googlenet_cifar,alexnet_cifar")
    p.add_argument("--batch-sizes", default="32,128")
    p.add_argument("--input", default="3x32x32")
    p.add_argument("--rounds", type=int, default=4, help="ABBA rounds (each times one step per layout)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    shape = parse_input(args.input)
    print(
        f"torch {torch.__version__} | cpu | {torch.get_num_threads()} threads | input {args.input} | fp32", flush=True
    )
    results = []
    for name in args.models.split(","):
        for bs in map(int, args.batch_sizes.split(",")):
            torch.manual_seed(0)
            model = cnnzoo.create_model(name, num_classes=10, in_channels=shape[0])
            x, y = torch.randn(bs, *shape), torch.randint(0, 10, (bs,))
            steps = {"nchw": make_step(copy.deepcopy(model), x, y, False), "nhwc": make_step(model, x, y, True)}
            for step in steps.values():
                step()
                step()
            times: dict[str, list[float]] = {k: [] for k in steps}
            for i in range(args.rounds):
                for k in ("nchw", "nhwc") if i % 2 == 0 else ("nhwc", "nchw"):
                    t0 = time.perf_counter()
                    steps[k]()
                    times[k].append(time.perf_counter() - t0)
            row = {"model": name, "batch_size": bs, **{f"{k}_s": statistics.median(v) for k, v in times.items()}}
            row["nhwc_speedup"] = row["nchw_s"] / row["nhwc_s"]
            results.append(row)
            print(
                f"{name:16s} batch {bs:4d}  NCHW {1000 * row['nchw_s']:8.1f} ms  NHWC {1000 * row['nhwc_s']:8.1f} ms"
                f"  NHWC speed-up x{row['nhwc_speedup']:.2f}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
