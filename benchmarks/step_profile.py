"""Where one training step's time goes (resnet56, the ``resnet-cifar-paper`` recipe, batch 128).

One process. The data is synthetic: random uint8 CIFAR-size images (45,000 training, 5,000 validation, 3 x 32 x 32)
put on the device once and served by the trainer's own loader (``DeviceLoader``: pad-4 crop and flip as one gather,
normalisation, channels_last float32), so nothing is decoded and the augmentation is the real one. Model, optimizer
and step are the trainer's: ``build_config("resnet56", "cifar10", recipe="resnet-cifar-paper")`` (SGD 0.1, momentum
0.9, weight decay 1e-4 on every parameter, batch 128), ``make_optimizer`` (fused SGD on CUDA), ``step_context``
(bf16 autocast, channels_last on CUDA), ``train_step``, ``GraphedStep`` and the loop's ``train_one_epoch``.

Parts, in this order (``--parts`` picks some); each is written to ``--out`` as soon as it is measured, so a run cut
short keeps its figures (a part still "running" or "pending" in the file did not finish):

eager      ``train_step`` back to back on one batch (GPU time between CUDA events, and the host's time to issue
           the steps), then the same steps through the real loop (``train_one_epoch``, wall clock). The figure to
           beat: 26.8 ms/step (a plain eager loop, bf16, H100: docs/benchmarks.md).
graph      ``GraphedStep``: (i) back-to-back ``replay()`` calls between CUDA events = the graph's own GPU time;
           (ii) the real loop by wall clock; (ii) - (i) is host work the GPU does not hide.
profile    ``torch.profiler`` (CUDA activity only, so the profiler adds no host work) over a few replays and a few
           eager steps: kernels per step, kernel time, idle time between kernels, and the split by kernel class
           (rules: ``KERNEL_CLASSES``, first match on the lower-cased kernel name; the 15 costliest kernels are listed
           with their class so the rules can be checked).
batch256   the graph's replay time at batch 256 against 128: about the same = latency-bound (fewer kernels is the
           lever); about double = throughput-bound.
precision  graph replay, bf16 autocast against fp32 with TF32 (``configure_backends`` turns TF32 on).
layout     graph replay, channels_last against NCHW (both bf16).
sync       ``torch.cuda.set_sync_debug_mode("warn")`` over one epoch of the real loop (60 steps) and its end
           (``fit``: evaluation, metrics, best.pt and last.pt written to a temporary folder), after an identical
           warm-up epoch; every warning is caught with the Python stack that raised it and listed by site. Then,
           without the debug mode, the epoch end's two costs on their own: evaluation of the 5,000 validation images
           and writing last.pt.
ema        ``--ema``'s update per step: torch's ``AveragedModel`` against ``cnnzoo.train.ema.EMA`` (device-side
           counter, no host branch), then EMA captured in a CUDA graph and checked against an eager one (a few
           seconds).
levers     the real loop with ``--ema 0.999`` and ``GraphedStep``: the loop setting the lr and updating the EMA per
           step against the lr table and the EMA update inside the captured step.
compile    last, since it may fail: ``torch.compile`` (default mode) + ``GraphedStep``: seconds of the first step
           (compilation), graph replay and loop times measured with ``torch._dynamo.config.error_on_recompile`` on,
           and dynamo's counters (graphs compiled, graph breaks).

GPU timings come after warm-up steps (cudnn autotuning, graph capture), from CUDA events. On the CPU (``--device cpu
--quick``, the smoke test) the flow runs with tiny step counts, graphs run uncaptured, and each part that needs CUDA
is recorded as "skipped: needs CUDA" (with what its dry run did, to show the code path works).

Run (GPU, about 3 minutes): python benchmarks/step_profile.py --device cuda --out runs/gpu/step_profile.json
Run (CPU smoke):          python benchmarks/step_profile.py --device cpu --quick --out /tmp/step_profile.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import cnnzoo
from cnnzoo.data.bundle import DataBundle
from cnnzoo.data.device_loader import DeviceLoader, EmptyLoader
from cnnzoo.errors import CnnzooError
from cnnzoo.train import checkpoint
from cnnzoo.train.config import build_config
from cnnzoo.train.engine import (
    GraphedStep,
    compile_model,
    configure_backends,
    lr_table,
    make_ema,
    make_optimizer,
    resolve_device,
    step_context,
    train_step,
    use_channels_last,
)
from cnnzoo.train.loop import Step, evaluate, fit, train_one_epoch
from cnnzoo.train.state import RunState
from cnnzoo.train.stopping import StopFlag

PARTS = ("eager", "graph", "profile", "batch256", "precision", "layout", "sync", "ema", "levers", "compile")
NEEDS_CUDA = "skipped: needs CUDA"
MODEL, RECIPE = "resnet56", "resnet-cifar-paper"  # --model picks another CIFAR net (the smoke test: resnet20)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
OUR_CODE = (str(Path(cnnzoo.__file__).resolve().parent), str(Path(__file__).resolve()))  # sync sites are named here
PAPER_STEPS = 64_000  # He et al. 2016, section 4.2: 64k iterations of batch 128

# Kernel classes: the first rule whose substring is in the lower-cased kernel name wins. cuDNN names its convolution
# kernels by pass (``sm90_xmma_fprop_implicit_gemm_...``, ``..._dgrad_...``, ``..._wgrad_...``); a data-grad that
# cuDNN runs as a forward convolution of the flipped filter is counted as forward, and ``splitKreduce`` (the split-K
# reduction cuDNN uses for weight-grads) as weight-grad. ``multi_tensor_apply`` is the fused/foreach optimizer update
# (also grad clipping and foreach EMA updates, when on). Everything PyTorch runs elementwise (ReLU, residual adds,
# the uint8 -> float normalisation, autocast casts, fills, copies, cat) is one class.
KERNEL_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("memcpy/memset", ("memcpy", "memset")),
    ("optimizer", ("multi_tensor_apply", "fusedsgd", "fused_sgd", "sgd", "adam")),
    ("conv weight-grad", ("wgrad", "bwd_filter", "backward_filter", "splitkreduce")),
    ("conv data-grad", ("dgrad", "bwd_data", "backward_data")),
    ("conv forward", ("fprop", "implicit_gemm", "implicit_convolve", "convolve", "conv2d", "winograd", "conv_fwd")),
    ("batch norm", ("batch_norm", "batchnorm", "bn_fw", "bn_bw", "welford")),
    ("loss", ("softmax", "nll_loss", "cross_entropy")),
    ("matmul (fc)", ("gemm", "gemv", "cublas", "cutlass")),
    ("layout transforms", ("nchwtonhwc", "nhwctonchw", "transpose")),
    ("elementwise and casts", ("elementwise", "copy", "cast", "fill", "relu", "cat")),
    ("reductions and pooling", ("reduce", "pool", "argmax")),
)


def kernel_class(name: str) -> str:
    """The class of a GPU kernel by its name (``KERNEL_CLASSES``), ``other`` when no rule matches."""
    low = name.lower()
    for cls, keys in KERNEL_CLASSES:
        if any(k in low for k in keys):
            return cls
    return "other"


def kernel_summary(kernels: list[tuple[str, float, float]], steps: int) -> dict[str, Any]:
    """Per-step figures from kernels ``(name, start_us, duration_us)`` recorded over ``steps`` steps.

    busy = the union of the kernels' intervals (overlapping streams counted once); idle = the span from the first
    kernel's start to the last one's end minus busy: time the GPU had nothing to run (launch latency, host work).
    """
    steps = max(1, steps)
    if not kernels:
        return {
            "kernels_per_step": 0.0,
            "kernel_ms_per_step": 0.0,
            "busy_ms_per_step": 0.0,
            "span_ms_per_step": 0.0,
            "idle_ms_per_step": 0.0,
            "gaps_over_10us_per_step": 0.0,
            "largest_gap_us": 0.0,
            "by_class": {},
            "top": [],
        }
    spans = sorted((start, start + dur) for _, start, dur in kernels)
    busy, gaps, (lo, hi) = 0.0, [], spans[0]
    for start, end in spans[1:]:
        if start > hi:  # a gap: the merged interval [lo, hi] is closed
            busy += hi - lo
            gaps.append(start - hi)
            lo = start
        hi = max(hi, end)
    busy += hi - lo
    span = max(end for _, end in spans) - spans[0][0]
    total = sum(dur for _, _, dur in kernels)
    classes: dict[str, list[float]] = {}
    per_name: dict[str, list[float]] = {}
    for name, _, dur in kernels:
        classes.setdefault(kernel_class(name), []).append(dur)
        per_name.setdefault(name, []).append(dur)
    by_class = {
        cls: {"kernels_per_step": len(d) / steps, "ms_per_step": sum(d) / steps / 1000, "share": sum(d) / total}
        for cls, d in sorted(classes.items(), key=lambda kv: -sum(kv[1]))
    }
    top = sorted(per_name.items(), key=lambda kv: -sum(kv[1]))[:15]
    return {
        "kernels_per_step": len(kernels) / steps,
        "kernel_ms_per_step": total / steps / 1000,
        "busy_ms_per_step": busy / steps / 1000,
        "span_ms_per_step": span / steps / 1000,
        "idle_ms_per_step": (span - busy) / steps / 1000,
        "gaps_over_10us_per_step": sum(g > 10 for g in gaps) / steps,
        "largest_gap_us": max(gaps, default=0.0),
        "by_class": by_class,
        "top": [
            {
                "kernel": n[:160],
                "class": kernel_class(n),
                "calls_per_step": len(d) / steps,
                "ms_per_step": sum(d) / steps / 1000,
            }
            for n, d in top
        ],
    }


# --- setup ---------------------------------------------------------------------------------------------------------


@dataclass
class Opts:
    """What every part needs: the device, sizes, step counts, and the output document."""

    device: torch.device
    batch: int
    scale: float
    quick: bool
    out: Path | None
    model: str = MODEL
    doc: dict[str, Any] = field(default_factory=dict)
    replay_cache: dict[tuple, dict] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def base_precision(self) -> str:
        """What the trainer runs on CUDA (bf16); on the CPU fp32, so the dry runs stay quick (bf16 is slow there)."""
        return "bf16" if self.cuda else "fp32"

    def n(self, steps: int) -> int:
        """``steps`` scaled by ``--steps`` (``--quick``: a few), at least 1."""
        return max(1, round(steps * self.scale))

    def warm(self, steps: int, graph: bool = False) -> int:
        """Untimed steps before a measurement; ``--quick`` keeps only what a graph needs (3 warm-up + capture)."""
        return (4 if graph else 1) if self.quick else steps

    def save(self) -> None:
        """Write the document now (atomically: a kill leaves the previous version, never half a file)."""
        if self.out is None:
            return
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(f".{self.out.name}.tmp")
        tmp.write_text(json.dumps(self.doc, indent=2) + "\n")
        os.replace(tmp, self.out)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_bundle(device: torch.device, batch: int, n_train: int, n_val: int, seed: int = 0) -> DataBundle:
    """Random uint8 CIFAR-size images on ``device`` behind the trainer's loaders (training: pad-4 crop + flip, the
    ``standard`` augmentation at 32 px; validation: plain, at twice the batch, as ``run.py`` sets it)."""
    g = torch.Generator(device=device).manual_seed(seed)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device=device, generator=g)
        return images, torch.randint(0, 10, (n,), device=device, generator=g)

    common = dict(mean=CIFAR_MEAN, std=CIFAR_STD, device=device)
    train = DeviceLoader(*split(n_train), batch_size=batch, train=True, seed=seed, pad=4, flip=True, **common)
    val = DeviceLoader(*split(n_val), batch_size=2 * batch, **common) if n_val else EmptyLoader(2 * batch)
    classes = [str(i) for i in range(10)]
    return DataBundle("synthetic uint8 3x32x32", classes, 3, 32, CIFAR_MEAN, CIFAR_STD, train, val, EmptyLoader(1))


def make_run(
    opts: Opts,
    *,
    batch: int | None = None,
    graph: bool = False,
    in_graph: bool = True,
    n_train: int | None = None,
    n_val: int = 0,
    **overrides: Any,
) -> RunState:
    """A minimal RunState built the way ``run.py`` builds one (model on the device, channels_last, optimizer,
    step context, compile, EMA with ``ema=``, GraphedStep), with the recipe's config and ``overrides`` (TrainConfig
    fields). ``in_graph=False``: the GraphedStep without its levers (the loop sets the lr and updates the EMA
    per step), to measure what moving them into the graph saves."""
    batch = batch or opts.batch
    cfg = build_config(
        opts.model, "cifar10", recipe=RECIPE, device=str(opts.device), batch_size=batch, cuda_graph=graph, **overrides
    )
    configure_backends(cfg, opts.device)
    torch.manual_seed(cfg.seed)
    n_train = n_train or (45_000 if not opts.quick else 6 * batch)
    data = synthetic_bundle(opts.device, batch, n_train, n_val, cfg.seed)
    model = cnnzoo.create_model(opts.model, num_classes=10).to(opts.device)
    if use_channels_last(cfg, opts.device):
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg, opts.device)
    ctx = step_context(cfg, opts.device)
    net = compile_model(model, cfg)
    ema = make_ema(model, cfg.ema) if cfg.ema > 0 else None
    run = RunState(cfg, data, model, net, optimizer, ctx, ema=ema, log=lambda *a, **k: None)
    if graph and in_graph:
        run.graph = GraphedStep(net, optimizer, ctx, ema=ema, lrs=lr_table(cfg, run.steps_per_epoch, opts.device))
    elif graph:
        run.graph = GraphedStep(net, optimizer, ctx)
    return run


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def loop_steps(run: RunState, n: int) -> float:
    """Wall seconds for ``n`` steps of the real loop (``train_one_epoch``, crossing into the next epoch as needed;
    the epoch end's evaluation and checkpoint are left out here: the ``sync`` part runs them)."""
    sync(run.ctx.device)
    t0 = time.perf_counter()
    done = 0
    while done < n:
        before = run.step
        finished = train_one_epoch(run, Step(run), StopFlag(stop_after=run.step + n - done))
        done += run.step - before
        if run.step == before and not finished:
            raise RuntimeError("the loop made no step (an epoch of zero batches?)")
        if finished:
            run.epoch, run.batch = run.epoch + 1, 0
    sync(run.ctx.device)
    return time.perf_counter() - t0


def timed(fn, n: int, device: torch.device) -> dict[str, float]:
    """``n`` back-to-back calls of ``fn``: ms per call between two CUDA events (GPU time, once the host runs ahead)
    and the host's ms per call to issue them; on the CPU both are the wall clock."""
    sync(device)
    if device.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        ms = 1000 * (time.perf_counter() - t0) / n
        return {"ms": ms, "host_ms": ms}
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    start.record()
    for _ in range(n):
        fn()
    end.record()
    host = time.perf_counter() - t0
    end.synchronize()
    return {"ms": start.elapsed_time(end) / n, "host_ms": 1000 * host / n}


def one_batch(run: RunState) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch as the loader serves it (normalised, augmented, channels_last)."""
    return next(iter(run.data.train.epoch(0)))


def replay_fn(run: RunState):
    """The captured graph's replay; without CUDA the same static-buffer step, uncaptured."""
    if run.graph.graph is not None:
        return run.graph.graph.replay
    x, y = one_batch(run)
    return lambda: run.graph(x, y, y)  # labels too: the loop captured the step with its sums


def graph_replay(opts: Opts, *, batch: int, precision: str, channels_last: bool) -> dict[str, Any]:
    """ms per replay of the whole-step graph (after a warm-up through the real loop), cached per setting."""
    key = (batch, precision, channels_last)
    if key not in opts.replay_cache:
        run = make_run(opts, batch=batch, graph=True, precision=precision, channels_last=channels_last)
        loop_steps(run, opts.warm(20, graph=True))
        t = timed(replay_fn(run), opts.n(300), opts.device)
        opts.replay_cache[key] = {
            "batch": batch,
            "precision": run.ctx.precision,
            "channels_last": channels_last,
            "captured": run.graph.graph is not None,
            "replays": opts.n(300),
            "ms_per_step": t["ms"],
            "host_ms_per_step": t["host_ms"],
            "tf32": torch.backends.cudnn.allow_tf32 if opts.cuda else None,
        }
        del run
        free(opts.device)
    return opts.replay_cache[key]


# --- the parts -----------------------------------------------------------------------------------------------------


def part_eager(opts: Opts, res: dict) -> str:
    run = make_run(opts)
    loop_steps(run, opts.warm(10))
    x, y = one_batch(run)
    n = opts.n(200)
    t = timed(lambda: train_step(run.net, run.optimizer, x, y, run.ctx), n, opts.device)
    res.update(steps=n, precision=run.ctx.precision, train_step_ms=t["ms"], train_step_host_ms=t["host_ms"])
    opts.save()
    res["loop_ms"] = 1000 * loop_steps(run, n) / n
    res["reference_ms"] = 26.8
    return (
        f"train_step {res['train_step_ms']:.2f} ms/step (host issues it in {res['train_step_host_ms']:.2f}); "
        f"loop {res['loop_ms']:.2f} ms/step (the eager baseline: 26.8)"
    )


def part_graph(opts: Opts, res: dict) -> str:
    run = make_run(opts, graph=True)
    loop_steps(run, opts.warm(20, graph=True))  # 3 eager warm-up steps, the capture, then replays
    res["captured"] = run.graph.graph is not None
    if res["captured"]:
        t = timed(run.graph.graph.replay, opts.n(300), opts.device)
        res.update(replays=opts.n(300), replay_ms=t["ms"], replay_host_ms=t["host_ms"])
    else:
        res["replay"] = NEEDS_CUDA
    opts.save()
    n = opts.n(300)
    res.update(loop_steps=n, loop_ms=1000 * loop_steps(run, n) / n)
    res["paper_run_minutes"] = PAPER_STEPS * res["loop_ms"] / 1000 / 60  # training steps only
    if not res["captured"]:
        return f"uncaptured on {opts.device}: loop {res['loop_ms']:.2f} ms/step"
    res["host_not_hidden_ms"] = res["loop_ms"] - res["replay_ms"]
    return (
        f"replay {res['replay_ms']:.2f} ms (GPU), loop {res['loop_ms']:.2f} ms, host not hidden "
        f"{res['host_not_hidden_ms']:.2f} ms; 64k steps {res['paper_run_minutes']:.1f} min"
    )


def profiled_kernels(fn, steps: int, device: torch.device) -> list[tuple[str, float, float]]:
    """(name, start_us, duration_us) of every GPU kernel, memcpy and memset that ``steps`` calls of ``fn`` ran."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]
    sync(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        sync(device)
    return [
        (e.name(), e.start_ns() / 1000, e.duration_ns() / 1000)
        for e in prof.profiler.kineto_results.events()
        if e.device_type() == torch.autograd.DeviceType.CUDA and e.duration_ns() > 0
    ]


def part_profile(opts: Opts, res: dict) -> str:
    k = max(2, opts.n(5))
    graphed = make_run(opts, graph=True)
    loop_steps(graphed, opts.warm(20, graph=True))
    res["graph"] = kernel_summary(profiled_kernels(replay_fn(graphed), k, opts.device), k)
    opts.save()
    del graphed
    free(opts.device)
    eager = make_run(opts)
    loop_steps(eager, opts.warm(10))
    x, y = one_batch(eager)
    step = lambda: train_step(eager.net, eager.optimizer, x, y, eager.ctx)  # noqa: E731
    res["eager"] = kernel_summary(profiled_kernels(step, k, opts.device), k)
    res["steps_profiled"] = k
    res["rules"] = {cls: list(keys) for cls, keys in KERNEL_CLASSES}
    g, e = res["graph"], res["eager"]
    return (
        f"graph {g['kernels_per_step']:.0f} kernels/step, {g['kernel_ms_per_step']:.2f} ms kernels, "
        f"{g['idle_ms_per_step']:.2f} ms idle; eager {e['kernels_per_step']:.0f} kernels, "
        f"{e['kernel_ms_per_step']:.2f} ms kernels, {e['idle_ms_per_step']:.2f} ms idle"
    )


def part_batch256(opts: Opts, res: dict) -> str:
    small = graph_replay(opts, batch=opts.batch, precision=opts.base_precision, channels_last=True)
    res["batch_small"] = small
    opts.save()
    big = graph_replay(opts, batch=2 * opts.batch, precision=opts.base_precision, channels_last=True)
    res["batch_big"] = big
    res["ratio"] = big["ms_per_step"] / small["ms_per_step"]
    res["bound"] = "latency" if res["ratio"] < 1.4 else "throughput" if res["ratio"] > 1.7 else "between"
    return (
        f"batch {big['batch']}: {big['ms_per_step']:.2f} ms vs {small['ms_per_step']:.2f} ms at {small['batch']}:"
        f" x{res['ratio']:.2f} ({res['bound']}-bound)"
    )


def part_precision(opts: Opts, res: dict) -> str:
    res["bf16"] = graph_replay(opts, batch=opts.batch, precision="bf16", channels_last=True)
    opts.save()
    res["fp32_tf32"] = graph_replay(opts, batch=opts.batch, precision="fp32", channels_last=True)
    res["fp32_over_bf16"] = res["fp32_tf32"]["ms_per_step"] / res["bf16"]["ms_per_step"]
    return (
        f"bf16 {res['bf16']['ms_per_step']:.2f} ms, fp32+TF32 {res['fp32_tf32']['ms_per_step']:.2f} ms "
        f"(x{res['fp32_over_bf16']:.2f})"
    )


def part_layout(opts: Opts, res: dict) -> str:
    res["channels_last"] = graph_replay(opts, batch=opts.batch, precision=opts.base_precision, channels_last=True)
    opts.save()
    res["nchw"] = graph_replay(opts, batch=opts.batch, precision=opts.base_precision, channels_last=False)
    res["nchw_over_channels_last"] = res["nchw"]["ms_per_step"] / res["channels_last"]["ms_per_step"]
    return (
        f"channels_last {res['channels_last']['ms_per_step']:.2f} ms, NCHW {res['nchw']['ms_per_step']:.2f} ms "
        f"(x{res['nchw_over_channels_last']:.2f})"
    )


@contextlib.contextmanager
def caught_warnings(records: list[dict], pattern: str = "synchroniz"):
    """Record every warning whose message contains ``pattern`` with the Python stack that raised it (torch's sync
    debug mode warns from C++, inside the operation, so the stack names the line that synchronised)."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")

        def show(message, category, filename, lineno, file=None, line=None):
            if pattern in str(message):
                frames = traceback.extract_stack()[:-1]
                frames = [f for f in frames if not f.filename.endswith(("warnings.py", "contextlib.py"))]
                records.append({"message": str(message).splitlines()[0], "frames": frames})

        warnings.showwarning = show
        yield


def sync_sites(records: list[dict]) -> dict[str, list[dict]]:
    """Warnings grouped by phase (loop steps or epoch end) and site: the innermost cnnzoo (or script) frame, and
    the innermost frame overall when that is inside torch."""
    phases: dict[str, Counter] = {"loop steps": Counter(), "epoch end": Counter()}
    for r in records:
        frames = r["frames"]
        ours = [f for f in frames if str(Path(f.filename).resolve()).startswith(OUR_CODE)]
        site = ours[-1] if ours else frames[-1]
        inner = frames[-1]
        where = f"{_short(site.filename)}:{site.lineno} {site.name}: {(site.line or '').strip()}"
        via = f"{_short(inner.filename)}:{inner.lineno} {inner.name}" if inner is not site else ""
        phase = "loop steps" if any(f.name == "train_one_epoch" for f in frames) else "epoch end"
        phases[phase][(where, via)] += 1
    return {
        phase: [{"site": w, "via": v, "count": c} for (w, v), c in counts.most_common()]
        for phase, counts in phases.items()
    }


def _short(path: str) -> str:
    """A path from its package root on (``cnnzoo/train/loop.py``, ``torch/serialization.py``)."""
    parts = Path(path).parts
    for root in ("cnnzoo", "torch", "benchmarks"):
        if root in parts:
            return "/".join(parts[len(parts) - 1 - parts[::-1].index(root) :])
    return Path(path).name


def part_sync(opts: Opts, res: dict) -> str:
    steps = opts.n(60)
    spe = max(steps, 5)  # an epoch of `steps` batches (at least the graph's 3 warm-up steps, capture and a replay)
    run = make_run(
        opts, graph=True, n_train=spe * opts.batch, n_val=2 * opts.batch if opts.quick else 5000, iterations=2 * spe
    )
    records: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        run.run_dir = Path(tmp)
        fit(run, stop_after=spe)  # the warm-up epoch: graph capture, cudnn autotuning for evaluation, first saves
        t0 = time.perf_counter()
        with caught_warnings(records):
            if opts.cuda:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                fit(run)  # one more epoch of the loop, and its end
            finally:
                if opts.cuda:
                    torch.cuda.set_sync_debug_mode("default")
        res["seconds_epoch_with_end"] = time.perf_counter() - t0
    res.update(loop_steps=spe, sites=sync_sites(records), warnings=len(records))
    res["epoch_record"] = run.history[-1] if run.history else None
    # The epoch end's two costs on their own, timed apart, without the debug mode.
    sync(opts.device)
    t0 = time.perf_counter()
    evaluate(run.model, run.data.val, run.ctx, run.data.num_classes)
    res["evaluate_s"] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        checkpoint.save_atomic(checkpoint.run_state(run), Path(tmp) / "last.pt")
        res["checkpoint_s"] = time.perf_counter() - t0
    res["val_images"] = run.data.val.num_samples
    loop_n = sum(s["count"] for s in res["sites"]["loop steps"])
    end_n = sum(s["count"] for s in res["sites"]["epoch end"])
    return (
        f"{loop_n} host syncs in {spe} loop steps ({len(res['sites']['loop steps'])} sites), {end_n} at the "
        f"epoch end ({len(res['sites']['epoch end'])} sites)"
    )


def part_ema(opts: Opts, res: dict) -> str:
    """``--ema``'s update: torch's AveragedModel (today's) against cnnzoo.train.ema.EMA, eager; then EMA captured in
    a CUDA graph (possible only without host syncs) and checked against an eager EMA over the same weights."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from cnnzoo.train.ema import EMA

    model = cnnzoo.create_model(opts.model, num_classes=10).to(opts.device, memory_format=torch.channels_last)
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.999), use_buffers=True)
    ema = EMA(model, 0.999)
    averaged.update_parameters(model)  # the first-update copies; the timed calls below average
    ema.update_parameters(model)
    n = opts.n(200)
    res["tensors"] = len(list(model.parameters())) + len(list(model.buffers()))
    t = timed(lambda: averaged.update_parameters(model), n, opts.device)
    res.update(updates=n, averaged_model_ms=t["ms"], averaged_model_host_ms=t["host_ms"])
    t = timed(lambda: ema.update_parameters(model), n, opts.device)
    res.update(ema_ms=t["ms"], ema_host_ms=t["host_ms"])
    opts.save()
    head = f"AveragedModel {res['averaged_model_ms']:.2f} ms/update, EMA {res['ema_ms']:.2f} ms"
    if not opts.cuda:
        res["graph"] = NEEDS_CUDA
        return head
    eager, graphed = EMA(model, 0.9), EMA(model, 0.9)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture (the docs' recipe): the first-update copy
        graphed.update_parameters(model)
    torch.cuda.current_stream().wait_stream(side)
    eager.update_parameters(model)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graphed.update_parameters(model)
    weights = [p.detach() for p in model.parameters()]
    for _ in range(5):  # the model moves between updates, as in training
        torch._foreach_add_(weights, 0.01)
        graph.replay()
        eager.update_parameters(model)
    theirs = eager.state_dict()
    diff = max((v.double() - theirs[k].double()).abs().max().item() for k, v in graphed.state_dict().items())
    res["graph_vs_eager_max_abs_diff"] = diff
    t = timed(graph.replay, n, opts.device)
    res.update(graph_ms=t["ms"], graph_host_ms=t["host_ms"])
    return f"{head}, EMA in a CUDA graph {res['graph_ms']:.3f} ms (max diff to eager {diff:.1e})"


def part_levers(opts: Opts, res: dict) -> str:
    """The lr table and the EMA inside the captured step, in the real loop with ``--ema 0.999``: GraphedStep with the
    loop setting the lr and updating the EMA per step (before), against the lr table and the EMA update inside the
    captured step (now); the difference is host work and launches the levers took off each step. Also the graph's
    own replay time (now)."""
    for key, in_graph in (("outside", False), ("inside", True)):
        run = make_run(opts, graph=True, in_graph=in_graph, ema=0.999)
        loop_steps(run, opts.warm(20, graph=True))
        n = opts.n(300)
        res[f"loop_ms_{key}"] = 1000 * loop_steps(run, n) / n
        if in_graph and run.graph.graph is not None:
            t = timed(run.graph.graph.replay, n, opts.device)
            res.update(replay_ms=t["ms"], host_not_hidden_ms=res["loop_ms_inside"] - t["ms"])
        opts.save()
        del run
        free(opts.device)
    res["saved_ms"] = res["loop_ms_outside"] - res["loop_ms_inside"]
    tail = f", replay {res['replay_ms']:.2f} ms" if "replay_ms" in res else ""
    return (
        f"--ema loop: lr + EMA outside the graph {res['loop_ms_outside']:.2f} ms/step, inside "
        f"{res['loop_ms_inside']:.2f} ms/step (saved {res['saved_ms']:.2f} ms){tail}"
    )


def part_compile(opts: Opts, res: dict) -> str:
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    run = make_run(opts, graph=True, compile=True, compile_mode="default")
    res["first_step_s"] = loop_steps(run, 1)  # compiles the forward and the backward
    opts.save()
    res["warmup_s"] = res["first_step_s"] + loop_steps(
        run, opts.warm(20, graph=True) - 1
    )  # the rest of warm-up, capture
    res["captured"] = run.graph.graph is not None
    res["graphs_compiled"] = int(counters["stats"]["unique_graphs"])
    res["graph_breaks"] = int(sum(counters["graph_break"].values()))
    opts.save()
    with torch._dynamo.config.patch(error_on_recompile=True):  # a recompile while measuring raises
        t = timed(replay_fn(run), opts.n(300), opts.device)
        res.update(replays=opts.n(300), replay_ms=t["ms"], replay_host_ms=t["host_ms"])
        opts.save()
        n = opts.n(300)
        res.update(loop_steps=n, loop_ms=1000 * loop_steps(run, n) / n)
    res["recompiles"] = int(counters["stats"]["unique_graphs"]) - res["graphs_compiled"]
    return (
        f"first step {res['first_step_s']:.1f} s (compile), replay {res['replay_ms']:.2f} ms, loop "
        f"{res['loop_ms']:.2f} ms, {res['graph_breaks']} graph breaks, {res['recompiles']} recompiles"
    )


RUNNERS = {
    "eager": part_eager,
    "graph": part_graph,
    "profile": part_profile,
    "batch256": part_batch256,
    "precision": part_precision,
    "layout": part_layout,
    "sync": part_sync,
    "ema": part_ema,
    "levers": part_levers,
    "compile": part_compile,
}
CUDA_ONLY = {"profile", "batch256", "precision", "layout", "sync", "compile"}
NO_CPU_DRY_RUN = {"compile"}  # inductor would compile C++ for minutes on a small CPU


# --- driver --------------------------------------------------------------------------------------------------------


def run_parts(opts: Opts, parts: list[str]) -> None:
    """Each part in order, its result written as soon as it is known; a failure is recorded and the next part runs
    (the GPU time is too scarce to lose the rest to one failure)."""
    for name in parts:
        res = opts.doc["parts"][name]
        res["status"] = "running"
        opts.save()
        if not opts.cuda and name in NO_CPU_DRY_RUN:
            res["status"] = NEEDS_CUDA
            opts.save()
            continue
        t0 = time.perf_counter()
        try:
            summary = RUNNERS[name](opts, res)
            status = "ok"
        except Exception as e:  # noqa: BLE001 (recorded, and the next part still runs)
            summary, status = "", f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            res["traceback"] = traceback.format_exc()[-4000:]
            if opts.cuda:
                with contextlib.suppress(Exception):  # a broken CUDA context fails the next parts, not this loop
                    torch.cuda.synchronize()
        res["seconds"] = round(time.perf_counter() - t0, 2)
        if not opts.cuda and name in CUDA_ONLY and status == "ok":
            status, summary = NEEDS_CUDA, f"(dry run on {opts.device}, not a measurement) {summary}"
        res["status"], res["summary"] = status, summary
        opts.save()
        print(f"{name}: {status} {summary}", flush=True)
        free(opts.device)


def print_table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    meta = doc["meta"]
    table = Table(
        title=f"{meta['model']} step profile, batch {meta['batch_size']}, {meta['device']}, torch {meta['torch']}"
    )
    table.add_column("part")
    table.add_column("status")
    table.add_column("result")
    for name, res in doc["parts"].items():
        table.add_row(name, res["status"], res.get("summary", ""))
    Console().print(table)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="JSON file, rewritten after every measurement")
    p.add_argument("--steps", type=float, default=1.0, help="scale every timed step count (0.5 = half)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--batch-size", type=int, default=None, help="default 128 (the recipe's); --quick: 4")
    p.add_argument("--quick", action="store_true", help="smoke mode: tiny data and step counts (the CPU test)")
    p.add_argument("--model", default=MODEL, help="a CIFAR net (default resnet56, the issue's)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch, 0 = torch's default")
    args = p.parse_args(argv)
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    unknown = [s for s in parts if s not in PARTS]
    if unknown or not parts:
        p.error(f"--parts: unknown {', '.join(unknown) or '(none given)'}; expected some of {', '.join(PARTS)}")
    try:
        device = resolve_device(args.device)
    except CnnzooError as e:
        p.error(str(e))
    batch = args.batch_size or (4 if args.quick else 128)
    scale = args.steps * (0.01 if args.quick else 1.0)
    opts = Opts(device, batch, scale, args.quick, Path(args.out) if args.out else None, args.model)
    if opts.cuda:
        # Kineto must be initialised before any CUDA graph is captured, or the profiler misses the kernels of
        # later replays (pytorch/pytorch#100441 provides this workaround).
        from torch.profiler._utils import _init_for_cuda_graphs

        _init_for_cuda_graphs()
    device_name = torch.cuda.get_device_name(device) if opts.cuda else "cpu"
    opts.doc = {
        "meta": {
            "model": opts.model,
            "recipe": RECIPE,
            "batch_size": batch,
            "device": device_name,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "data": "synthetic uint8 3x32x32 on the device, DeviceLoader (pad-4 crop"
            " + flip, normalised, channels_last)",
            "quick": args.quick,
            "step_scale": scale,
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        },
        "parts": {part: {"status": "pending"} for part in parts},
    }
    opts.save()
    threads = torch.get_num_threads()
    if args.threads > 0:  # on a shared 2-core VM one thread is many times faster than two fighting for a core
        torch.set_num_threads(args.threads)
    try:
        run_parts(opts, parts)
    finally:
        torch.set_num_threads(threads)
    print_table(opts.doc)
    return opts.doc


if __name__ == "__main__":
    main()
