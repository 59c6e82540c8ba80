"""``cnnzoo study``: the residual-network study of He et al. 2016, reproduced on the user's data.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, arXiv:1512.03385, section 4.2:
on CIFAR-10, plain nets get worse as they get deeper (the degradation problem, Figure 6 left: higher *training*
error, so it is not overfitting), while the same nets with shortcuts get better (Figure 6 middle, Table 6).

- ``study gradients``: the gradient norm reaching each conv layer, and for residual nets the gradient flowing into
  each block's input through its residual branch versus through its shortcut, at initialisation and after a short
  training, on one real batch. The branch share is computed exactly: with ``s = branch(x) + shortcut(x)`` and
  ``g = dL/ds``, autograd gives ``J_branch^T g``; the shortcut share is the rest of ``dL/dx`` (the sum is linear).
- ``study degradation``: plain and residual nets of each depth trained with the same recipe; training error
  (dashed) and validation error (bold) against iterations, as Figure 6, and the final test errors beside Table 6.
  The per-epoch curve is the *validation* error (held out from train): the test split is measured once per run, at
  the end, by the trainer. Runs already finished in the output folder are reused, unfinished ones resumed.
- ``study depth``: accuracy, training time and parameters against depth, one chart.

Every figure and table names its data through ``--label`` (e.g. "CIFAR-10 (JPEG q75)"); the plotting and table
functions take the rows of the CSVs written here, so a figure can be redrawn from its CSV alone.

Deliberate departures from the paper:
- The degradation curves plot *validation* error per epoch where Figure 6 plots test error per iteration: the test
  split is looked at once, at the end (He et al. tuned on a 45k/5k split too, then reported test).
- ``study gradients`` trains with SGD at lr 0.1 (momentum 0.9, weight decay 1e-4, no warm-up, no schedule), the
  start of the paper's recipe; gradients are measured in train mode (BN on batch statistics, as during training).
- The paper shows no gradient norms; it argues (section 4.1) that with BN plain nets' gradients do not vanish at
  initialisation. The study measures this instead of assuming it: see :func:`decay_ratio`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cnnzoo.errors import CnnzooError

# Table 6 of the paper: CIFAR-10 test error (%) of the CIFAR ResNets (110: best of 5 runs; mean 6.61 +- 0.16).
PAPER_TABLE6 = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}
PLAIN_DEPTHS = (20, 32, 44, 56, 110)
RESNET_DEPTHS = (20, 32, 44, 56, 110, 1202)
PAPER_ITERATIONS = 64_000  # section 4.2: lr 0.1, divided by 10 at 32k and 48k, stop at 64k (batch 128)
DEPTH_TOLERANCE = 0.5  # accuracy points: what `study depth` treats as no better (see suggest_depth)
LABEL_HELP = "how to name the data in titles and tables, e.g. 'CIFAR-10 (JPEG q75)' (default: --data)"


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``study`` with its three sub-commands."""
    study = sub.add_parser("study", help="the residual study: degradation, vanishing gradients, depth")
    ssub = study.add_subparsers(dest="study", metavar="STUDY", required=True)

    p = ssub.add_parser("gradients", help="gradient norm per layer, plain vs residual, at init and after N steps")
    p.add_argument("models", nargs="+", help="e.g. plain56 resnet56 plain110 resnet110")
    p.add_argument("--data", default="digits")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--steps", type=int, default=100, help="SGD steps before the second measurement")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", default=None, help=LABEL_HELP)
    p.add_argument("--out", default="runs/study-gradients")
    p.set_defaults(func=cmd_gradients)

    for name, helptext in (("degradation", "train plain and residual nets of each depth; He et al. Figure 6"),
                           ("depth", "accuracy, training time and parameters against depth")):  # fmt: skip
        p = ssub.add_parser(name, help=helptext)
        p.add_argument("--depths", default="20,32,44,56")
        if name == "depth":
            p.add_argument("--family", choices=("resnet_cifar", "plain"), default="resnet_cifar")
        p.add_argument("--data", default="cifar10" if name == "degradation" else "digits")
        p.add_argument("--data-dir", default=None)
        p.add_argument("--recipe", default="resnet-cifar-paper")
        p.add_argument("--epochs", type=int, default=None, help="shorten: train this many epochs (milestones at "
                       "50%% and 75%%, as the paper's 32k/48k of 64k)")  # fmt: skip
        p.add_argument("--iterations", type=int, default=None, help="shorten: this many steps (milestones scaled)")
        p.add_argument("--seeds", default="0", help="comma-separated seeds; mean +- std reported")
        p.add_argument("--batch-size", type=int, default=None)
        p.add_argument("--subset", type=int, default=None, help="train on this many images (quick looks)")
        p.add_argument("--device", default=None)
        p.add_argument("--jobs", type=int, default=1, help="train this many runs at once (e.g. 4-8 on one GPU)")
        p.add_argument("--label", default=None, help=LABEL_HELP)
        p.add_argument("--out", default=f"runs/study-{name}")
        p.set_defaults(func=cmd_degradation if name == "degradation" else cmd_depth)


# --- gradients -----------------------------------------------------------------------------------------------------


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """(name, block, last BN of its branch) for every residual/plain block (modules with a ``shortcut`` attribute:
    "A", "B", or None in the plain twins)."""
    out = []
    for name, m in model.named_modules():
        if hasattr(m, "shortcut"):
            out.append((name, m, m.bn3 if hasattr(m, "bn3") else m.bn2))
    return out


def gradient_norms(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[dict]:
    """One forward/backward on a batch; rows of gradient norms (model in train mode, as during training).

    kinds: ``conv`` (norm of each conv weight's gradient, in forward order), ``block_input`` (norm of dL/dx at each
    block's input), ``branch`` and ``shortcut`` (the parts of dL/dx that flow through the residual branch and
    through the shortcut; for plain blocks the shortcut part is 0).
    """
    model.train()
    blocks = _blocks(model)
    inputs: dict[str, torch.Tensor] = {}
    branch_out: dict[str, torch.Tensor] = {}
    hooks = []
    for name, block, last_bn in blocks:
        hooks.append(block.register_forward_pre_hook(lambda _m, args, n=name: inputs.__setitem__(n, args[0])))
        hooks.append(last_bn.register_forward_hook(lambda _m, _a, out, n=name: branch_out.__setitem__(n, out)))
    model.zero_grad(set_to_none=True)
    try:
        out = model(images)
    finally:
        for h in hooks:
            h.remove()
    logits = out[0] if isinstance(out, tuple) else out
    loss = F.cross_entropy(logits, labels)
    names = [n for n, _, _ in blocks]
    grads = torch.autograd.grad(loss, [inputs[n] for n in names] + [branch_out[n] for n in names], retain_graph=True)
    d_input, d_branch = grads[: len(names)], grads[len(names) :]
    rows = []
    for i, (name, _block, _) in enumerate(blocks):
        through_branch = torch.autograd.grad(branch_out[name], inputs[name], grad_outputs=d_branch[i],
                                             retain_graph=True)[0]  # fmt: skip
        total = d_input[i]
        rows += [
            {"kind": "block_input", "index": i + 1, "layer": name, "norm": total.norm().item()},
            {"kind": "branch", "index": i + 1, "layer": name, "norm": through_branch.norm().item()},
            {"kind": "shortcut", "index": i + 1, "layer": name, "norm": (total - through_branch).norm().item()},
        ]
    loss.backward()
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    rows += [{"kind": "conv", "index": i + 1, "layer": n, "norm": m.weight.grad.norm().item()}
             for i, (n, m) in enumerate(convs)]  # fmt: skip
    return rows


def decay_ratio(rows: list[dict], kind: str = "conv") -> float:
    """Gradient norm at the first layer (next to the input) over that at the last one (of ``kind``).

    1 means the gradient keeps its size through the depth; far from 1 (either way) means it does not. Measured here
    with batch norm at initialisation, plain nets' gradients *grow* towards the input (ratio 15-20 for plain20, ~1e3
    for plain56 on digits) while the residual twins stay within about one order of magnitude (5-8 and 10-16): the
    paper's own remark (section 4.1) that BN keeps plain nets' gradients from vanishing, and that their trouble is
    optimisation, not vanishing signals."""
    norms = [r["norm"] for r in sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["index"])]
    return norms[0] / norms[-1]


def run_gradients(models: list[str], *, data: str = "digits", data_dir: str | None = None, steps: int = 100,
                  batch_size: int = 128, device: str = "cpu", seed: int = 0, out: str | Path = "runs/study-gradients",
                  label: str | None = None) -> list[dict]:  # fmt: skip
    """Measure every model at initialisation and after ``steps`` SGD steps; write gradients.csv and .png."""
    from cnnzoo.data import load_data
    from cnnzoo.models import create_model

    if steps < 0 or batch_size < 1:
        raise CnnzooError(f"--steps must be >= 0 and --batch-size >= 1, got {steps} and {batch_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = load_data(data, data_dir=data_dir, batch_size=batch_size, device=device, seed=seed)
    probe_x, probe_y = next(iter(bundle.train.epoch(0)))  # the same real batch for every model and phase
    rows = []
    for name in models:
        torch.manual_seed(seed)
        model = create_model(name, num_classes=len(bundle.classes), in_channels=bundle.in_channels).to(device)
        if not _blocks(model):
            raise CnnzooError(f"{name} has no residual or plain blocks to study (use resnet*/plain* models)")
        rows += [dict(r, model=name, phase="init") for r in gradient_norms(model, probe_x, probe_y)]
        if steps > 0:  # a short training: SGD as the paper (lr 0.1, momentum 0.9, wd 1e-4)
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
            done, epoch = 0, 1
            while done < steps:
                for x, y in bundle.train.epoch(epoch):
                    out_ = model(x)
                    loss = F.cross_entropy(out_[0] if isinstance(out_, tuple) else out_, y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    done += 1
                    if done == steps:
                        break
                epoch += 1
            rows += [dict(r, model=name, phase=f"after {steps} steps") for r in gradient_norms(model, probe_x, probe_y)]
    _write_csv(out / "gradients.csv", rows, ["model", "phase", "kind", "index", "layer", "norm"])
    plot_gradients(rows, out / "gradients.png", label or data)
    return rows


def plot_gradients(rows: list[dict], path: str | Path, label: str) -> None:
    """Per-layer gradient norms on a log scale, one column per phase; ``rows`` as in gradients.csv (numbers may be
    strings, so a figure can be redrawn from the CSV alone)."""
    from matplotlib.figure import Figure

    rows = [dict(r, index=int(r["index"]), norm=float(r["norm"])) for r in rows]
    models = list(dict.fromkeys(r["model"] for r in rows))
    phases = list(dict.fromkeys(r["phase"] for r in rows))
    fig = Figure(figsize=(6 * len(phases), 8), layout="constrained")
    axes = fig.subplots(2, len(phases), squeeze=False)
    colors = {m: f"C{i}" for i, m in enumerate(models)}
    for j, phase in enumerate(phases):
        top, bottom = axes[0][j], axes[1][j]
        for m in models:
            conv = [r for r in rows if r["model"] == m and r["phase"] == phase and r["kind"] == "conv"]
            style = "--" if m.startswith("plain") else "-"
            top.plot([r["index"] for r in conv], [r["norm"] for r in conv], style, color=colors[m], label=m)
            for kind, marker in (("branch", "o"), ("shortcut", "^")):
                pts = [r for r in rows if r["model"] == m and r["phase"] == phase and r["kind"] == kind]
                if kind == "shortcut" and m.startswith("plain"):
                    continue  # no shortcut: nothing flows there
                bottom.plot([r["index"] for r in pts], [r["norm"] for r in pts], ":" if kind == "shortcut" else style,
                            marker=marker, markersize=3,
                            color=colors[m], label=f"{m}: via {kind}")  # fmt: skip
        top.set(yscale="log", xlabel="conv layer (1 = next to the input)", ylabel="||dL/dW|| (log scale)",
                title=f"Weight gradient of each conv, {phase}")  # fmt: skip
        bottom.set(yscale="log", xlabel="block (1 = next to the input)", ylabel="||dL/dx|| into the block (log)",
                   title=f"Into each block: branch vs shortcut, {phase}")  # fmt: skip
        for ax in (top, bottom):
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
    fig.suptitle(f"Gradient norms through depth, one real batch of {label}: plain nets dashed, residual nets solid "
                 "(their shortcut's share dotted)")  # fmt: skip
    fig.savefig(path, dpi=90)


# --- training runs (degradation, depth) ----------------------------------------------------------------------------


def _depths(text: str, allowed: tuple[int, ...], what: str) -> list[int]:
    try:
        depths = [int(d) for d in text.split(",") if d.strip()]
    except ValueError:
        raise CnnzooError(f"--depths must be comma-separated integers, got {text!r}") from None
    bad = [d for d in depths if d not in allowed]
    if bad or not depths:
        raise CnnzooError(f"{what} depths must be among {', '.join(map(str, allowed))}; got {text!r}")
    return depths


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise CnnzooError(f"--seeds must be comma-separated integers, got {text!r}")
    return seeds


def _overrides(args: argparse.Namespace) -> dict:
    """Command-line shortening of the recipe: --epochs or --iterations, milestones kept at 50% and 75%."""
    kw = {"batch_size": args.batch_size, "subset": args.subset, "device": args.device}
    if args.epochs is not None:
        e = args.epochs
        kw.update(epochs=e, iterations=0, milestone_steps=[], milestones=[e / 2, 3 * e / 4])
    elif args.iterations is not None:
        k = args.iterations
        kw.update(iterations=k, milestone_steps=[round(k / 2), round(3 * k / 4)])
    return {k: v for k, v in kw.items() if v is not None}


def train_or_reuse(model: str, data: str, run_dir: Path, *, recipe: str, seed: int, data_dir: str | None,
                   overrides: dict, quiet: bool = False) -> dict:  # fmt: skip
    """A finished run (report.json) is reused, an unfinished one (last.pt) resumed, else trained from scratch."""
    from cnnzoo.train.api import train

    if (run_dir / "report.json").exists():
        return json.loads((run_dir / "report.json").read_text())
    if (run_dir / "last.pt").exists():
        return train(resume=run_dir, quiet=quiet)
    return train(model, data, recipe=recipe, out=run_dir, seed=seed, data_dir=data_dir, quiet=quiet, **overrides)


def _train_task(task: tuple) -> None:
    model, data, run_dir, kw = task
    train_or_reuse(model, data, run_dir, quiet=True, **kw)


def train_in_parallel(tasks: list[tuple[str, Path, int]], *, jobs: int, data: str, recipe: str,
                      data_dir: str | None, overrides: dict) -> int:  # fmt: skip
    """Train ``(model, run_dir, seed)`` tasks in ``jobs`` spawned processes (several small nets share one GPU well:
    at batch 128 each is bound by per-step launch overhead, not by the GPU); returns how many it trained. Nothing
    (0) when ``jobs`` is 1: the caller trains them one after the other."""
    if jobs <= 1:
        return 0
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    kw = {"recipe": recipe, "data_dir": data_dir, "overrides": overrides}
    todo = [(m, data, d, dict(kw, seed=s)) for m, d, s in tasks if not (d / "report.json").exists()]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_train_task, todo))
    return len(todo)


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_degradation(depths: list[int], *, data: str, recipe: str, seeds: list[int], out: str | Path,
                    data_dir: str | None = None, overrides: dict | None = None, jobs: int = 1,
                    label: str | None = None) -> list[dict]:  # fmt: skip
    """Train plain and residual nets of each depth (every seed); write degradation.csv (final errors),
    degradation_curves.csv (per epoch), degradation.md (beside Table 6) and degradation.png (Figure 6 style)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = overrides or {}
    tasks = [(f"{k}{d}", out / f"{k}{d}" / f"seed-{s}", s) for k in ("plain", "resnet") for d in depths for s in seeds]
    train_in_parallel(tasks, jobs=jobs, data=data, recipe=recipe, data_dir=data_dir, overrides=overrides)
    rows, curves = [], []
    for kind in ("plain", "resnet"):
        for d in depths:
            reports = [train_or_reuse(f"{kind}{d}", data, out / f"{kind}{d}" / f"seed-{s}", recipe=recipe, seed=s,
                                      data_dir=data_dir, overrides=overrides) for s in seeds]  # fmt: skip
            if any(r.get("interrupted") for r in reports):
                raise CnnzooError(f"{kind}{d} was interrupted; run the same command again to resume")
            hists = [_history(out / f"{kind}{d}" / f"seed-{s}") for s in seeds]
            curves += [{"model": f"{kind}{d}", "kind": kind, "depth": d, "seed": s, "epoch": r["epoch"],
                        "step": r["step"], "train_error": 100 * (1 - r["train_top1"]),
                        "val_error": None if r.get("val_top1") is None else 100 * (1 - r["val_top1"])}
                       for s, hist in zip(seeds, hists, strict=True) for r in hist]  # fmt: skip
            test_err, test_std = _mean_std([100 * (1 - r["test"]["top1"]) for r in reports])
            train_err, _ = _mean_std([100 * (1 - h[-1]["train_top1"]) for h in hists])
            rows.append({"model": f"{kind}{d}", "kind": kind, "depth": d, "seeds": len(seeds),
                         "final_train_error": train_err, "test_error": test_err, "test_error_std": test_std,
                         "paper_test_error": PAPER_TABLE6.get(d) if kind == "resnet" else None,
                         "steps": hists[0][-1]["step"]})  # fmt: skip
    _write_csv(out / "degradation.csv", rows, list(rows[0]))
    _write_csv(out / "degradation_curves.csv", curves, list(curves[0]))
    write_degradation_md(out / "degradation.md", rows, label=label or data, recipe=recipe, seeds=seeds,
                         overrides=overrides)  # fmt: skip
    plot_degradation(curves, out / "degradation.png", label or data)
    return rows


def _num(value: object) -> float | None:
    """A number from a row built here or read back from a CSV (where None became '')."""
    return None if value in (None, "") else float(value)


def _mean_or_nan(values: list[float | None]) -> float:
    present = [v for v in values if v is not None]  # a run without a validation split has no val_error
    return statistics.fmean(present) if present else math.nan


def _schedule(overrides: dict, steps: int) -> str:
    """The schedule in words, for the table: full, or shortened (and how far) with its learning-rate steps."""
    if not (overrides.get("epochs") or overrides.get("iterations")):
        return f"the recipe's full schedule ({steps:,} iterations)"
    length = f"{overrides['epochs']} epochs = " if overrides.get("epochs") else ""
    text = f"**shortened** to {length}{steps:,} iterations ({100 * steps / PAPER_ITERATIONS:.3g} % of the paper's 64k)"
    if overrides.get("milestones"):  # _overrides puts them at 50 % and 75 %, as the paper's 32k and 48k of 64k
        text += f", learning rate divided by 10 at epochs {', '.join(f'{m:g}' for m in overrides['milestones'])}"
    elif overrides.get("milestone_steps"):
        text += f", learning rate divided by 10 at iterations {', '.join(map(str, overrides['milestone_steps']))}"
    return text


def write_degradation_md(path: str | Path, rows: list[dict], *, label: str, recipe: str, seeds: list[int],
                         overrides: dict) -> None:  # fmt: skip
    """The final errors as a Markdown table with the paper's Table 6 beside them (``rows`` as in degradation.csv)."""
    lines = [
        f"# Degradation study on {label}",
        "",
        f"Recipe `{recipe}`, {_schedule(overrides, int(_num(rows[0]['steps'])))}; seed(s) {', '.join(map(str, seeds))}"
        f"{' (mean ± std)' if len(seeds) > 1 else ''}. Training error: the last epoch's, on augmented batches. "
        "Test error: measured once per run, at the end, with the weights of the best validation epoch (the "
        "per-epoch curves in degradation.png are validation error, on images held out from the training split).",
        "",
        "The paper's figures (He et al. 2016, Table 6) are CIFAR-10 test errors after 64k iterations (ResNet-110: "
        "6.43 best of 5 runs, 6.61 ± 0.16 mean). The paper gives the plain nets only as curves (Figure 6 left: "
        "training and test error rise from plain-20 to plain-56; plain-110, above 60 %, is not plotted).",
        "",
        "| model | final training error (%) | test error (%) | paper, Table 6 (%) |",
        "|---|---:|---:|---:|",
    ]  # fmt: skip
    for r in rows:
        std = _num(r["test_error_std"]) or 0.0
        spread = f" ± {std:.2f}" if int(r["seeds"]) > 1 else ""
        paper = _num(r["paper_test_error"])
        lines.append(f"| {r['model']} | {_num(r['final_train_error']):.2f} | {_num(r['test_error']):.2f}{spread} | "
                     f"{'—' if paper is None else f'{paper:.2f}'} |")  # fmt: skip
    Path(path).write_text("\n".join(lines) + "\n")


def plot_degradation(curves: list[dict], path: str | Path, label: str) -> None:
    """He et al. Figure 6 in style: plain nets left, ResNets right, one colour per depth, training error dashed,
    validation error bold, against iterations; the mean over seeds. ``curves`` as in degradation_curves.csv."""
    from matplotlib.figure import Figure

    by_model: dict[tuple[str, int], dict[int, list[dict]]] = {}
    for r in curves:
        by_model.setdefault((r["kind"], int(r["depth"])), {}).setdefault(int(r["step"]), []).append(r)
    depths = sorted({d for _, d in by_model})
    n_seeds = max(len(rs) for per_step in by_model.values() for rs in per_step.values())
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, kind, title in zip(axes, ("plain", "resnet"), ("plain networks", "ResNets"), strict=True):
        for i, d in enumerate(depths):
            per_step = by_model.get((kind, d))
            if per_step is None:
                continue
            steps = sorted(per_step)
            mean = {key: [_mean_or_nan([_num(r[key]) for r in per_step[s]]) for s in steps]
                    for key in ("train_error", "val_error")}  # fmt: skip
            ax.plot(steps, mean["train_error"], "--", color=f"C{i}", linewidth=1)
            ax.plot(steps, mean["val_error"], "-", color=f"C{i}", linewidth=2.2, label=f"{kind}-{d}")
        ax.set(title=f"{title} on {label}", xlabel="iterations", ylabel="error (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    seeds = f"; mean of {n_seeds} seeds" if n_seeds > 1 else ""
    fig.suptitle("Degradation (He et al. 2016, Fig. 6 style): dashed = training error, bold = validation error\n"
                 f"(validation: held out from the training split; test error reported once, in degradation.md){seeds}",
                 fontsize=10)  # fmt: skip
    fig.savefig(path, dpi=90)


def run_depth(depths: list[int], *, family: str, data: str, recipe: str, seeds: list[int], out: str | Path,
              data_dir: str | None = None, overrides: dict | None = None, jobs: int = 1,
              label: str | None = None) -> list[dict]:  # fmt: skip
    """Accuracy, training time and parameters against depth; writes depth.csv and depth.png, marking the
    :func:`suggest_depth` answer. With ``jobs`` > 1 the runs share the device, so their training times are not
    comparable (the chart says so): use 1 for a time axis that means something.
    """
    from cnnzoo.analysis.profile import profile_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = "resnet" if family == "resnet_cifar" else "plain"
    tasks = [(f"{prefix}{d}", out / f"{prefix}{d}" / f"seed-{s}", s) for d in depths for s in seeds]
    parallel = train_in_parallel(tasks, jobs=jobs, data=data, recipe=recipe, data_dir=data_dir,
                                 overrides=overrides or {})  # fmt: skip
    rows = []
    for d in depths:
        name = f"{prefix}{d}"
        reports = [train_or_reuse(name, data, out / name / f"seed-{s}", recipe=recipe, seed=s, data_dir=data_dir,
                                  overrides=overrides or {}) for s in seeds]  # fmt: skip
        acc, acc_std = _mean_std([100 * r["test"]["top1"] for r in reports])
        secs, _ = _mean_std([r["train_seconds"] for r in reports])
        prof = profile_model(name)
        rows.append({"model": name, "depth": d, "params": prof["params"], "macs": prof["macs"],
                     "test_top1": acc, "test_top1_std": acc_std, "train_seconds": secs})  # fmt: skip
    _write_csv(out / "depth.csv", rows, list(rows[0]))
    pick = suggest_depth(rows, DEPTH_TOLERANCE)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4), layout="constrained")
    ax_acc, ax_time, ax_params = fig.subplots(1, 3)
    xs = [r["depth"] for r in rows]
    ax_acc.errorbar(xs, [r["test_top1"] for r in rows], yerr=[r["test_top1_std"] for r in rows], marker="o")
    ax_acc.plot([pick["depth"]], [pick["test_top1"]], "*", color="C3", markersize=16,
                label=f"suggested: {pick['model']}")  # fmt: skip
    ax_acc.legend()
    ax_acc.set(xlabel="depth (layers)", ylabel="test top-1 (%)", title=f"Accuracy on {label or data}")
    ax_time.plot(xs, [r["train_seconds"] for r in rows], marker="o", color="C1")
    shared = f"\n({min(jobs, parallel)} runs sharing the device: not comparable)" if parallel > 1 else ""
    ax_time.set(xlabel="depth (layers)", ylabel="training time (s)", title=f"Training time (this machine){shared}")
    ax_params.plot(xs, [r["params"] / 1e6 for r in rows], marker="o", color="C2")
    ax_params.set(xlabel="depth (layers)", ylabel="parameters (millions)", title="Parameters")
    for ax in (ax_acc, ax_time, ax_params):
        ax.grid(alpha=0.3)
    family_name = "ResNets" if prefix == "resnet" else "plain nets"
    fig.suptitle(f"How deep to go: {family_name} on {label or data}, recipe {recipe}, {len(seeds)} seed(s). "
                 f"Suggested: {pick['model']}, the shallowest within {DEPTH_TOLERANCE:g} points of the best")
    fig.savefig(out / "depth.png", dpi=90)
    return rows


def suggest_depth(rows: list[dict], tolerance: float = 0.5) -> dict:
    """The answer to "how many layers?": the shallowest row whose test top-1 is within ``tolerance`` points (or
    the best row's seed spread, if larger) of the best; a deeper net then costs time and parameters for nothing
    this data and budget can measure."""
    best = max(rows, key=lambda r: r["test_top1"])
    margin = max(tolerance, best.get("test_top1_std") or 0.0)
    return min((r for r in rows if r["test_top1"] >= best["test_top1"] - margin), key=lambda r: r["depth"])


def _write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


# --- commands --------------------------------------------------------------------------------------------------------


def cmd_gradients(args: argparse.Namespace) -> int:
    rows = run_gradients(args.models, data=args.data, data_dir=args.data_dir, steps=args.steps,
                         batch_size=args.batch_size, device=args.device, seed=args.seed, out=args.out,
                         label=args.label)  # fmt: skip
    for phase in dict.fromkeys(r["phase"] for r in rows):
        for m in args.models:
            sel = [r for r in rows if r["model"] == m and r["phase"] == phase]
            print(f"{m:>10} {phase:>16}: first/last conv gradient norm {decay_ratio(sel):.3g}")
    print(f"wrote {Path(args.out) / 'gradients.csv'} and gradients.png")
    return 0


def cmd_degradation(args: argparse.Namespace) -> int:
    depths = _depths(args.depths, PLAIN_DEPTHS, "degradation (plain and residual)")
    rows = run_degradation(depths, data=args.data, recipe=args.recipe, seeds=_seeds(args.seeds), out=args.out,
                           data_dir=args.data_dir, overrides=_overrides(args), jobs=args.jobs,
                           label=args.label)  # fmt: skip
    print(Path(args.out, "degradation.md").read_text())
    print(f"wrote {len(rows)} rows to {Path(args.out) / 'degradation.csv'} and degradation.png")
    return 0


def cmd_depth(args: argparse.Namespace) -> int:
    allowed = RESNET_DEPTHS if args.family == "resnet_cifar" else PLAIN_DEPTHS
    rows = run_depth(_depths(args.depths, allowed, args.family), family=args.family, data=args.data,
                     recipe=args.recipe, seeds=_seeds(args.seeds), out=args.out, data_dir=args.data_dir,
                     overrides=_overrides(args), jobs=args.jobs, label=args.label)  # fmt: skip
    for r in rows:
        print(f"{r['model']:>10}: test top-1 {r['test_top1']:.2f}%  {r['train_seconds']:.1f} s  {r['params']:,} params")
    pick = suggest_depth(rows, DEPTH_TOLERANCE)
    print(f"suggested: {pick['model']}, the shallowest within {DEPTH_TOLERANCE:g} points of the best test top-1")
    print(f"wrote {Path(args.out) / 'depth.csv'} and depth.png")
    return 0
