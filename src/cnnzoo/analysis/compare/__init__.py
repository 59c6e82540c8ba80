"""``cnnzoo compare``: the overview of the classic nets, measured on this machine, as a table and a chart.

For each model: parameters and MACs (FlopCounterMode, multiply-accumulates per image); peak memory of inference and
of one training step at the batch size; inference latency at batch 1 (median after warm-up) and throughput at the
batch size; training throughput (forward + backward + optimizer step, the trainer's own ``setup_training`` /
``train_step`` with its device defaults: bf16 + channels_last on CUDA, fp32 on the CPU); and accuracy, measured
(from ``--runs`` run directories, with their dataset) or the published ImageNet top-1 of torchvision's weights for the
architecture (marked "published"). Architectures torchvision also implements are timed side by side with
torchvision's model, interleaved, and reported as a speed ratio cnnzoo / torchvision (1.0 = as fast).

Memory: on CUDA the allocator's peak (``torch.cuda.max_memory_allocated``) above the model's own weights; on the CPU
the growth of the process's peak resident set (``ru_maxrss``). ``ru_maxrss`` never goes down, so every model is
measured in a fresh spawned process, inference before training.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used, so `cnnzoo --help` needs no torch
    import torch

from cnnzoo.analysis import tables
from cnnzoo.analysis.profile import parse_input, profile_model
from cnnzoo.atomic import write_atomic, write_figure
from cnnzoo.errors import CnnzooError

DEFAULT_224 = ["alexnet", "vgg16", "googlenet", "resnet18", "resnet50", "resnet152"]
DEFAULT_32 = ["alexnet_cifar", "vgg16_cifar", "googlenet_cifar", "resnet18_cifar", "resnet20", "resnet56"]
TORCHVISION = {"alexnet", "googlenet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"} | {
    f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")
}
COLUMNS = [
    "model",
    "run",
    "input",
    "batch_size",
    "params",
    "macs",
    "latency_ms",
    "infer_img_s",
    "train_img_s",
    "infer_mem_mb",
    "train_mem_mb",
    "vs_torchvision_latency",
    "vs_torchvision_train",
    "accuracy",
    "accuracy_source",
    "note",
]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``compare`` subcommand."""
    p = sub.add_parser("compare", help="params, MACs, memory, speed and accuracy side by side; table + chart")
    p.add_argument("models", nargs="*", help=f"default: {' '.join(DEFAULT_224)} (or the CIFAR nets at 3x32x32)")
    p.add_argument("--input", default="3x224x224", help="input shape CxHxW (default 3x224x224)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--batch-size", type=int, default=None, help="default 64 on CUDA, 8 on the CPU")
    p.add_argument("--repeats", type=int, default=10, help="timed repetitions per measurement (after warm-up)")
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classifier width (default: 1000 above 64x64, as the published ImageNet nets; else 10)",
    )
    p.add_argument(
        "--runs", nargs="*", default=[], help="run directories (or their report.json files) whose test accuracy to show"
    )
    p.add_argument(
        "--label",
        default=None,
        help='name of the runs\' dataset in the table and chart (e.g. "CIFAR-10 (JPEG q75)"); default: '
        "the data folder's name",
    )
    p.add_argument("--no-torchvision", action="store_true", help="skip the side-by-side torchvision timing")
    p.add_argument("--out", default="runs/compare")
    tables.add_format_argument(p)
    p.set_defaults(func=cmd_compare)


# --- measurement (runs in a fresh process per model) --------------------------------------------------------------


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device: torch.device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _median_seconds(fn, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _timers(model: torch.nn.Module, cfg, shape, batch: int, device: torch.device, num_classes: int):
    """Closures for one inference at batch 1, one at ``batch``, and one training step at ``batch``, set up by the
    trainer's own :func:`~cnnzoo.train.engine.setup_training` for ``cfg``."""
    import torch

    from cnnzoo.train.engine import setup_training, train_step

    net, optimizer, ctx = setup_training(model, cfg, device)
    x1 = ctx.layout(torch.randn(1, *shape, device=device))  # in the model's layout, as the data path hands it over
    xb = ctx.layout(torch.randn(batch, *shape, device=device))
    yb = torch.randint(0, num_classes, (batch,), device=device)

    def infer(x):
        def run():
            net.eval()
            with torch.no_grad(), ctx.autocast():
                net(x)

        return run

    def step():
        net.train()
        train_step(net, optimizer, xb, yb, ctx)

    return infer(x1), infer(xb), step


def measure(
    name: str,
    shape: tuple[int, int, int],
    batch: int,
    device_name: str,
    repeats: int,
    vs_torchvision: bool,
    num_classes: int = 10,
) -> dict:
    """All timings and memory of one model (call in a fresh process for honest CPU memory figures).

    Timed as the trainer runs: its ``fast`` recipe's step, under the trainer's process-wide backend flags (threads,
    cudnn autotuning, TF32), which are restored afterwards.
    """
    import torch

    from cnnzoo.train.config import build_config
    from cnnzoo.train.engine import backend_settings

    device = torch.device(device_name)
    cfg = build_config(recipe="fast", device=str(device))
    with backend_settings(cfg, device):
        return _measure(name, cfg, shape, batch, device, repeats, vs_torchvision, num_classes)


def _measure(name, cfg, shape, batch, device, repeats, vs_torchvision, num_classes) -> dict:
    """The body of :func:`measure`, inside the backend settings."""
    import torch

    from cnnzoo.models import create_model

    torch.manual_seed(0)
    row: dict = {"note": ""}
    model = create_model(name, num_classes=num_classes).to(device)
    base = _peak_mb(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    one, many, step = _timers(model, cfg, shape, batch, device, num_classes)
    for fn in (one, many):  # warm-up (and cudnn autotuning)
        fn()
    row["latency_ms"] = 1000 * _median_seconds(one, repeats, device)
    row["infer_img_s"] = batch / _median_seconds(many, max(2, repeats // 2), device)
    row["infer_mem_mb"] = _peak_mb(device) - base
    step()
    step()
    row["train_img_s"] = batch / _median_seconds(step, max(2, repeats // 2), device)
    row["train_mem_mb"] = _peak_mb(device) - base
    if vs_torchvision and name in TORCHVISION:
        row.update(_versus_torchvision(name, model, cfg, shape, batch, device, repeats, num_classes))
    return row


def _versus_torchvision(name, ours, cfg, shape, batch, device, repeats, num_classes) -> dict:
    """Latency and training speed of torchvision's same architecture, timed interleaved with ours (same settings).

    Ratios are cnnzoo speed / torchvision speed = torchvision time / cnnzoo time.
    """
    import torchvision

    kw = {"init_weights": True} if name == "googlenet" else {}
    theirs = getattr(torchvision.models, name)(weights=None, num_classes=num_classes, **kw).to(device)
    mine = _timers(ours, cfg, shape, batch, device, num_classes)
    tv = _timers(theirs, cfg, shape, batch, device, num_classes)
    for fn in (*mine, *tv):
        fn()

    def ratio(which: int, rounds: int) -> float:
        # Interleaved in ABBA order (ours, theirs, theirs, ours, ...) so both see the same machine load and neither
        # always runs right after the other; medians of single runs.
        times: dict[str, list[float]] = {"ours": [], "tv": []}
        for i in range(rounds):
            for side in ("ours", "tv") if i % 2 == 0 else ("tv", "ours"):
                times[side].append(_median_seconds((mine if side == "ours" else tv)[which], 1, device))
        return statistics.median(times["tv"]) / statistics.median(times["ours"])

    return {"vs_torchvision_latency": ratio(0, max(4, repeats)), "vs_torchvision_train": ratio(2, max(4, repeats))}


def _measure_in_child(args: tuple) -> dict:
    import torch

    name, shape, batch, device, repeats, vs_tv, classes = args
    try:
        return measure(name, shape, batch, device, repeats, vs_tv, classes)
    except torch.OutOfMemoryError:
        return {"oom": True}
    except CnnzooError as e:  # e.g. an input size the net cannot take
        return {"error": str(e)}
    except RuntimeError as e:
        if "out of memory" in str(e).lower():
            return {"oom": True}
        return {"error": str(e).splitlines()[0]}


def _in_fresh_process(args: tuple) -> dict:
    """``_measure_in_child(args)`` in a freshly spawned process (its own allocator and peak-RSS counter)."""
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(_measure_in_child, (args,))


def _measure_fresh(name, shape, batch, device, repeats, vs_tv, classes) -> dict:
    """``measure`` in a fresh spawned process; an OOM at ``batch`` is retried at half the batch size."""
    while True:
        row = _in_fresh_process((name, shape, batch, device, repeats, vs_tv, classes))
        if not row.get("oom"):
            return dict(row, batch_size=batch)
        if batch == 1:
            return {"error": "out of memory at batch size 1", "batch_size": 1}
        batch //= 2
        print(f"  {name}: out of memory, retrying at batch size {batch}", flush=True)


# --- accuracy ------------------------------------------------------------------------------------------------------


def published_top1(name: str) -> float | None:
    """ImageNet top-1 (fraction) of torchvision's IMAGENET1K_V1 weights for this architecture; None if none.

    Read from the weights' metadata, no download. ``*_cifar`` and ``*_paper`` variants share no weights: None.
    """
    if name not in TORCHVISION:
        return None
    from torchvision.models import get_model_weights

    try:
        weights = get_model_weights(name)["IMAGENET1K_V1"]
    except (KeyError, ValueError):
        return None
    return weights.meta["_metrics"]["ImageNet-1K"]["acc@1"] / 100


def runs_accuracy(run_dirs: list[str], label: str | None = None) -> list[dict]:
    """One entry per run directory (or report.json named directly): ``{"model", "run", "accuracy", "data"}``.

    ``run`` labels the run in the table and chart: its directory's name, or as many trailing path parts as it takes
    to tell runs with the same name apart (``a/resnet20``, ``b/resnet20``). Two runs of one model both stay.
    """
    from cnnzoo.train.tools import read_report

    found = []
    for run in run_dirs:
        path = Path(run) / "report.json" if Path(run).is_dir() else Path(run)
        report = read_report(path)  # checked: model, data, test.top1
        found.append(
            {
                "model": report["model"],
                "accuracy": report["test"]["top1"],
                "data": label or Path(report["data"]).name,
                "dir": path.resolve().parent,
            }
        )
    dirs = [e.pop("dir").parts for e in found]
    for entry, parts in zip(found, dirs, strict=True):
        depth = 1  # enough trailing parts that no other run's directory ends the same way
        while depth < len(parts) and sum(d[-depth:] == parts[-depth:] for d in dirs) > 1:
            depth += 1
        entry["run"] = "/".join(parts[-depth:])
    return found


# --- the command ---------------------------------------------------------------------------------------------------


def run_compare(
    models: list[str],
    *,
    input_shape: tuple[int, int, int],
    device: str,
    batch_size: int,
    repeats: int,
    runs: list[str],
    vs_torchvision: bool,
    out: str | Path,
    num_classes: int | None = None,
    label: str | None = None,
) -> list[dict]:
    """Measure ``models``; write compare.csv/json/md and overview.png into ``out``; return the rows.

    ``num_classes`` defaults to 1000 above 64x64 (the ImageNet nets whose published accuracy and parameter counts the
    overview shows) and 10 below (CIFAR).
    """
    import torch

    from cnnzoo.models import get_model_info

    for name in models:
        get_model_info(name)  # unknown names fail before any measuring
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CnnzooError("--device cuda: no CUDA device here (use --device cpu)")
    measured = runs_accuracy(runs, label)
    for extra in dict.fromkeys(m["model"] for m in measured if m["model"] not in models):
        print(f"adding {extra}: a --runs run trained it", file=sys.stderr)  # shown, never silently dropped
        models = [*models, extra]
    classes = num_classes or (1000 if input_shape[1] > 64 else 10)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, name in enumerate(models, 1):
        print(
            f"[{i}/{len(models)}] {name} at {'x'.join(map(str, input_shape))} on {device} ...",
            file=sys.stderr,
            flush=True,
        )
        row = _measure_row(name, input_shape, device, batch_size, repeats, vs_torchvision, classes)
        own = [m for m in measured if m["model"] == name]
        for m in own:  # one row per run of this model, labelled by its run directory; the costs are the model's
            rows.append(dict(row, run=m["run"], accuracy=m["accuracy"], accuracy_source=f"measured on {m['data']}"))
        if not own and (top1 := published_top1(name)) is not None:
            rows.append(dict(row, accuracy=top1, accuracy_source="published ImageNet top-1 (torchvision weights)"))
        elif not own:
            rows.append(row)
    rows = [{c: r.get(c) for c in COLUMNS} for r in rows]
    _write(rows, out, device, classes)
    return rows


def _measure_row(name, input_shape, device, batch_size, repeats, vs_torchvision, classes) -> dict:
    """Parameters, MACs, timings and memory of one model (a "cannot run" note when it cannot take the input)."""
    row = {"model": name, "input": "x".join(map(str, input_shape)), "note": ""}
    try:
        prof = profile_model(name, num_classes=classes, input_shape=input_shape)
        row.update(params=prof["params"], macs=prof["macs"])
        result = _measure_fresh(name, input_shape, batch_size, device, repeats, vs_torchvision, classes)
    except CnnzooError as e:  # the net cannot take this input (e.g. alexnet_paper needs 227x227)
        row.update(params=profile_model(name, num_classes=classes)["params"])
        result = {"error": str(e), "batch_size": batch_size}
    if "error" in result:
        row.update(batch_size=result["batch_size"], note=f"cannot run: {result['error']}", macs=None)
    else:
        row.update(result)
        if result["batch_size"] != batch_size:
            row["note"] = f"out of memory at batch {batch_size}; measured at {result['batch_size']}"
    return row


def _write(rows: list[dict], out: Path, device: str, num_classes: int) -> None:
    import torch

    write_atomic(out / "compare.csv", tables.to_csv(rows, COLUMNS))
    meta = {
        "device": device,
        "torch": torch.__version__,
        "num_classes": num_classes,
        "columns": COLUMNS,
        "units": {
            "macs": "multiply-accumulates per image",
            "latency_ms": "median ms at batch 1",
            "infer_img_s": "images/s",
            "train_img_s": "images/s, forward+backward+SGD step",
            "infer_mem_mb": "MiB above the weights",
            "train_mem_mb": "MiB above the weights",
            "accuracy": "fraction",
            "vs_torchvision_latency": "cnnzoo speed / torchvision speed",
        },
    }
    write_atomic(out / "compare.json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    intro = (
        f"Measured on {device}, torch {torch.__version__}, {num_classes} classes. MACs = multiply-accumulates per "
        "image; speed vs torchvision = cnnzoo / torchvision (latency / train).\n\n"
    )
    write_atomic(out / "compare.md", intro + tables.to_markdown(rows, _display_columns(rows)))
    write_figure(overview_figure(rows, device), out / "overview.png", dpi=90)


def _fmt(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


def _rate(v: float | None) -> str:
    """Images/s: whole numbers from 100 up, three significant digits below (vgg16 trains at 1.2 img/s on 2 cores)."""
    return "" if v is None else format(v, ",.0f") if v >= 100 else format(v, "#.3g")


def _versus(r: dict) -> str:
    if r["vs_torchvision_latency"] is None:
        return ""
    return f"{r['vs_torchvision_latency']:.2f} / {r['vs_torchvision_train']:.2f}"


def _display_columns(rows: list[dict]) -> list[tables.Column]:
    """The table's columns (terminal and markdown): those with something to show in some row (``run`` only with
    ``--runs``, ``vs torchvision`` only when timed); csv and json keep every field."""
    c = tables.Column
    cols = [
        c("model", "model", justify="left"),
        c("run", "run", justify="left"),
        c("params", "params", lambda r: _fmt(r["params"], ",")),
        c("macs", "GMACs", lambda r: _fmt(r["macs"] and r["macs"] / 1e9, ".3f")),
        c("latency_ms", "latency ms", lambda r: _fmt(r["latency_ms"], ".2f")),
        c("infer_img_s", "infer img/s", lambda r: _rate(r["infer_img_s"])),
        c("train_img_s", "train img/s", lambda r: _rate(r["train_img_s"])),
        c("infer_mem_mb", "infer MiB", lambda r: _fmt(r["infer_mem_mb"], ",.0f")),
        c("train_mem_mb", "train MiB", lambda r: _fmt(r["train_mem_mb"], ",.0f")),
        c("vs_torchvision_latency", "vs torchvision", _versus),
        c("accuracy", "top-1 %", lambda r: _fmt(r["accuracy"] and 100 * r["accuracy"], ".2f")),
        c("accuracy_source", "source", wrap=True, justify="left"),
        c("note", "note", wrap=True, justify="left"),
    ]
    return [col for col in cols if col.key == "model" or any(col.text(r) for r in rows)]


def accuracy_limits(accuracies: list[float]) -> tuple[float, float]:
    """Y-limits (percent) that frame ``accuracies`` (percent) with room for the labels, never outside [0, 100]."""
    if not accuracies:
        return 0.0, 100.0
    lo, hi = min(accuracies), max(accuracies)
    pad = max(3.0, 0.25 * (hi - lo))  # room for a label above the top point and below the lowest
    return max(0.0, lo - pad), min(100.0, hi + pad)


def model_colors(models: list[str]) -> dict[str, tuple]:
    """One colour per model (several runs of one model share it): tab10, or tab20 beyond ten models."""
    from matplotlib import colormaps

    names = list(dict.fromkeys(models))
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def overview_figure(rows: list[dict], device: str):
    """Accuracy against GMACs (area ~ parameters) and against measured training throughput, as a ``Figure``."""
    import math

    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5.6), layout="constrained")
    ax_macs, ax_speed = fig.subplots(1, 2)
    biggest = max((r["params"] or 1 for r in rows), default=1)
    colors = model_colors([r["model"] for r in rows])
    for ax, key in ((ax_macs, "macs"), (ax_speed, "train_img_s")):
        placed: list[tuple[float, float]] = []  # (log10 x, accuracy) of labels put above their point
        for r in rows:
            if not r["macs"] or not r[key]:
                continue
            x, color = (r["macs"] / 1e9 if key == "macs" else r[key]), colors[r["model"]]
            if r["accuracy"] is None:  # cost known, accuracy not: a dotted line at its cost, named at the foot
                ax.axvline(x, color=color, ls=":", lw=1.5)
                foot = ax.get_xaxis_transform()  # x in data, y in axes fraction
                ax.annotate(
                    r["model"],
                    (x, 0.02),
                    xycoords=foot,
                    xytext=(-2, 0),
                    textcoords="offset points",
                    rotation=90,
                    fontsize=8,
                    ha="right",
                    va="bottom",
                )
                continue
            acc, size = 100 * r["accuracy"], 40 + 1200 * r["params"] / biggest
            measured = (r["accuracy_source"] or "").startswith("measured")
            ax.scatter(x, acc, s=size, color=color, alpha=0.55, marker="o" if measured else "s", edgecolors="k")
            # Label above the marker, or below it when a label above a nearby point would collide with this one.
            crowded = any(abs(math.log10(x) - lx) < 0.3 and abs(acc - la) < 4 for lx, la in placed)
            if not crowded:
                placed.append((math.log10(x), acc))
            gap = math.sqrt(size) / 2 + 3  # marker radius in points, plus a margin
            name = f"{r['model']} ({r['run']})" if r.get("run") else r["model"]
            ax.annotate(
                f"{name}\n{r['params'] / 1e6:.1f}M params",
                (x, acc),
                fontsize=8,
                ha="center",
                va="top" if crowded else "bottom",
                xytext=(0, -gap if crowded else gap),
                textcoords="offset points",
                annotation_clip=False,
            )
    shape = rows[0]["input"] if rows else ""
    ax_macs.set(
        xlabel="GMACs per image (multiply-accumulates, log scale)",
        xscale="log",
        ylabel="top-1 accuracy (%)",
        title=f"Accuracy vs computation at {shape} (point area = parameters)",
    )
    ax_speed.set(
        xlabel=f"training throughput on {device} (images/s, log scale)",
        xscale="log",
        ylabel="top-1 accuracy (%)",
        title=f"Accuracy vs measured training speed on {device}",
    )
    ylim = accuracy_limits([100 * r["accuracy"] for r in rows if r["accuracy"] is not None])
    for ax in (ax_macs, ax_speed):
        ax.grid(alpha=0.3, which="both")
        ax.margins(x=0.18)
        ax.set_ylim(ylim)  # from the data, not from zero: the differences between the nets stay visible
    sources = sorted({r["accuracy_source"] for r in rows if r["accuracy_source"]})
    kinds = [f"{'circles' if s.startswith('measured') else 'squares'}: {s}" for s in sources]
    if any(r["accuracy"] is None and r["macs"] for r in rows):
        kinds.append("dotted lines: cost only, accuracy unknown (pass --runs RUN_DIR)")
    fig.suptitle(f"The classic CNNs: what accuracy costs. Accuracy ({'; '.join(kinds)})", fontsize=10)
    return fig


def cmd_compare(args: argparse.Namespace) -> int:
    """Measure, print the table in ``--format``, write the files."""
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    from rich.console import Console

    shape = parse_input(args.input)
    models = args.models or (DEFAULT_32 if shape[1] <= 32 else DEFAULT_224)
    batch = args.batch_size or (64 if args.device.startswith("cuda") else 8)
    if batch < 1 or args.repeats < 1 or (args.num_classes is not None and args.num_classes < 1):
        raise CnnzooError("--batch-size, --repeats and --num-classes must be >= 1")
    rows = run_compare(
        models,
        input_shape=shape,
        device=args.device,
        batch_size=batch,
        repeats=args.repeats,
        runs=args.runs,
        vs_torchvision=not args.no_torchvision,
        out=args.out,
        num_classes=args.num_classes,
        label=args.label,
    )
    title = (
        f"cnnzoo compare at {args.input} on {args.device}, batch {batch} (MACs = multiply-accumulates; "
        "speed vs torchvision = cnnzoo / torchvision, latency / train)"
    )
    columns = _display_columns(rows)
    tables.emit(
        rows,
        columns,
        args.format,
        fields=COLUMNS,
        title=title,
        keys=2 if any(c.key == "run" for c in columns) else 1,
        console=Console(),
    )
    print(
        f"wrote {Path(args.out) / 'compare.csv'}, compare.json, compare.md, overview.png ({len(rows)} rows)",
        file=sys.stderr,
    )
    return 0
