"""``cnnzoo compare``: the overview of the classic nets, measured on this machine, as a table and a chart.

For each model: parameters and MACs (FlopCounterMode, multiply-accumulates per image); peak memory of inference and
of one training step at the batch size; inference latency at batch 1 and throughput at the batch size; training
throughput (forward + backward + optimizer step, the trainer's own ``setup_training`` / ``train_step`` with its
device defaults: bf16 + channels_last on CUDA, fp32 on the CPU); and accuracy, measured (from ``--runs`` run
directories, with their dataset) or published (:mod:`.published`: torchvision's ImageNet top-1 at 224, the CIFAR-10
accuracy of an equivalent implementation at 32, each with its source). Architectures torchvision also implements are
timed side by side with torchvision's model and reported as a speed ratio cnnzoo / torchvision (1.0 = as fast).

Timing: every model lives in its own spawned process (:mod:`.worker`), set up and warmed up once; then ``--repeats``
rounds, each timing every model once, the order reversed every other round. A figure is the median of its rounds and
``<figure>_spread`` the interquartile range over the median (:mod:`.timing`), which also flags figures too spread to
trust and equal-MACs twins whose speeds disagree. The partial results are written after each model is set up and
after each round; Ctrl-C writes what was measured and exits 130.

Memory: on CUDA the allocator's peak (``torch.cuda.max_memory_allocated``) above the model's own weights; on the CPU
the growth of the process's peak resident set (``ru_maxrss``), which is why each model has a process of its own;
inference is measured before training.

``--sweep`` (:mod:`.sweep`) and ``--train-budget`` (:mod:`.budget`) are the two other analyses of this command.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cnnzoo.analysis import tables
from cnnzoo.analysis.compare import timing
from cnnzoo.analysis.compare.chart import accuracy_limits, model_colors, overview_figure
from cnnzoo.analysis.compare.common import DEFAULT_32, DEFAULT_224, CompareInterrupted, _log, runs_accuracy
from cnnzoo.analysis.compare.published import published_accuracy, published_top1
from cnnzoo.analysis.compare.worker import TORCHVISION
from cnnzoo.analysis.profile import parse_input, profile_model
from cnnzoo.atomic import write_atomic, write_figure
from cnnzoo.errors import CnnzooError

__all__ = [
    "COLUMNS",
    "accuracy_limits",
    "model_colors",
    "overview_figure",
    "published_accuracy",
    "published_top1",
    "run_compare",
    "runs_accuracy",
]

COLUMNS = [
    "model",
    "run",
    "input",
    "batch_size",
    "params",
    "macs",
    "latency_ms",
    "latency_ms_spread",
    "infer_img_s",
    "infer_img_s_spread",
    "train_img_s",
    "train_img_s_spread",
    "infer_mem_mb",
    "train_mem_mb",
    "vs_torchvision_latency",
    "vs_torchvision_train",
    "accuracy",
    "accuracy_source",
    "timing_flag",
    "note",
]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``compare`` subcommand."""
    p = sub.add_parser("compare", help="params, MACs, memory, speed and accuracy side by side; table + chart")
    _overview_arguments(p)
    _sweep_and_budget_arguments(p)
    p.add_argument("--out", default=None, help="output folder (default runs/compare, runs/sweep or runs/budget)")
    tables.add_format_argument(p)
    p.set_defaults(func=cmd_compare)


def _overview_arguments(p: argparse.ArgumentParser) -> None:
    """The models and how the overview measures them."""
    p.add_argument("models", nargs="*", help=f"default: {' '.join(DEFAULT_224)} (or the CIFAR nets at 3x32x32)")
    p.add_argument("--input", default="3x224x224", help="input shape CxHxW (default 3x224x224)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--batch-size", type=int, default=None, help="default 64 on CUDA, 8 on the CPU")
    p.add_argument(
        "--repeats", type=int, default=10, help="interleaved timing rounds (each times every model once; default 10)"
    )
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


def _sweep_and_budget_arguments(p: argparse.ArgumentParser) -> None:
    """The two analyses ``compare`` runs instead of the overview (``--sweep``, ``--train-budget``) and their
    options."""
    p.add_argument(
        "--sweep",
        nargs="?",
        const="1,2,4,8,16,32,64",
        default=None,
        metavar="BATCHES",
        help="Canziani et al.'s analysis instead: time and peak memory against batch size (default 1,2,4,8,16,32,64), "
        "the fit of time against MACs, accuracy per million parameters; writes batch_sweep.*",
    )
    p.add_argument(
        "--train-budget",
        default=None,
        metavar="TIME",
        help="train each net for the same wall-clock budget on this machine instead (e.g. 10m, 90s, 1h; "
        "needs --data); writes budget.*",
    )
    p.add_argument("--data", default=None, help="--train-budget: the dataset to train on (e.g. cifar10)")
    p.add_argument("--data-dir", default=None, help="--train-budget: where the dataset lives")
    p.add_argument("--recipe", default="fast", help="--train-budget: the training recipe (default fast)")
    p.add_argument(
        "--probe", type=float, default=20.0, help="--train-budget: seconds of the timed probe per net (default 20)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="--train-budget: retrain a net whose run folder holds another setup"
    )


# --- the command ---------------------------------------------------------------------------------------------------


def _start_worker(args: tuple):
    """A :class:`~cnnzoo.analysis.compare.worker.Worker` for ``args`` (the tests put a fake in its place)."""
    from cnnzoo.analysis.compare.worker import Worker

    return Worker(args)


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
    overview shows) and 10 below (CIFAR). Raises :class:`CompareInterrupted` on Ctrl-C, after writing what was
    measured.
    """
    models, measured = _models_and_runs(models, device, runs, label)
    classes = num_classes or (1000 if input_shape[1] > 64 else 10)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bases = [_cost_row(name, input_shape, batch_size, classes) for name in models]
    _announce(bases, input_shape, device, batch_size, repeats, vs_torchvision)
    state = {"models": bases, "samples": {b["model"]: [] for b in bases}, "rounds": 0, "repeats": repeats}
    context = (measured, input_shape, out, device, classes, label)
    workers: dict[str, object] = {}
    try:
        for i, base in enumerate(bases, 1):
            where = f"[{i}/{len(bases)}] {base['model']} at {base['input']} on {device}"
            if base["note"]:
                _log(f"{where}: {base['note']}")
            else:
                _start(base, workers, input_shape, device, vs_torchvision, classes, where)
            _write(_rows(state, context), *context[2:], state=state, chart=False)
        for r in range(repeats):
            _round(r, bases, workers, state)
            rows = _rows(state, context)
            shown = dict.fromkeys(_progress(row) for row in rows if row.get("train_img_s"))  # once per model
            _log(f"round {r + 1}/{repeats}: " + ", ".join(shown))
            _write(rows, *context[2:], state=state, chart=False)
    except KeyboardInterrupt:
        rows = _rows(state, context, interrupted=True)
        _write(rows, *context[2:], state=state, chart=True)
        raise CompareInterrupted(
            f"interrupted after {state['rounds']} of {repeats} rounds: what was measured is in {out}"
        ) from None
    finally:
        for w in workers.values():
            w.close()
    rows = _rows(state, context)
    _write(rows, *context[2:], state=state, chart=True)
    return rows


def _models_and_runs(models: list[str], device: str, runs: list[str], label: str | None) -> tuple[list[str], list]:
    """``models`` checked (before any measuring) with the models the ``runs`` trained added, and those runs'
    accuracies."""
    import torch

    from cnnzoo.models import get_model_info

    for name in models:
        get_model_info(name)  # unknown names fail before any measuring
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CnnzooError("--device cuda: no CUDA device here (use --device cpu)")
    measured = runs_accuracy(runs, label)
    for extra in dict.fromkeys(m["model"] for m in measured if m["model"] not in models):
        _log(f"adding {extra}: a --runs run trained it")  # shown, never silently dropped
        models = [*models, extra]
    return models, measured


def _round(r: int, bases: list[dict], workers: dict, state: dict) -> None:
    """Timing round ``r``: each running worker times its model once; a worker whose process died is closed and its
    model's note says so (what it measured before stays)."""
    order = [b["model"] for b in bases if b["model"] in workers]
    for name in order if r % 2 == 0 else order[::-1]:  # alternated: no model always runs first
        result = workers[name].round(r)
        if "error" in result:  # the process died (killed, or out of memory mid-run): keep what it gave
            workers.pop(name).close()
            base = next(b for b in bases if b["model"] == name)
            base["note"] = f"measuring stopped after {r} rounds: {result['error']}"
            continue
        state["samples"][name].append(result)
    state["rounds"] = r + 1


def _cost_row(name: str, input_shape, batch_size: int, classes: int) -> dict:
    """Parameters and MACs of one model (a "cannot run" note when it cannot take the input)."""
    row = {"model": name, "input": "x".join(map(str, input_shape)), "note": "", "batch_size": batch_size}
    try:
        prof = profile_model(name, num_classes=classes, input_shape=input_shape)
        row.update(params=prof["params"], macs=prof["macs"])
    except CnnzooError as e:  # the net cannot take this input (e.g. alexnet_paper needs 227x227)
        row.update(params=profile_model(name, num_classes=classes)["params"], macs=None, note=f"cannot run: {e}")
    return row


def _announce(bases, input_shape, device, batch, repeats, vs_torchvision) -> None:
    """The time estimate, and a warning when the machine is busy, before anything is measured."""
    import torch

    runnable = [b for b in bases if b["macs"]]
    rate = timing.machine_macs_per_s(device)
    seconds = timing.estimate_seconds(
        [b["macs"] for b in runnable],
        batch=batch,
        rounds=repeats,
        macs_per_s=rate,
        device=device,
        torchvision=[vs_torchvision and b["model"] in TORCHVISION for b in runnable],
    )
    _log(
        f"estimate: about {timing.duration(seconds)} for {len(runnable)} models at {'x'.join(map(str, input_shape))}, "
        f"batch {batch}, {repeats} interleaved rounds on {device} (from their MACs and a matrix product at "
        f"{rate / 1e9:.0f} GMAC/s; rough)"
    )
    cores = torch.get_num_threads() if not device.startswith("cuda") else 1
    warning = timing.busy_warning(cores)
    if warning:
        _log(warning)


def _start(base: dict, workers: dict, input_shape, device, vs_torchvision, classes, where: str) -> None:
    """Start ``base``'s model in its own process (memory measured, warmed up); an OOM retries at half the batch."""
    batch = base["batch_size"]
    asked = batch
    while True:
        _log(f"{where}: setting up at batch {batch} ...")
        worker = _start_worker((base["model"], input_shape, batch, device, vs_torchvision, classes))
        ready = worker.ready
        if not ready.get("oom"):
            break
        worker.close()
        if batch == 1:
            ready = {"error": "out of memory at batch size 1"}
            break
        batch //= 2
        _log(f"  {base['model']}: out of memory, retrying at batch size {batch}")
    base["batch_size"] = batch
    if "error" in ready:
        worker.close()
        base.update(note=f"cannot run: {ready['error']}", macs=None)
        _log(f"{where}: {base['note']}")
        return
    base.update(infer_mem_mb=ready["infer_mem_mb"], train_mem_mb=ready["train_mem_mb"])
    if batch != asked:
        base["note"] = f"out of memory at batch {asked}; measured at {batch}"
    workers[base["model"]] = worker
    _log(
        f"{where}: ready (memory: inference {ready['infer_mem_mb']:,.0f} MiB, "
        f"training {ready['train_mem_mb']:,.0f} MiB)"
    )


def _progress(row: dict) -> str:
    spread = row.get("train_img_s_spread")
    return f"{row['model']} {_rate(row['train_img_s'])} img/s" + (f" ±{100 * spread:.0f}%" if spread else "")


def _rows(state: dict, context: tuple, *, interrupted: bool = False) -> list[dict]:
    """The table's rows from what is measured so far: one per run of a model (its accuracy measured), else one with
    the published accuracy, if any; timings flagged."""
    measured, input_shape = context[0], context[1]
    rows = []
    for base in state["models"]:
        row = dict(base)
        row.update(timing.figures(state["samples"][base["model"]], base["batch_size"]))
        if interrupted and row.get("macs"):
            done = len(state["samples"][base["model"]])
            row["note"] = "; ".join(filter(None, [row["note"], f"interrupted: {done} of {state['repeats']} rounds"]))
        own = [m for m in measured if m["model"] == base["model"]]
        for m in own:  # one row per run of this model, labelled by its run directory; the costs are the model's
            rows.append(dict(row, run=m["run"], accuracy=m["accuracy"], accuracy_source=f"measured on {m['data']}"))
        if not own and (found := published_accuracy(base["model"], input_shape)) is not None:
            rows.append(dict(row, accuracy=found[0], accuracy_source=found[1]))
        elif not own:
            rows.append(row)
    timing.timing_flags(rows)
    return [{c: r.get(c) for c in COLUMNS} for r in rows]


def _write(
    rows: list[dict],
    out: Path,
    device: str,
    num_classes: int,
    label: str | None,
    *,
    state: dict | None = None,
    chart: bool = True,
) -> None:
    """compare.csv/json/md (and overview.png with ``chart``), each written atomically: a kill at any moment leaves
    the previous complete set of partial results or the new one."""
    import torch

    write_atomic(out / "compare.csv", tables.to_csv(rows, COLUMNS))
    meta = {
        "device": device,
        "torch": torch.__version__,
        "num_classes": num_classes,
        "rounds": state["rounds"] if state else None,
        "rounds_asked": state["repeats"] if state else None,
        "complete": bool(state) and state["rounds"] == state["repeats"],
        "spread_limit": timing.SPREAD_LIMIT,
        "columns": COLUMNS,
        "units": {
            "macs": "multiply-accumulates per image",
            "latency_ms": "median ms at batch 1 over the interleaved rounds",
            "infer_img_s": "images/s, median over the rounds",
            "train_img_s": "images/s, forward+backward+SGD step, median over the rounds",
            "*_spread": "interquartile range / median of the rounds",
            "infer_mem_mb": "MiB above the weights",
            "train_mem_mb": "MiB above the weights",
            "accuracy": "fraction",
            "vs_torchvision_latency": "cnnzoo speed / torchvision speed",
        },
    }
    write_atomic(out / "compare.json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    write_atomic(
        out / "compare.md", _intro(rows, device, num_classes, meta) + tables.to_markdown(rows, _display_columns(rows))
    )
    if chart:
        write_figure(overview_figure(rows, device, label=label), out / "overview.png", dpi=90)


def _intro(rows: list[dict], device: str, num_classes: int, meta: dict) -> str:
    import torch

    text = (
        f"Measured on {device}, torch {torch.__version__}, {num_classes} classes, {meta['rounds']} interleaved rounds "
        f"of {meta['rounds_asked']}. MACs = multiply-accumulates per image; each timing is the median of the rounds, "
        "±: its spread (interquartile range / median); `!`: flagged (see the timing column)"
    )
    if any(r["vs_torchvision_latency"] is not None for r in rows):
        text += "; speed vs torchvision = cnnzoo / torchvision (latency / train)"
    return text + ".\n\n"


def _fmt(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


def _rate(v: float | None) -> str:
    """Images/s: whole numbers from 100 up, three significant digits below (vgg16 trains at 1.2 img/s on 2 cores)."""
    return "" if v is None else format(v, ",.0f") if v >= 100 else format(v, "#.3g")


def _with_spread(r: dict, key: str, text: str) -> str:
    """``text`` of ``r[key]`` with its spread, and ``!`` when that spread is above the limit."""
    s = r.get(f"{key}_spread")
    if not text or s is None:
        return text
    return f"{text}±{100 * s:.0f}%" + ("!" if s > timing.SPREAD_LIMIT else "")


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
        c("latency_ms", "latency ms", lambda r: _with_spread(r, "latency_ms", _fmt(r["latency_ms"], ".2f"))),
        c("infer_img_s", "infer img/s", lambda r: _with_spread(r, "infer_img_s", _rate(r["infer_img_s"]))),
        c("train_img_s", "train img/s", lambda r: _with_spread(r, "train_img_s", _rate(r["train_img_s"]))),
        c("infer_mem_mb", "infer MiB", lambda r: _fmt(r["infer_mem_mb"], ",.0f")),
        c("train_mem_mb", "train MiB", lambda r: _fmt(r["train_mem_mb"], ",.0f")),
        c("vs_torchvision_latency", "vs torchvision", _versus),
        c("accuracy", "top-1 %", lambda r: _fmt(r["accuracy"] and 100 * r["accuracy"], ".2f")),
        c("accuracy_source", "source", wrap=True, justify="left"),
        c("timing_flag", "timing", lambda r: r.get("timing_flag") or "", wrap=True, justify="left"),
        c("note", "note", wrap=True, justify="left"),
    ]
    return [col for col in cols if col.key == "model" or any(col.text(r) for r in rows)]


def cmd_compare(args: argparse.Namespace) -> int:
    """Measure, print the table in ``--format``, write the files (or the sweep, or the equal-budget training)."""
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.sweep is not None and args.train_budget is not None:
        raise CnnzooError("--sweep and --train-budget are two analyses: give one of them")
    if args.sweep is not None:
        from cnnzoo.analysis.compare.sweep import cmd_sweep

        return cmd_sweep(args)
    if args.train_budget is not None:
        from cnnzoo.analysis.compare.budget import cmd_budget

        return cmd_budget(args)
    from rich.console import Console

    shape = parse_input(args.input)
    models = args.models or (DEFAULT_32 if shape[1] <= 32 else DEFAULT_224)
    batch = args.batch_size or (64 if args.device.startswith("cuda") else 8)
    if batch < 1 or args.repeats < 1 or (args.num_classes is not None and args.num_classes < 1):
        raise CnnzooError("--batch-size, --repeats and --num-classes must be >= 1")
    out = args.out or "runs/compare"
    rows = run_compare(
        models,
        input_shape=shape,
        device=args.device,
        batch_size=batch,
        repeats=args.repeats,
        runs=args.runs,
        vs_torchvision=not args.no_torchvision,
        out=out,
        num_classes=args.num_classes,
        label=args.label,
    )
    columns = _display_columns(rows)
    title = f"cnnzoo compare at {args.input} on {args.device}, batch {batch} (MACs = multiply-accumulates"
    if any(col.key == "vs_torchvision_latency" for col in columns):
        title += "; speed vs torchvision = cnnzoo / torchvision, latency / train"
    tables.emit(
        rows,
        columns,
        args.format,
        fields=COLUMNS,
        title=title + ")",
        keys=2 if any(c.key == "run" for c in columns) else 1,
        console=Console(),
    )
    _log(f"wrote {Path(out) / 'compare.csv'}, compare.json, compare.md, overview.png ({len(rows)} rows)")
    return 0
