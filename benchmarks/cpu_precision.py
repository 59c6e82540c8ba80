"""Is bf16 autocast worth it on this CPU? The trainer's step (``setup_training`` + ``train_step``) in fp32 and bf16.

For each model: the same initial weights and the same random CIFAR-size batch, once per precision; the two are
timed in interleaved ABBA rounds (so both see the same machine load) after three warm-up steps (the first bf16
steps pay for oneDNN's kernel creation), the median step time of each is reported and their ratio (> 1: bf16
faster). Run it twice to see what a CPU without AMX would do: ``ONEDNN_MAX_CPU_ISA=AVX2`` limits oneDNN to AVX2,
where bf16 is emulated.

Run:  python benchmarks/cpu_precision.py --models resnet20,resnet56 --batch-size 128 --rounds 4
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch

import cnnzoo
from cnnzoo.train.config import build_config
from cnnzoo.train.engine import backend_settings, cpu_has_native_bf16, setup_training, train_step


def make_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str):
    cfg = build_config(recipe="resnet-cifar-short", device="cpu", precision=precision)
    net, optimizer, ctx = setup_training(model, cfg, "cpu")
    xs = ctx.layout(x)
    return cfg, lambda: train_step(net, optimizer, xs, y, ctx)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet20,resnet56")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=4, help="ABBA rounds (each times one step per precision)")
    args = p.parse_args()
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "(unset)")
    print(
        f"torch {torch.__version__} | {torch.get_num_threads()} threads | AMX: {cpu_has_native_bf16()} | "
        f"ONEDNN_MAX_CPU_ISA {isa} | batch {args.batch_size}",
        flush=True,
    )
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = cnnzoo.create_model(name, num_classes=10)
        x, y = torch.randn(args.batch_size, 3, 32, 32), torch.randint(0, 10, (args.batch_size,))
        cfg, fp32 = make_step(copy.deepcopy(model), x, y, "fp32")
        _, bf16 = make_step(model, x, y, "bf16")
        steps = {"fp32": fp32, "bf16": bf16}
        times: dict[str, list[float]] = {k: [] for k in steps}
        with backend_settings(cfg, torch.device("cpu")):
            for step in steps.values():
                for _ in range(3):
                    step()
            for i in range(args.rounds):
                for k in ("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32"):
                    t0 = time.perf_counter()
                    steps[k]()
                    times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        spread = {k: (max(v) - min(v)) / med[k] for k, v in times.items()}
        print(
            f"{name:>9}: fp32 {1e3 * med['fp32']:.0f} ms (range {100 * spread['fp32']:.0f}%), bf16 "
            f"{1e3 * med['bf16']:.0f} ms (range {100 * spread['bf16']:.0f}%): bf16 x{med['fp32'] / med['bf16']:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
