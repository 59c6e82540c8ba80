"""``cnnzoo train | eval | predict | export | recipes``.

``train``'s option flags are generated from :class:`cnnzoo.train.config.TrainConfig`'s fields (one flag per field,
its help from the field), so the CLI, the Python API and the recipes always name the same options. A flag that is
not given keeps the recipe's value.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cnnzoo.errors import CnnzooError
from cnnzoo.train.config import FIELDS

_NOT_FLAGS = {"model", "data", "recipe"}  # positional / named explicitly below
# Short and alternative spellings users of torchvision's reference train.py and timm's train.py type by habit
# (`--model` and `--output-dir` are added in ``register``, `--amp` in ``_add_config_flags``).
ALIASES = {"batch_size": ("-b",)}


def _parse_list(kind: type):
    def parse(text: str) -> list:
        try:
            return [kind(v) for v in text.split(",") if v.strip()] if text.strip() else []
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None

    return parse


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training options (override the recipe)")
    for name, f in FIELDS.items():
        if name in _NOT_FLAGS:
            continue
        flag = "--" + name.replace("_", "-")
        flags = (flag, *ALIASES.get(name, ()))
        kind = f.type.replace(" | None", "")
        default = f.default if not callable(f.default_factory) else f.default_factory()
        help_text = f.metadata["help"]
        if "default" not in help_text and default not in (None, []):  # None and [] say nothing a reader can use
            help_text += f" (default: {default})"
        common = dict(dest=name, default=argparse.SUPPRESS, help=help_text)
        if kind == "bool":
            group.add_argument(*flags, action=argparse.BooleanOptionalAction, **common)
        elif kind.startswith("list"):
            group.add_argument(*flags, type=_parse_list(int if "int" in kind else float), metavar="X,Y", **common)
        else:
            choices = f.metadata.get("choices")
            metavar = "{" + ",".join(choices) + "}" if choices else kind.upper()
            group.add_argument(
                *flags, type={"int": int, "float": float}.get(kind, str), choices=choices, metavar=metavar, **common
            )
    # torchvision's references/classification/train.py and timm's train.py spell mixed precision --amp; here it is
    # the default "auto" (bf16 autocast on CUDA, fp32 on the CPU and elsewhere), given to override a recipe's fp32.
    group.add_argument(
        "--amp",
        dest="precision",
        action="store_const",
        const="auto",
        default=argparse.SUPPRESS,
        help="mixed precision, as in torchvision's and timm's train.py: the same as --precision auto (bf16 autocast "
        "on CUDA, fp32 elsewhere)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add the trainer's subcommands to the ``cnnzoo`` parser."""
    _train_parser(sub)
    _eval_parser(sub)
    _predict_parser(sub)
    _export_parser(sub)
    _recipes_parser(sub)


def _train_parser(sub: argparse._SubParsersAction) -> None:
    """``cnnzoo train``: the run's own options, then one flag per :class:`TrainConfig` field."""
    p = sub.add_parser(
        "train",
        help="train a model on a dataset into a run directory",
        description="Train MODEL on --data; flags override the --recipe; see `cnnzoo recipes`.",
    )
    p.add_argument("model", nargs="?", help="model name (`cnnzoo models`); omit with --resume")
    p.add_argument("--model", dest="model_flag", default=None, metavar="MODEL", help="the model, as a flag (timm's)")
    p.add_argument("--data", default=None, help="dataset name or image folder (default: digits)")
    p.add_argument("--recipe", default=None, help="recipe name (`cnnzoo recipes`) or a .toml file")
    p.add_argument("--out", "--output-dir", default=None, help="run directory (default: runs/<model>-<data>-<time>)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run from its last.pt")
    p.add_argument(
        "--seeds",
        type=_parse_list(int),
        default=None,
        metavar="0,1,2",
        help="train once per seed into OUT/seed-K and report mean +- std",
    )
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="STEPS",
        help="stop (resumably, as on Ctrl-C) once this many steps are done",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a previous run's files in --out")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    _add_config_flags(p)
    p.set_defaults(func=cmd_train)


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="re-evaluate a run's checkpoint on a split")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--split", choices=("test", "val", "train"), default="test")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--protocol",
        choices=("center", "ten-crop", "multi-scale", "multi-crop"),
        default="center",
        help="test views, probabilities averaged (cnnzoo.train.protocols; image folders)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_eval)


def _predict_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="top-k classes of image files with a trained run, an exported .onnx or pretrained weights",
        description="cnnzoo predict RUN_DIR IMAGE... | cnnzoo predict --model NAME --weights SPEC IMAGE...",
    )
    p.add_argument(
        "run_dir", metavar="RUN_DIR", help="a run directory or a .onnx file from `cnnzoo export` (omit with --model)"
    )
    p.add_argument("images", nargs="*", metavar="IMAGE")
    p.add_argument("--model", default=None, help="with --weights: predict with these weights, no run directory")
    p.add_argument(
        "--weights",
        default=None,
        help="a torchvision weights name (IMAGENET1K_V1, ...), a .pth file or a run directory: the preprocessing and "
        "class names come with it",
    )
    p.add_argument("--download", action="store_true", help="fetch torchvision weights missing from the cache")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_predict)


def _export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a trained run's model (checked against the eager model)")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--format", choices=("onnx", "torchscript"), required=True)
    p.add_argument("--output", default=None, help="file to write (default: RUN_DIR/model.onnx or model.ts.pt)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing --output that is not an earlier export"
    )
    p.set_defaults(func=cmd_export)


def _recipes_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recipes", help="list the shipped training recipes")
    p.add_argument("name", nargs="?", help="print this recipe's TOML")
    p.set_defaults(func=cmd_recipes)


def train_model(args: argparse.Namespace) -> str | None:
    """The model named positionally or with ``--model`` (both: they must agree)."""
    if args.model and args.model_flag and args.model != args.model_flag:
        raise CnnzooError(f"two models given: {args.model!r} and --model {args.model_flag!r}")
    return args.model or args.model_flag


def config_overrides(args: argparse.Namespace) -> dict:
    """The :class:`TrainConfig` fields given on the command line (flags not given keep the recipe's values)."""
    return {name: getattr(args, name) for name in FIELDS if name not in _NOT_FLAGS and hasattr(args, name)}


def cmd_train(args: argparse.Namespace) -> int:
    """Exit status: 0 trained (or stopped by --stop-after), 128 + N stopped by signal N; errors: see ``cnnzoo.cli``."""
    from cnnzoo.train.api import train

    result = train(
        train_model(args),
        args.data,
        recipe=args.recipe,
        out=args.out,
        resume=args.resume,
        seeds=args.seeds,
        stop_after=args.stop_after,
        overwrite=args.overwrite,
        quiet=args.quiet,
        **config_overrides(args),
    )
    if result.get("interrupted") and result.get("signal"):
        # Stopped by a signal: last.pt is saved, but the run is not done. 128 + the signal number (130 for SIGINT,
        # 143 for SIGTERM) is the shell's convention, so `cnnzoo train ... && cnnzoo export ...` stops here.
        return 128 + result["signal"]
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from cnnzoo.train.tools import evaluate_run

    result = evaluate_run(
        args.run_dir, split=args.split, which=args.checkpoint, device=args.device, protocol=args.protocol
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{args.run_dir} ({args.checkpoint}.pt) on {result['data']} {args.split} ({result['n']} images, "
            f"{args.protocol} protocol): "
            f"loss {result['loss']:.4f}   top-1 {100 * result['top1']:.2f}%   top-5 {100 * result['top5']:.2f}%"
        )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cnnzoo.train.tools import predict, predict_onnx, predict_pretrained

    if (args.model is None) != (args.weights is None):
        raise CnnzooError("predict with pretrained weights needs both --model NAME and --weights SPEC")
    if args.model is not None:  # no run directory: every positional is an image
        images = [args.run_dir, *args.images]
        results = predict_pretrained(args.model, args.weights, images, top_k=args.top_k, download=args.download)
    elif not args.images:
        raise CnnzooError("no image files given: cnnzoo predict RUN_DIR IMAGE...")
    elif args.run_dir.endswith(".onnx"):  # an exported model: onnxruntime, preprocessing from its metadata
        results = predict_onnx(args.run_dir, args.images, top_k=args.top_k)
    else:
        results = predict(args.run_dir, args.images, top_k=args.top_k, which=args.checkpoint)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(r["image"])
        for name, p in r["top"]:
            print(f"  {100 * p:6.2f}%  {name}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from cnnzoo.train.tools import export

    result = export(args.run_dir, fmt=args.format, output=args.output, which=args.checkpoint, overwrite=args.overwrite)
    print(
        f"wrote {', '.join(result['files'])} ({args.format}, with class names, input size and normalisation); "
        f"checked on a batch of {result['batch']}: max |difference| from the eager model {result['max_abs_diff']:.2e}"
    )
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from cnnzoo.train.config import list_recipes, recipes_dir

    if args.name:
        path = recipes_dir() / f"{args.name}.toml"
        if not path.is_file():
            raise CnnzooError(f"unknown recipe {args.name!r}; recipes: {', '.join(list_recipes())}")
        print(Path(path).read_text(), end="")
        return 0
    recipes = list_recipes()
    width = max(map(len, recipes))
    for name, description in recipes.items():
        print(f"{name:<{width}}  {description}")
    return 0
