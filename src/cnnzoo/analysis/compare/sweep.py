"""``cnnzoo compare --sweep``: Canziani, Paszke and Culurciello 2016 measured on this machine.

For each net and each batch size (1 to 64 by default): inference and training time per image (median of
``--repeats`` repetitions, inference and training alternated, with the spread beside it) and the peak memory of one
inference and one training step. Then, across the zoo: the least-squares fit of inference time per image against
MACs (slope, intercept, R^2) at each batch size, memory against batch size per net (the paper: weights plus
activations growing linearly), the speed-up from batch 1 to the largest batch (the paper: small batches waste the
fully connected layers), and accuracy per million parameters.

Peak memory: on CUDA the allocator's peak (``torch.cuda.max_memory_allocated``) above what was allocated before the
call; on the CPU the highest running sum of the allocations minus the frees that ``torch.profiler``
(``profile_memory=True``) records during one call, in time order, i.e. the peak of what the call added to
PyTorch's CPU allocator. Both exclude the weights and the optimizer's state, which exist before the call.

Every net is measured in a fresh spawned process, one after the other; the data file is rewritten after each net,
and Ctrl-C keeps the nets already measured.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
from pathlib import Path
from typing import Any

import cnnzoo.analysis.compare.timing as timing
from cnnzoo.analysis import tables
from cnnzoo.atomic import write_atomic, write_figure
from cnnzoo.errors import CnnzooError

FIELDS = [
    "model",
    "batch_size",
    "params",
    "macs",
    "infer_ms_per_img",
    "infer_ms_per_img_spread",
    "train_ms_per_img",
    "train_ms_per_img_spread",
    "infer_peak_mb",
    "train_peak_mb",
    "note",
]


def parse_batches(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]`` (sorted, unique, each >= 1); anything else is a :class:`CnnzooError`."""
    try:
        batches = sorted({int(b) for b in text.split(",") if b.strip()})
    except ValueError:
        batches = []
    if not batches or batches[0] < 1:
        raise CnnzooError(f"--sweep takes batch sizes >= 1 separated by commas, e.g. 1,2,4,8; got {text!r}")
    return batches


# --- measurement (in a fresh process per net) ---------------------------------------------------------------------


def peak_added_mb(fn, device) -> float:
    """MiB that one call of ``fn`` adds at its peak to the allocator (see the module docstring for the method)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    cpu = torch.autograd.DeviceType.CPU
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == cpu
    )
    return peak_of(n for _, n in events) / 2**20


def peak_of(changes) -> int:
    """The highest running sum of allocation (+) and free (-) byte counts, from 0."""
    running = top = 0
    for n in changes:
        running += n
        top = max(top, running)
    return top


def _sweep_one(args: tuple) -> list[dict]:
    """Every batch size of one net (in the child process)."""
    import torch

    from cnnzoo.analysis.compare.worker import timed, timers
    from cnnzoo.models import create_model
    from cnnzoo.train.config import build_config
    from cnnzoo.train.engine import backend_settings

    name, shape, batches, device_name, repeats, classes = args
    device = torch.device(device_name)
    cfg = build_config(recipe="fast", device=str(device))
    records = []
    with backend_settings(cfg, device):
        torch.manual_seed(0)
        model = create_model(name, num_classes=classes).to(device)
        for batch in batches:
            record: dict[str, Any] = {"model": name, "batch_size": batch, "note": ""}
            try:
                _one, many, step = timers(model, cfg, shape, batch, device, classes)
                for fn in (many, step, many, step):  # warm-up (and the optimizer's state made)
                    fn()
                record["infer_peak_mb"] = peak_added_mb(many, device)
                record["train_peak_mb"] = peak_added_mb(step, device)
                infer, train = [], []
                for r in range(repeats):  # alternated, so both see the same load
                    for kind in ("infer", "train") if r % 2 == 0 else ("train", "infer"):
                        t = timed(many if kind == "infer" else step, device)
                        (infer if kind == "infer" else train).append(1000 * t / batch)
                for key, values in (("infer_ms_per_img", infer), ("train_ms_per_img", train)):
                    record[key] = statistics.median(values)
                    record[f"{key}_spread"] = timing.spread(values)
            except (torch.OutOfMemoryError, RuntimeError) as e:
                if "out of memory" not in str(e).lower():
                    raise
                record["note"] = "out of memory"
                records.append(record)
                break  # larger batches will not fit either
            records.append(record)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return records


def _measure_net(args: tuple) -> list[dict]:
    """``_sweep_one(args)`` in a freshly spawned process (the tests put a fake in its place)."""
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(_sweep_one, (args,))


# --- analysis ------------------------------------------------------------------------------------------------------


def linear_fit(xs: list[float], ys: list[float]) -> dict[str, float] | None:
    """Least-squares ``y = slope * x + intercept`` and its R^2; None for fewer than two distinct x."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - slope * x - intercept) ** 2 for x, y in zip(xs, ys, strict=True))
    return {"slope": slope, "intercept": intercept, "r2": 1.0 - ss_res / ss_tot if ss_tot else 1.0, "n": len(xs)}


def analyse(records: list[dict], nets: list[dict]) -> dict:
    """The fits across the zoo and the per-net summary (see the module docstring)."""
    fits = []
    for batch in sorted({r["batch_size"] for r in records}):
        at = [r for r in records if r["batch_size"] == batch and r.get("infer_ms_per_img") and r.get("macs")]
        rest = sorted(at, key=lambda r: r["macs"])[:-1]  # without the costliest net: does one point carry the fit?
        for what in ("infer", "train"):
            fit = linear_fit([r["macs"] / 1e9 for r in at], [r[f"{what}_ms_per_img"] for r in at])
            if fit:
                fit["r2_without_largest"] = None
                if len(rest) >= 3:
                    part = linear_fit([r["macs"] / 1e9 for r in rest], [r[f"{what}_ms_per_img"] for r in rest])
                    fit["r2_without_largest"] = part and part["r2"]
                fits.append({"batch_size": batch, "time": what, **fit})
    summary = []
    for net in nets:
        own = sorted(
            (r for r in records if r["model"] == net["model"] and r.get("train_peak_mb") is not None),
            key=lambda r: r["batch_size"],
        )
        row = dict(net)
        mem = linear_fit([r["batch_size"] for r in own], [r["train_peak_mb"] for r in own])
        row["train_mb_per_img"] = mem and mem["slope"]
        row["train_mb_fixed"] = mem and mem["intercept"]
        row["train_mb_r2"] = mem and mem["r2"]
        timed = [r for r in own if r.get("infer_ms_per_img")]
        if len(timed) >= 2:
            row["infer_speedup"] = timed[0]["infer_ms_per_img"] / timed[-1]["infer_ms_per_img"]
            row["train_speedup"] = timed[0]["train_ms_per_img"] / timed[-1]["train_ms_per_img"]
        acc = row.get("accuracy")
        row["accuracy_per_mparam"] = acc * 100 / (row["params"] / 1e6) if acc is not None and row["params"] else None
        summary.append(row)
    return {"fits": fits, "nets": summary}


# --- the command ---------------------------------------------------------------------------------------------------


def run_sweep(
    models: list[str],
    *,
    input_shape: tuple[int, int, int],
    device: str,
    batches: list[int],
    repeats: int,
    out: str | Path,
    num_classes: int | None = None,
    runs: list[str] | None = None,
    label: str | None = None,
) -> dict:
    """Measure every net at every batch size; write batch_sweep.csv/json/md/png into ``out``; return the data."""
    from cnnzoo.analysis.compare.common import CompareInterrupted, _log

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    classes = num_classes or (1000 if input_shape[1] > 64 else 10)
    nets = _sweep_nets(models, input_shape, classes, runs, label)
    _say_estimate(nets, batches, repeats, device)
    import torch

    state: dict[str, Any] = {"records": [], "done": 0}
    meta = {
        "device": device,
        "torch": torch.__version__,
        "input": "x".join(map(str, input_shape)),
        "num_classes": classes,
        "batches": batches,
        "repeats": repeats,
        "memory_method": _memory_method(device),
        "label": label,
    }
    try:
        for i, net in enumerate(nets, 1):
            _log(f"[{i}/{len(nets)}] {net['model']}: batch sizes {batches} ...")
            got = _measure_net((net["model"], input_shape, batches, device, repeats, classes))
            for record in got:
                record.update(params=net["params"], macs=net["macs"])
            state["records"].extend(got)
            state["done"] = i
            _log(f"[{i}/{len(nets)}] {net['model']}: " + ", ".join(_short(r) for r in got))
            _write(state, nets, meta, out, chart=False)
    except KeyboardInterrupt:
        _write(state, nets, meta, out, chart=True)
        raise CompareInterrupted(f"interrupted after {state['done']} of {len(nets)} nets: they are in {out}") from None
    return _write(state, nets, meta, out, chart=True)


def _sweep_nets(
    models: list[str], input_shape: tuple[int, int, int], classes: int, runs: list[str] | None, label: str | None
) -> list[dict]:
    """Each net's parameters and MACs, and its accuracy: measured by one of ``runs``, else published, else None."""
    from cnnzoo.analysis.compare.common import runs_accuracy
    from cnnzoo.analysis.compare.published import published_accuracy
    from cnnzoo.analysis.profile import profile_model

    measured = {m["model"]: m for m in runs_accuracy(runs or [], label)}
    nets = []
    for name in models:
        prof = profile_model(name, num_classes=classes, input_shape=input_shape)
        net = {"model": name, "params": prof["params"], "macs": prof["macs"], "accuracy": None, "accuracy_source": None}
        if name in measured:
            net.update(accuracy=measured[name]["accuracy"], accuracy_source=f"measured on {measured[name]['data']}")
        elif (found := published_accuracy(name, input_shape)) is not None:
            net.update(accuracy=found[0], accuracy_source=found[1])
        nets.append(net)
    return nets


def _say_estimate(nets: list[dict], batches: list[int], repeats: int, device: str) -> None:
    """Log the sweep's rough duration (from the nets' MACs and this machine's rate) and a busy machine's warning."""
    from cnnzoo.analysis.compare.common import _log

    rate = timing.machine_macs_per_s(device)
    seconds = sum(
        timing.estimate_seconds([n["macs"]], batch=b, rounds=repeats, macs_per_s=rate, device=device)
        for n in nets
        for b in batches
    ) - timing.START_S["cuda" if device.startswith("cuda") else "cpu"] * len(nets) * (len(batches) - 1)
    _log(f"estimate: about {timing.duration(seconds)} for {len(nets)} nets x batch sizes {batches} on {device} (rough)")
    import torch

    warning = timing.busy_warning(torch.get_num_threads() if not device.startswith("cuda") else 1)
    if warning:
        _log(warning)


def _memory_method(device: str) -> str:
    if device.startswith("cuda"):
        return "torch.cuda.max_memory_allocated during one call, less memory_allocated before it"
    return (
        "CPU: peak running sum of the allocations minus frees recorded by torch.profiler (profile_memory=True) "
        "during one call"
    )


def _short(r: dict) -> str:
    if r["note"]:
        return f"batch {r['batch_size']}: {r['note']}"
    return f"{r['batch_size']}: {r['train_ms_per_img']:.3g} ms/img"


def _write(state: dict, nets: list[dict], meta: dict, out: Path, *, chart: bool) -> dict:
    """batch_sweep.csv/json/md (and .png with ``chart``), atomically; returns the data as written to the json."""
    done = {r["model"] for r in state["records"]}
    data = {
        "meta": dict(meta, complete=state["done"] == len(nets), nets_measured=state["done"]),
        "records": [{k: r.get(k) for k in FIELDS} for r in state["records"]],
        **analyse(state["records"], [n for n in nets if n["model"] in done]),
    }
    write_atomic(out / "batch_sweep.csv", tables.to_csv(data["records"], FIELDS))
    write_atomic(out / "batch_sweep.json", json.dumps(data, indent=2) + "\n")
    write_atomic(out / "batch_sweep.md", sweep_markdown(data))
    if chart:
        write_figure(sweep_figure(data), out / "batch_sweep.png", dpi=90)
    return data


def _f(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


def sweep_markdown(data: dict) -> str:
    """The sweep's tables and Canziani et al.'s findings beside what this machine shows."""
    meta = data["meta"]
    lines = [
        f"Batch-size sweep at {meta['input']} on {meta['device']}, torch {meta['torch']}, {meta['repeats']} "
        "repetitions per figure (median ±spread = interquartile range / median). "
        f"Peak memory: {meta['memory_method']}.",
        "",
        *_records_table(data["records"]),
        "",
        *_nets_table(data["nets"]),
        "",
        "Fit of time per image against GMACs across the nets (least squares):",
        "",
        *_fits_table(data["fits"]),
        "",
        *findings(data),
        "",
    ]
    return "\n".join(lines)


def _records_table(records: list[dict]) -> list[str]:
    """One row per net and batch size: times per image with their spreads, peak memory."""
    lines = [
        "| model | batch | infer ms/img | train ms/img | infer peak MiB | train peak MiB | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in records:
        cells = [
            r["model"],
            str(r["batch_size"]),
            _spread_cell(r, "infer_ms_per_img"),
            _spread_cell(r, "train_ms_per_img"),
            _f(r.get("infer_peak_mb"), ",.1f"),
            _f(r.get("train_peak_mb"), ",.1f"),
            r.get("note") or "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _nets_table(nets: list[dict]) -> list[str]:
    """One row per net: its costs, memory against batch size, speed-up with the batch, accuracy."""
    lines = [
        "| model | params | GMACs | MiB per image (training) | fixed MiB | R^2 "
        "| speed-up batch 1 -> max (infer / train) "
        "| top-1 % | top-1 % per M params | source |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n in nets:
        speed = f"{n['infer_speedup']:.2f} / {n['train_speedup']:.2f}" if n.get("infer_speedup") is not None else ""
        cells = [
            n["model"],
            f"{n['params']:,}",
            f"{n['macs'] / 1e9:.3f}",
            _f(n.get("train_mb_per_img"), ".2f"),
            _f(n.get("train_mb_fixed"), ".1f"),
            _f(n.get("train_mb_r2"), ".3f"),
            speed,
            _f(n["accuracy"] and 100 * n["accuracy"], ".2f"),
            _f(n.get("accuracy_per_mparam"), ".1f"),
            n.get("accuracy_source") or "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _fits_table(fits: list[dict]) -> list[str]:
    """The least-squares fits of time per image against GMACs, one row per batch size and time."""
    lines = [
        "| batch | time | ms per GMAC | intercept ms | R^2 | R^2 without the costliest net | nets |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    if not fits:
        lines.append("| | | | | | | (none: a fit needs nets with at least two different MACs counts) |")
    for f in fits:
        lines.append(
            f"| {f['batch_size']} | {f['time']} | {f['slope']:.3g} | {f['intercept']:.3g} | {f['r2']:.3f} | "
            f"{_f(f.get('r2_without_largest'), '.3f')} | {f['n']} |"
        )
    return lines


def _spread_cell(r: dict, key: str) -> str:
    v, s = r.get(key), r.get(f"{key}_spread")
    if v is None:
        return ""
    return f"{v:.3g}" + (f"±{100 * s:.0f}%" + ("!" if s > timing.SPREAD_LIMIT else "") if s is not None else "")


def findings(data: dict) -> list[str]:
    """Canziani et al. 2016's findings, each beside what this sweep shows, agreeing or not (computed, not typed)."""
    out = []
    infer = [f for f in data["fits"] if f["time"] == "infer"]
    if infer:
        r2s = ", ".join(f"{f['r2']:.2f} at batch {f['batch_size']}" for f in infer)
        rest = [f["r2_without_largest"] for f in infer if f.get("r2_without_largest") is not None]
        verdict = "agrees" if min(f["r2"] for f in infer) >= 0.9 else "agrees only in part (R^2 below 0.9 somewhere)"
        if rest and min(rest) < 0.9 <= min(f["r2"] for f in infer):
            verdict = (
                f"agrees only in part: without the costliest net R^2 falls to {min(rest):.2f}, so one point carries "
                "much of the fit, and among the cheaper nets the operations count ranks time only roughly"
            )
        out.append(
            "- Paper: the number of operations is a reliable estimate of the inference time (a linear relation). "
            f"Here: R^2 of time per image against MACs {r2s}; this machine {verdict}."
        )
    mems = [n for n in data["nets"] if n.get("train_mb_r2") is not None]
    if mems:
        low = min(n["train_mb_r2"] for n in mems)
        out.append(
            "- Paper: memory is the weights plus activations that grow linearly with the batch size. Here: the "
            f"training peak against batch size fits a line with R^2 >= {low:.3f} for every net"
            + (" (agrees)." if low >= 0.95 else " (agrees only in part).")
        )
    speed = [n for n in data["nets"] if n.get("infer_speedup") is not None]
    if len(speed) >= 2:
        best = max(speed, key=lambda n: n["infer_speedup"])
        worst = min(speed, key=lambda n: n["infer_speedup"])
        out.append(
            "- Paper: small batches waste the fully connected layers (on a GPU; time per image falls with the batch). "
            f"Here: inference time per image falls {best['infer_speedup']:.1f}x from the smallest to the largest "
            f"batch for {best['model']}, {worst['infer_speedup']:.1f}x for {worst['model']}."
        )
    acc = [n for n in data["nets"] if n.get("accuracy_per_mparam") is not None]
    if len(acc) >= 2:
        hi = max(acc, key=lambda n: n["accuracy_per_mparam"])
        lo = min(acc, key=lambda n: n["accuracy_per_mparam"])
        out.append(
            "- Paper: accuracy per parameter differs widely between architectures. Here: "
            f"{hi['accuracy_per_mparam']:.1f} top-1 points per million parameters for {hi['model']} against "
            f"{lo['accuracy_per_mparam']:.1f} for {lo['model']}."
        )
    return out


def sweep_figure(data: dict):
    """Time per image and peak training memory against batch size, and time per image against GMACs with the fit."""
    from matplotlib.figure import Figure

    from cnnzoo.analysis.compare.chart import model_colors, plain_log_axis

    fig = Figure(figsize=(15, 10), layout="constrained")
    (a_inf, a_train), (a_mem, a_fit) = fig.subplots(2, 2)
    records = [r for r in data["records"] if r.get("infer_ms_per_img")]
    colors = model_colors([r["model"] for r in data["records"]])
    _batch_panels((a_inf, a_train, a_mem), records, colors)
    _fit_panel(a_fit, records, data["fits"], colors)
    for ax in (a_inf, a_train, a_mem, a_fit):
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:  # no fit line when the nets share one MACs count
            ax.legend(fontsize=8)
    all_batches = sorted({r["batch_size"] for r in records})
    for ax in (a_inf, a_train, a_mem):
        if all_batches:
            plain_log_axis(ax.yaxis)
            plain_log_axis(ax.xaxis)
            ax.set_xticks(all_batches, [str(b) for b in all_batches])  # the batch sizes measured, no others
    meta = data["meta"]
    data_name = f" (accuracy: {meta['label']})" if meta.get("label") else ""
    fig.suptitle(
        f"Canziani et al. 2016 on this machine: {meta['input']} on {meta['device']}{data_name}; "
        f"memory: {meta['memory_method']}",
        fontsize=10,
    )
    return fig


def _batch_panels(axes: tuple, records: list[dict], colors: dict[str, tuple]) -> None:
    """Inference and training time per image, and peak memory, against the batch size: one line per net."""
    a_inf, a_train, a_mem = axes
    for name in dict.fromkeys(r["model"] for r in records):
        own = [r for r in records if r["model"] == name]
        b = [r["batch_size"] for r in own]
        for ax, key in ((a_inf, "infer_ms_per_img"), (a_train, "train_ms_per_img")):
            ax.plot(b, [r[key] for r in own], "o-", color=colors[name], label=name)
        a_mem.plot(b, [r["train_peak_mb"] for r in own], "o-", color=colors[name], label=f"{name} training")
        a_mem.plot(b, [r["infer_peak_mb"] for r in own], "x--", color=colors[name], alpha=0.6)
    for ax, what in ((a_inf, "inference"), (a_train, "training step")):
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="ms per image", title=f"{what}: time per image")
    a_mem.set(
        xscale="log",
        yscale="log",
        xlabel="batch size",
        ylabel="MiB added at the peak",
        title="peak memory (solid: training step, dashed: inference)",
    )


def _fit_panel(ax, records: list[dict], fits: list[dict], colors: dict[str, tuple]) -> None:
    """Inference time per image against GMACs at the smallest and the largest batch, each with its least-squares
    line."""
    batches = sorted({r["batch_size"] for r in records})
    for batch, marker in ((batches[0], "o"), (batches[-1], "s")) if batches else ():
        at = [r for r in records if r["batch_size"] == batch]
        fit = next((f for f in fits if f["batch_size"] == batch and f["time"] == "infer"), None)
        xs = [r["macs"] / 1e9 for r in at]
        ax.scatter(xs, [r["infer_ms_per_img"] for r in at], marker=marker, c=[colors[r["model"]] for r in at])
        if fit:
            lo, hi = min(xs), max(xs)
            ax.plot(
                [lo, hi],
                [fit["slope"] * lo + fit["intercept"], fit["slope"] * hi + fit["intercept"]],
                "k-" if marker == "o" else "k--",
                label=f"batch {batch}: {fit['slope']:.3g} ms/GMAC, R^2 {fit['r2']:.2f}",
            )
    ax.set(
        xlabel="GMACs per image",
        ylabel="inference ms per image",
        title="inference time against operations (circles: smallest batch, squares: largest)",
    )


def cmd_sweep(args: argparse.Namespace) -> int:
    """``cnnzoo compare --sweep``."""
    from cnnzoo.analysis.compare.common import DEFAULT_32, DEFAULT_224, _log
    from cnnzoo.analysis.profile import parse_input
    from cnnzoo.models import get_model_info

    shape = parse_input(args.input)
    batches = parse_batches(args.sweep)
    models = args.models or (DEFAULT_32 if shape[1] <= 32 else DEFAULT_224)
    for name in models:
        get_model_info(name)
    if args.repeats < 1:
        raise CnnzooError("--repeats must be >= 1")
    out = Path(args.out or "runs/sweep")
    data = run_sweep(
        models,
        input_shape=shape,
        device=args.device,
        batches=batches,
        repeats=args.repeats,
        out=out,
        num_classes=args.num_classes,
        runs=args.runs,
        label=args.label,
    )
    if args.format == "json":
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        sys.stdout.write(sweep_markdown(data))
    _log(f"wrote {out / 'batch_sweep.csv'}, batch_sweep.json, batch_sweep.md, batch_sweep.png")
    return 0
