"""Timings with their spread: medians of interleaved repetitions, the spread beside each, and the flags that say
when a figure should not be trusted.

A figure is the median of its repetitions; its spread is the interquartile range as a fraction of the median (robust
to the odd slow repetition that a median also ignores). Two flags:

- too wide: a spread above :data:`SPREAD_LIMIT` says the machine's load changed while measuring;
- twins: two nets with equal MACs at the same input (``plain20`` / ``resnet20``) whose speeds differ by more than
  their spreads allow, plus :data:`TWIN_SLACK` for the element-wise work (additions, padding) that MACs do not count.
  Twins that far apart point at the machine, not at the nets.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence

SPREAD_LIMIT = 0.15
TWIN_SLACK = 0.25
SPEED_FIGURES = ("latency_ms", "infer_img_s", "train_img_s")
NAMES = {"latency_ms": "latency", "infer_img_s": "inference img/s", "train_img_s": "training img/s"}


def spread(values: Sequence[float]) -> float | None:
    """Interquartile range / median of ``values``; None for fewer than two values (no spread to speak of)."""
    if len(values) < 2:
        return None
    median = statistics.median(values)
    if median == 0:
        return None
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return (q3 - q1) / abs(median)


def figures(samples: Sequence[dict[str, float]], batch: int) -> dict[str, float | None]:
    """The row's timing figures from one model's rounds (each ``{"latency", "infer", "train"}`` in seconds, and
    ``tv_*`` when torchvision's twin was timed): median and ``<figure>_spread`` of latency (ms) and of the two
    throughputs (images/s), and the speed ratios cnnzoo / torchvision (torchvision's median time / ours)."""
    out: dict[str, float | None] = {}
    if not samples:
        return out
    per = {
        "latency_ms": [1000 * s["latency"] for s in samples],
        "infer_img_s": [batch / s["infer"] for s in samples],
        "train_img_s": [batch / s["train"] for s in samples],
    }
    for key, values in per.items():
        out[key] = statistics.median(values)
        out[f"{key}_spread"] = spread(values)
    if "tv_latency" in samples[0]:
        for key, which in (("vs_torchvision_latency", "latency"), ("vs_torchvision_train", "train")):
            ours = statistics.median(s[which] for s in samples)
            out[key] = statistics.median(s[f"tv_{which}"] for s in samples) / ours
    return out


def timing_flags(rows: list[dict], *, limit: float = SPREAD_LIMIT, slack: float = TWIN_SLACK) -> None:
    """Set each row's ``timing_flag``: "" when its timings can be trusted, else why not ("; "-joined)."""
    for row in rows:
        row["timing_flag"] = ""
    notes: dict[int, list[str]] = {id(r): [] for r in rows}
    for row in rows:
        for key in SPEED_FIGURES:
            s = row.get(f"{key}_spread")
            if s is not None and s > limit:
                notes[id(row)].append(f"{NAMES[key]} spread {100 * s:.0f}% > {100 * limit:.0f}%")
    by_cost: dict[tuple, list[dict]] = {}
    for row in rows:
        if row.get("macs"):
            by_cost.setdefault((row.get("input"), row["macs"]), []).append(row)
    for twins in by_cost.values():
        models = list(dict.fromkeys(r["model"] for r in twins))
        first = {m: next(r for r in twins if r["model"] == m) for m in models}
        for i, a in enumerate(models):
            for b in models[i + 1 :]:
                for key in ("infer_img_s", "train_img_s"):
                    if twins_differ(first[a], first[b], key, slack):
                        for this, other in ((a, b), (b, a)):
                            for r in twins:
                                if r["model"] == this:
                                    notes[id(r)].append(
                                        f"{NAMES[key]} differs from its equal-MACs twin {other} beyond the spreads"
                                    )
    for row in rows:
        row["timing_flag"] = "; ".join(dict.fromkeys(notes[id(row)]))


def twins_differ(a: dict, b: dict, key: str, slack: float = TWIN_SLACK) -> bool:
    """Whether ``a[key]`` and ``b[key]`` (speeds of equal-MACs nets) are apart by more than their spreads allow:
    the faster's value less its spread still above the slower's plus its spread, times ``1 + slack``."""
    va, vb = a.get(key), b.get(key)
    if not va or not vb:
        return False
    (fast, fs), (slow, ss) = sorted(
        ((va, a.get(f"{key}_spread") or 0.0), (vb, b.get(f"{key}_spread") or 0.0)), reverse=True
    )
    return fast * (1 - fs) > slow * (1 + ss) * (1 + slack)


def busy_warning(cores: int, load: float | None = None) -> str | None:
    """A one-line warning when the 1-minute load average is above ``cores`` (the threads this run uses), else None."""
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (OSError, AttributeError):  # not on every platform
            return None
    if load <= cores:
        return None
    return (
        f"warning: the machine is busy (load average {load:.1f} above the {cores} cores this uses): "
        "timings will be slower and wider than on a quiet machine"
    )


def machine_macs_per_s(device: str) -> float:
    """Multiply-accumulates per second of a 1024x1024 matrix product on ``device`` (best of 5; a quick gauge)."""
    import time

    import torch

    from cnnzoo.train.engine import sync

    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    a = torch.randn(1024, 1024, device=dev, dtype=dtype)
    best = math.inf
    for i in range(8):
        sync(dev)
        t0 = time.perf_counter()
        a @ a
        sync(dev)
        if i >= 3:  # the first calls load kernels
            best = min(best, time.perf_counter() - t0)
    return 1024**3 / best


# Convolutions reach about this fraction of the matrix product's rate (2-core CPU: 57-83 GMAC/s in `compare` against
# 65 for the product); on a GPU small nets are launch-bound, so far less. Plus a floor per call.
EFFICIENCY = {"cpu": 0.8, "cuda": 0.25}
CALL_FLOOR_S = {"cpu": 0.002, "cuda": 0.005}
START_S = {"cpu": 8.0, "cuda": 20.0}  # spawning a process, importing torch, building the model


def estimate_seconds(
    macs: Sequence[int], *, batch: int, rounds: int, macs_per_s: float, device: str, torchvision: Sequence[bool] = ()
) -> float:
    """Rough seconds a ``compare`` of nets with these MACs takes: per net a process start, a warm-up (2 latency + 2
    batch inferences, 2 training steps) and ``rounds`` rounds (1 latency, 1 batch inference, 1 training step at ~3x
    the forward's work), doubled for a net timed beside torchvision's."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    rate = macs_per_s * EFFICIENCY[kind]
    total = 0.0
    for i, m in enumerate(macs):
        calls = 3 * (rounds + 2)
        work = (rounds + 2) * (m + m * batch + 3 * m * batch)
        seconds = work / rate + calls * CALL_FLOOR_S[kind]
        total += START_S[kind] + seconds * (2 if i < len(torchvision) and torchvision[i] else 1)
    return total


def duration(seconds: float) -> str:
    """``75`` -> ``"1 min 15 s"``; ``4000`` -> ``"1 h 7 min"``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
