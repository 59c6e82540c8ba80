"""Startup time of the ``cnnzoo`` commands: the median wall time of N fresh processes per command.

    PYTHONPATH=src python benchmarks/startup.py [--repeats 7]

Each command runs as ``python -m cnnzoo ...`` in a new interpreter (what a user's shell does), output discarded.
``cnnzoo models`` is run once first, untimed, so the timed runs read the cached table (the first run after an
install or a change to a model counts the zoo once). Prints a Markdown table (docs/benchmarks.md, "Startup").
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time

COMMANDS = [
    ["--version"],
    ["--help"],
    ["train", "--help"],
    ["models", "--help"],
    ["compare", "--help"],
    ["show", "--help"],
    ["study", "--help"],
    ["models"],
]


def seconds(argv: list[str]) -> float:
    """Wall time of one ``python -m cnnzoo ARGV`` process."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cnnzoo", *argv], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="processes per command (the median is reported)")
    args = parser.parse_args()
    seconds(["models"])  # warm the models table cache
    import torch  # only to report its version, after the timings' processes have shown what they import

    print(
        f"python {platform.python_version()}, torch {torch.__version__}, {platform.machine()}, "
        f"{len(__import__('os').sched_getaffinity(0))} CPUs; median of {args.repeats} runs\n"
    )
    print("| command | median s | min s |\n|---|---:|---:|")
    for argv in COMMANDS:
        times = [seconds(argv) for _ in range(args.repeats)]
        print(f"| `cnnzoo {' '.join(argv)}` | {statistics.median(times):.2f} | {min(times):.2f} |")


if __name__ == "__main__":
    main()
