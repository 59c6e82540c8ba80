"""``cnnzoo data DATA``: what a dataset holds, checked exactly as training checks it, before anyone trains on it."""

from __future__ import annotations

import argparse

from cnnzoo.errors import CnnzooError

# torch, rich and the data layer are imported in the functions: `cnnzoo --help` needs none of them.


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``data`` subcommand."""
    p = sub.add_parser("data", help="show a dataset: classes, images per split, sizes, modes, skipped files")
    p.add_argument("data", help="digits | cifar10 | cifar100 | mnist | fashion-mnist | PATH of an image folder")
    p.add_argument("--data-dir", default=None, help="where named datasets live (default $CNNZOO_DATA_DIR)")
    p.add_argument("--download", action="store_true", help="download a missing named dataset (torchvision)")
    p.add_argument("--strict", action="store_true", help="a file that cannot be used is an error, not a warning")
    p.add_argument(
        "--example",
        default=None,
        metavar="CLASS",
        help="write the first test image of CLASS as a PNG (--out, default CLASS.png) instead, e.g. to predict on",
    )
    p.add_argument("--out", default=None, help="with --example: the PNG to write")
    p.set_defaults(func=cmd_data)


def describe(data: str, *, data_dir: str | None = None, strict: bool = False, download: bool | None = None) -> dict:
    """The facts ``cnnzoo data`` prints, as a dict (the same decode and checks as :func:`cnnzoo.data.load_data`)."""
    import torch

    from cnnzoo.data.folders import Streamed
    from cnnzoo.data.load import decode

    d = decode(data, data_dir=data_dir, strict=strict, download=download or None)
    if isinstance(d, Streamed):
        train_y, test_y, kind = d.train_labels, d.test_labels, f"streamed image files ({d.in_channels} channels)"
    else:
        train_y, test_y = d.train_labels, d.test_labels
        kind = f"decoded uint8 {tuple(d.train_images.shape[1:])} (C, H, W), held in memory"
    splits = (("train", train_y), ("test", test_y))
    per_class = {split: torch.bincount(y, minlength=len(d.classes)).tolist() for split, y in splits}
    return {
        "name": d.name,
        "classes": list(d.classes),
        "per_class": per_class,
        "kind": kind,
        "train": len(train_y),
        "test": len(test_y),
        "info": d.info,
    }


def cmd_data(args: argparse.Namespace) -> int:
    """Print the dataset's facts; bad data raises a DataError (one line, exit 2) from the shared checks."""
    if args.out is not None and args.example is None:
        raise CnnzooError("--out goes with --example CLASS (the PNG it writes)")
    if args.example is not None:
        from cnnzoo.data.load import save_example

        print(save_example(args.data, args.example, args.out or f"{args.example}.png", data_dir=args.data_dir))
        return 0
    from rich.console import Console
    from rich.table import Table

    facts = describe(args.data, data_dir=args.data_dir, strict=args.strict, download=args.download)
    info = facts["info"]
    console = Console()
    console.print(
        f"[bold]{facts['name']}[/bold]: {len(facts['classes'])} classes, {facts['train']:,} training and "
        f"{facts['test']:,} test images; {facts['kind']}"
    )
    if "source" in info:
        console.print(f"source: {info['source']}")
    if "test_split" in info:
        console.print(f"test split: {info['test_split']}")
    table = Table(title="images per class (a validation split is carved from train when training)")
    table.add_column("class")
    table.add_column("train", justify="right")
    table.add_column("test", justify="right")
    for i, name in enumerate(facts["classes"]):
        table.add_row(name, f"{facts['per_class']['train'][i]:,}", f"{facts['per_class']['test'][i]:,}")
    console.print(table)
    for key, label in (("sizes", "image sizes (WxH)"), ("modes", "image modes")):
        if info.get(key):
            console.print(f"{label}: " + ", ".join(f"{k} x{v:,}" for k, v in info[key].items()))
    skipped = info.get("skipped") or []
    console.print(f"files skipped: {len(skipped)}")
    for rel, reason in skipped[:20]:
        console.print(f"  {rel}: {reason}")
    if len(skipped) > 20:
        console.print(f"  ... and {len(skipped) - 20} more")
    return 0
