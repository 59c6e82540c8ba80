"""The first steps of a CIFAR ResNet at lr 0.1, with and without He et al.'s warm-up rule (2016, section 4.2).

For each model, two runs of the trainer itself (``cnnzoo.train``, recipe ``resnet-cifar-short``, same seed, same
batches) stopped after ``--steps`` steps: one as the recipe has it (lr 0.01 until the training error of the last 20
batches is below 80 %, then 0.1), one starting at lr 0.1 at once. The training loss of every step is read back from
the run's TensorBoard file (``--log-every 1``). Prints, per run: the loss at step 1, the largest loss of the first 50
steps, the mean loss of the last 20 steps and the step at which the rule ended the warm-up.

Run:  python benchmarks/warmup_start.py --data .data/cifar10 --models resnet20,resnet56 --steps 200 \
          --json docs/results/lesson/warmup_start.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from cnnzoo.train.api import train


def losses(run_dir: Path) -> list[float]:
    """The per-step training loss TensorBoard holds for ``run_dir`` (needs the tensorboard extra)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return [e.value for e in sorted(events.Scalars("train/loss"), key=lambda e: e.step)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="CIFAR-10 image folder (train/ and test/)")
    p.add_argument("--models", default="resnet20,resnet56")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    print(f"torch {torch.__version__} | {torch.get_num_threads()} threads | {args.steps} steps", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            for rule in (True, False):
                no_rule = {} if rule else dict(warmup_until_error=0.0, warmup_lr=0.0, warmup_steps=0)
                out = Path(tmp) / f"{model}-{rule}"
                train(model, args.data, recipe="resnet-cifar-short", out=out, stop_after=args.steps, quiet=True,
                      log_every=1, seed=args.seed, device="cpu", **no_rule)  # fmt: skip
                curve = losses(out)
                end = torch.load(out / "last.pt", weights_only=True)["warmup"]["end"]
                row = {
                    "model": model,
                    "warm-up": "rule (0.01 until error < 80 %)" if rule else "none (0.1 from step 1)",
                    "loss_step1": curve[0],
                    "max_loss_first50": max(curve[:50]),
                    "argmax_first50": 1 + curve[:50].index(max(curve[:50])),
                    "mean_loss_last20": statistics.fmean(curve[-20:]),
                    "warmup_end_step": end,
                    "losses": curve,
                }
                results.append(row)
                print(
                    f"{model:>9} {row['warm-up']:<32} loss: step 1 {row['loss_step1']:.2f}, max of the first 50 "
                    f"{row['max_loss_first50']:.2f} (step {row['argmax_first50']}), mean of the last 20 "
                    f"{row['mean_loss_last20']:.2f}; warm-up ended after step {end}",
                    flush=True,
                )
    if args.json:
        Path(args.json).write_text(json.dumps({"torch": torch.__version__, "runs": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
