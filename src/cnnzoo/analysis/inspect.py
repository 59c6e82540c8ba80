"""``cnnzoo models`` (the zoo as a table) and ``cnnzoo summary NAME`` (one net layer by layer)."""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from cnnzoo.analysis.profile import human, layer_summary, parse_input, profile_model
from cnnzoo.models import create_model, get_model_info, list_models


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``models`` and ``summary`` subcommands."""
    families = sorted({get_model_info(n).family for n in list_models()})
    p = sub.add_parser("models", help="list every network: family, paper, input size, params, MACs")
    p.add_argument("--family", choices=families, help="only this family")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("summary", help="one network layer by layer: output shape, params, MACs")
    p.add_argument("name", help="registered model name (see `cnnzoo models`)")
    p.add_argument("--input", default=None, help="input shape CxHxW (default: the model's, e.g. 3x224x224)")
    p.add_argument("--num-classes", type=int, default=None, help="classes (default 1000 ImageNet-size, 10 small)")
    p.set_defaults(func=cmd_summary)


def cmd_models(args: argparse.Namespace) -> int:
    """Print the zoo: params and MACs counted on the meta device at each model's default input size."""
    names = [n for n in list_models() if args.family in (None, get_model_info(n).family)]
    console = Console()
    rows = []
    with Progress(transient=True, console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task("counting", total=len(names))
        for name in names:
            rows.append(profile_model(name))
            progress.advance(task)
    table = Table(title="cnnzoo models (params and MACs at the input size shown; 1000 classes for ImageNet-size "
                        "nets, 10 for 32x32 ones; MACs = multiply-accumulates per image)")  # fmt: skip
    for col, justify in (("name", "left"), ("family", "left"), ("paper", "left"), ("input", "right"),
                         ("params", "right"), ("MACs", "right")):  # fmt: skip
        table.add_column(col, justify=justify, no_wrap=col != "paper")
    for r in rows:
        table.add_row(r["name"], r["family"], r["paper"].split(",")[0], "x".join(map(str, r["input_size"])),
                      f"{r['params']:,}", human(r["macs"]))  # fmt: skip
    console.print(table)
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    """Print one model's per-layer table and totals."""
    info = get_model_info(args.name)
    shape = parse_input(args.input) if args.input else info.input_size
    classes = args.num_classes or (10 if info.input_size[1] <= 32 else 1000)
    with torch.device("meta"):
        # The model keeps its registered channel count: a mismatched --input is reported by its own input check.
        model = create_model(args.name, num_classes=classes, in_channels=info.input_size[0])
        rows, params, macs = layer_summary(model, shape)
    table = Table(title=f"{args.name} at {'x'.join(map(str, shape))}, {classes} classes "
                        "(MACs = multiply-accumulates per image)")  # fmt: skip
    for col, justify in (("layer", "left"), ("type", "left"), ("output shape", "right"), ("params", "right"),
                         ("MACs", "right")):  # fmt: skip
        table.add_column(col, justify=justify)
    for r in rows:
        table.add_row(r.name, r.kind, "x".join(map(str, r.output_shape)), f"{r.params:,}" if r.params else "",
                      human(r.macs) if r.macs else "")  # fmt: skip
    table.add_section()
    table.add_row("total", "", "", f"{params:,}", f"{human(macs)} ({macs:,})")
    Console().print(table)
    return 0
