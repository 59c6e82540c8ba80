"""``cnnzoo study``: the sub-commands, their options (each with its help text) and what they print."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from cnnzoo.analysis.study.archive import PART_SIZE, pack, unpack
from cnnzoo.analysis.study.degradation import by_depth, degradation_pairs, run_degradation
from cnnzoo.analysis.study.depth import DEPTH_TOLERANCE, run_depth, suggest_depth
from cnnzoo.analysis.study.gradients import decay_ratio, run_gradients
from cnnzoo.analysis.study.runs import StudyInterrupted
from cnnzoo.errors import CnnzooError

LABEL_HELP = "how to name the data in titles and tables, e.g. 'CIFAR-10 (JPEG q75)' (default: --data)"
DEVICE_HELP = "auto | cpu | cuda | cuda:N | mps (default: the recipe's, else the best available, as `train`)"
say = functools.partial(print, flush=True)  # progress lines show up at once, also through a pipe


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``study`` with its sub-commands."""
    study = sub.add_parser("study", help="the residual study: degradation, vanishing gradients, depth")
    ssub = study.add_subparsers(dest="study", metavar="STUDY", required=True)
    _gradients_parser(ssub)
    for name in ("degradation", "depth"):
        _training_parser(ssub, name)
    p = ssub.add_parser("pack", help="pack a study folder's resumable state into parts of at most 16 MiB each")
    p.add_argument("folder", help="the study folder (its --out)")
    p.add_argument("out", help="folder to write the parts <name>-NNN-of-MMM.tgz.part into")
    p.add_argument("--part-mib", type=float, default=PART_SIZE / 2**20, help="largest part in MiB (default 16)")
    p.set_defaults(func=cmd_pack)
    p = ssub.add_parser("unpack", help="unpack parts written by `study pack` into a study folder, to resume it")
    p.add_argument("parts", help="a folder holding the parts (or one part file)")
    p.add_argument("folder", help="the study folder to restore (then run the study with --out FOLDER)")
    p.add_argument("--overwrite", action="store_true", help="replace files that exist with other contents")
    p.set_defaults(func=cmd_unpack)


def _gradients_parser(ssub) -> None:
    p = ssub.add_parser(
        "gradients",
        help="gradients per layer that batch norm cannot rescale, plain vs residual, at init and after N steps",
    )
    p.add_argument("models", nargs="+", help="e.g. plain56 resnet56 plain110 resnet110")
    p.add_argument(
        "--data",
        default="cifar10",
        help="dataset name or image folder (default cifar10, as every study; digits runs offline in seconds)",
    )
    p.add_argument("--data-dir", default=None, help="where named datasets live (default $CNNZOO_DATA_DIR)")
    p.add_argument("--steps", type=int, default=100, help="training steps before the second measurement (default 100)")
    p.add_argument("--batches", type=int, default=4, help="batches each measurement is averaged over (default 4)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size of the measured batches and of training")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default: best available)")
    p.add_argument(
        "--seeds", default="0,1", help="comma-separated seeds (initialisation and data order), averaged (default 0,1)"
    )
    p.add_argument("--label", default=None, help=LABEL_HELP)
    p.add_argument("--out", default="runs/study-gradients", help="folder for gradients.csv and gradients.png")
    p.set_defaults(func=cmd_gradients)


def _training_parser(ssub, name: str) -> None:
    """``study degradation`` or ``study depth``: the same options (degradation adds ``--plain-seeds``)."""
    helptext = {
        "degradation": "train plain and residual nets of each depth; He et al. Figure 6",
        "depth": "accuracy, training time and parameters against depth; suggests a depth",
    }[name]
    p = ssub.add_parser(name, help=helptext)
    _nets_and_data(p, name)
    _training_length(p, name)
    _study_folder(p, name)
    p.set_defaults(func=cmd_degradation if name == "degradation" else cmd_depth)


def _nets_and_data(p: argparse.ArgumentParser, name: str) -> None:
    """Which nets a training study trains, on what data, with which recipe."""
    p.add_argument("--depths", default="20,32,44,56", help="comma-separated depths (default 20,32,44,56)")
    p.add_argument(
        "--family",
        default="resnet_cifar",
        help="a registered CIFAR family (`cnnzoo models`), e.g. resnet_cifar (default)"
        + (", its plain twins paired by depth" if name == "degradation" else " or plain_cifar"),
    )
    p.add_argument(
        "--data",
        default="cifar10",
        help="dataset name or image folder (default cifar10, the paper's; digits runs offline in seconds)",
    )
    p.add_argument("--data-dir", default=None, help="where named datasets live (default $CNNZOO_DATA_DIR)")
    p.add_argument(
        "--recipe",
        default="resnet-cifar-paper",
        help="training recipe (`cnnzoo recipes`); resnet-cifar-paper is the paper's 64k steps (hours per net on a "
        "GPU), resnet-cifar-short the lesson that shows both findings on a CPU in under two hours",
    )


def _training_length(p: argparse.ArgumentParser, name: str) -> None:
    """How long each run trains, with which seeds and how many images."""
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="shorten: train this many epochs (milestones at 50%% and 75%%, as the paper's 32k/48k of 64k)",
    )
    p.add_argument("--iterations", type=int, default=None, help="shorten: this many steps (milestones scaled)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; mean +- std reported")
    if name == "degradation":
        p.add_argument(
            "--plain-seeds",
            default=None,
            help="seeds of the plain nets (default: --seeds); the plain nets' gap is far wider than seed noise, "
            "the residual nets' depth gain is not: e.g. --seeds 0,1 --plain-seeds 0",
        )
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: the recipe's)")
    p.add_argument(
        "--subset",
        type=int,
        default=None,
        help="train on this many images (quick looks; fewer images change the lesson, and every output says so)",
    )
    p.add_argument(
        "--val-size",
        type=float,
        default=None,
        help="validation images carved from train: count (>= 1) or fraction (< 1) (default: the dataset's, 5,000 "
        "for CIFAR); validated after every epoch, so keep it small for quick looks",
    )


def _study_folder(p: argparse.ArgumentParser, name: str) -> None:
    """Where and how the runs train, and the study folder that holds them."""
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="train this many runs at once on the device (e.g. 4-8 on one GPU; on a CPU they share the cores)",
    )
    p.add_argument("--label", default=None, help=LABEL_HELP)
    p.add_argument(
        "--out",
        default=f"runs/study-{name}",
        help=f"study folder (default runs/study-{name}); runs "
        "in it are reused only if their configuration is the one asked for",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="retrain runs in --out whose configuration differs (default: stop with an error naming the difference)",
    )


def depths_arg(text: str, allowed: tuple[int, ...], what: str) -> list[int]:
    try:
        depths = [int(d) for d in text.split(",") if d.strip()]
    except ValueError:
        raise CnnzooError(f"--depths must be comma-separated integers, got {text!r}") from None
    bad = [d for d in depths if d not in allowed]
    if bad or not depths:
        raise CnnzooError(f"{what} depths must be among {', '.join(map(str, allowed))}; got {text!r}")
    return depths


def seeds_arg(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        raise CnnzooError(f"--seeds must be comma-separated integers >= 0, got {text!r}")
    return seeds


def shorten(args: argparse.Namespace) -> dict:
    """The command line's changes to the recipe: --epochs or --iterations (milestones kept at 50% and 75%),
    batch size, subset, device."""
    kw = {"batch_size": args.batch_size, "subset": args.subset, "device": args.device, "val_size": args.val_size}
    if args.epochs is not None:
        e = args.epochs
        kw.update(epochs=e, iterations=0, milestone_steps=[], milestones=[e / 2, 3 * e / 4])
    elif args.iterations is not None:
        k = args.iterations
        kw.update(iterations=k, milestone_steps=[round(k / 2), round(3 * k / 4)])
    if args.jobs < 1:
        raise CnnzooError(f"--jobs must be >= 1, got {args.jobs}")
    return {k: v for k, v in kw.items() if v is not None}


def _study_options(args: argparse.Namespace) -> dict:
    """The keyword arguments both training studies take from their command line."""
    return dict(
        data=args.data,
        recipe=args.recipe,
        seeds=seeds_arg(args.seeds),
        out=args.out,
        data_dir=args.data_dir,
        overrides=shorten(args),
        jobs=args.jobs,
        label=args.label,
        overwrite=args.overwrite,
        log=say,
    )


def _stopped(e: StudyInterrupted) -> int:
    print(e, file=sys.stderr)
    return e.exit_code


def cmd_gradients(args: argparse.Namespace) -> int:
    rows = run_gradients(
        args.models,
        data=args.data,
        data_dir=args.data_dir,
        steps=args.steps,
        batches=args.batches,
        seeds=seeds_arg(args.seeds),
        batch_size=args.batch_size,
        device=args.device,
        out=args.out,
        label=args.label,
        log=say,
    )
    for phase in dict.fromkeys(r["phase"] for r in rows):
        for m in args.models:
            sel = [r for r in rows if r["model"] == m and r["phase"] == phase]
            say(
                f"{m:>10} {phase:>16}: first/last conv: scale-free {decay_ratio(sel, 'conv', 'scale_free'):.3g}, "
                f"raw {decay_ratio(sel):.3g}; first/last block input {decay_ratio(sel, 'block_input'):.3g}"
            )
    say(f"wrote {Path(args.out) / 'gradients.csv'} and gradients.png")
    return 0


def cmd_degradation(args: argparse.Namespace) -> int:
    depths = depths_arg(args.depths, tuple(degradation_pairs(args.family)), f"degradation ({args.family} and plain)")
    plain_seeds = None if args.plain_seeds is None else seeds_arg(args.plain_seeds)
    try:
        rows = run_degradation(depths, family=args.family, plain_seeds=plain_seeds, **_study_options(args))
    except StudyInterrupted as e:
        return _stopped(e)
    print(Path(args.out, "degradation.md").read_text())
    print(f"wrote {len(rows)} rows to {Path(args.out) / 'degradation.csv'} and degradation.png")
    return 0


def cmd_depth(args: argparse.Namespace) -> int:
    allowed = tuple(by_depth(args.family))
    try:
        rows = run_depth(depths_arg(args.depths, allowed, args.family), family=args.family, **_study_options(args))
    except StudyInterrupted as e:
        return _stopped(e)
    for r in rows:
        print(
            f"{r['model']:>10}: validation top-1 {r['val_top1']:.2f}%  test top-1 {r['test_top1']:.2f}%  "
            f"{r['train_seconds']:.1f} s  {r['params']:,} params"
        )
    pick = suggest_depth(rows, DEPTH_TOLERANCE)
    print(f"suggested: {pick['model']}, the shallowest within {DEPTH_TOLERANCE:g} points of the best validation top-1")
    print(f"wrote {Path(args.out) / 'depth.csv'} and depth.png")
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    if not 0 < args.part_mib <= 2**20:
        raise CnnzooError(f"--part-mib must be > 0 and at most 1 TiB (1048576), got {args.part_mib}")
    parts = pack(args.folder, args.out, part_size=int(args.part_mib * 2**20))
    size = sum(p.stat().st_size for p in parts)
    print(f"packed {args.folder} into {len(parts)} part(s), {size / 2**20:.1f} MiB, in {args.out}")
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    files = unpack(args.parts, args.folder, overwrite=args.overwrite)
    print(f"unpacked {len(files)} files into {args.folder}; resume with the same study command and --out {args.folder}")
    return 0
