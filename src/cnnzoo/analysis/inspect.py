"""``cnnzoo models`` (the zoo as a table) and ``cnnzoo summary NAME`` (one net layer by layer)."""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from cnnzoo.analysis.profile import count_params, human, layer_summary, parse_input, profile_model
from cnnzoo.analysis.tables import Column, add_format_argument, emit
from cnnzoo.models import create_model, get_model_info, list_models


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``models`` and ``summary`` subcommands."""
    families = sorted({get_model_info(n).family for n in list_models()})
    p = sub.add_parser("models", help="list every network: family, paper, input size, params, MACs")
    p.add_argument("--family", choices=families, help="only this family")
    add_format_argument(p)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("summary", help="one network layer by layer: output shape, params, MACs")
    p.add_argument("name", help="registered model name (see `cnnzoo models`)")
    p.add_argument("--input", default=None, help="input shape CxHxW (default: the model's, e.g. 3x224x224)")
    p.add_argument("--num-classes", type=int, default=None, help="classes (default: the model's, 1000 or 10)")
    p.set_defaults(func=cmd_summary)


def cmd_models(args: argparse.Namespace) -> int:
    """Print the zoo: params and MACs counted on the meta device at each model's default input size."""
    names = list_models(family=args.family)
    console = Console()
    rows = []
    with Progress(transient=True, console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task("counting", total=len(names))
        for name in names:
            rows.append(profile_model(name))
            progress.advance(task)
    title = (
        "cnnzoo models (params and MACs of the network used at inference, at the input size shown; 1000 "
        "classes for ImageNet-size nets, 10 for 32x32 ones; aux = training-only auxiliary classifiers; "
        "MACs = multiply-accumulates per image)"
    )
    rows = [dict(r, input="x".join(map(str, r["input_size"]))) for r in rows]
    columns = [
        Column("name", "name", justify="left"),
        Column("family", "family", justify="left"),
        Column("paper", "paper", lambda r: r["paper"].split(",")[0], wrap=True, justify="left"),
        Column("input", "input"),
        Column("params", "params", lambda r: f"{r['params']:,}"),
        Column("aux_params", "aux params", lambda r: f"+{r['aux_params']:,}" if r["aux_params"] else ""),
        Column("macs", "MACs", lambda r: human(r["macs"])),
    ]
    if not any(r["aux_params"] for r in rows):
        columns = [c for c in columns if c.key != "aux_params"]
    fields = ["name", "family", "paper", "input", "params", "aux_params", "macs"]  # csv/json: raw counts, full paper
    emit(rows, columns, args.format, fields=fields, title=title, console=console)
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    """Print one model's per-layer table and totals (the network used at inference; auxiliary heads apart)."""
    info = get_model_info(args.name)
    shape = parse_input(args.input) if args.input else info.input_size
    classes = args.num_classes or info.num_classes
    with torch.device("meta"):
        # The model keeps its registered channel count: a mismatched --input is reported by its own input check.
        model = create_model(args.name, num_classes=classes, in_channels=info.input_size[0])
        rows, params, macs = layer_summary(model, shape)
        aux_params = count_params(model)[0] - params
    size = "x".join(map(str, shape))
    table = Table(title=f"{args.name} at {size}, {classes} classes (MACs = multiply-accumulates per image)")
    for col in ("layer", "type", "output shape", "params", "MACs"):
        table.add_column(col, justify="left" if col in ("layer", "type") else "right")
    for r in rows:
        out = "x".join(map(str, r.output_shape))
        table.add_row(r.name, r.kind, out, f"{r.params:,}" if r.params else "", human(r.macs) if r.macs else "")
    table.add_section()
    table.add_row("total", "", "", f"{params:,}", f"{human(macs)} ({macs:,})")
    if aux_params:
        table.add_row("auxiliary heads", "training only", "", f"+{aux_params:,}", "")
    Console().print(table)
    return 0
