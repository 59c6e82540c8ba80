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
        p.add_argument("--out", default=f"runs/study-{name}")
        p.set_defaults(func=cmd_degradation if name == "degradation" else cmd_depth)


# --- gradients -----------------------------------------------------------------------------------------------------


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """(name, block, last BN of its branch) for every residual/plain block (modules with a bool ``shortcut``)."""
    out = []
    for name, m in model.named_modules():
        if isinstance(getattr(m, "shortcut", None), bool):
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
                  batch_size: int = 128, device: str = "cpu", seed: int = 0, out: str | Path = "runs/study-gradients"
                  ) -> list[dict]:  # fmt: skip
    """Measure every model at initialisation and after ``steps`` SGD steps; write gradients.csv and .png."""
    from cnnzoo.data import load_data
    from cnnzoo.models import create_model

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
    _plot_gradients(rows, models, out / "gradients.png", data)
    return rows


def _plot_gradients(rows: list[dict], models: list[str], path: Path, data: str) -> None:
    from matplotlib.figure import Figure

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
                bottom.plot([r["index"] for r in pts], [r["norm"] for r in pts], style, marker=marker, markersize=3,
                            color=colors[m], label=f"{m}: via {kind}")  # fmt: skip
        top.set(yscale="log", xlabel="conv layer (1 = next to the input)", ylabel="||dL/dW|| (log scale)",
                title=f"Gradient reaching each conv layer, {phase}")  # fmt: skip
        bottom.set(yscale="log", xlabel="block (1 = next to the input)", ylabel="||dL/dx|| into the block (log)",
                   title=f"Into each block: via branch vs shortcut, {phase}")  # fmt: skip
        for ax in (top, bottom):
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
    fig.suptitle(f"Gradient norms through depth: plain (dashed) vs residual (solid) nets, one real batch of {data}")
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
        return [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise CnnzooError(f"--seeds must be comma-separated integers, got {text!r}") from None


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
                      data_dir: str | None, overrides: dict) -> None:  # fmt: skip
    """Train ``(model, run_dir, seed)`` tasks in ``jobs`` spawned processes (several small nets share one GPU well:
    at batch 128 each is bound by per-step launch overhead, not by the GPU). Sequential when ``jobs`` is 1."""
    if jobs <= 1:
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    kw = {"recipe": recipe, "data_dir": data_dir, "overrides": overrides}
    todo = [(m, data, d, dict(kw, seed=s)) for m, d, s in tasks if not (d / "report.json").exists()]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_train_task, todo))


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_degradation(depths: list[int], *, data: str, recipe: str, seeds: list[int], out: str | Path,
                    data_dir: str | None = None, overrides: dict | None = None, jobs: int = 1
                    ) -> list[dict]:  # fmt: skip
    """Train plain and residual nets of each depth; write degradation.csv, .md and .png (Figure 6 style)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(f"{k}{d}", out / f"{k}{d}" / f"seed-{s}", s) for k in ("plain", "resnet") for d in depths for s in seeds]
    train_in_parallel(tasks, jobs=jobs, data=data, recipe=recipe, data_dir=data_dir, overrides=overrides or {})
    rows = []
    for kind in ("plain", "resnet"):
        for d in depths:
            reports = [train_or_reuse(f"{kind}{d}", data, out / f"{kind}{d}" / f"seed-{s}", recipe=recipe, seed=s,
                                      data_dir=data_dir, overrides=overrides or {}) for s in seeds]  # fmt: skip
            if any(r.get("interrupted") for r in reports):
                raise CnnzooError(f"{kind}{d} was interrupted; run the same command again to resume")
            hist = _history(out / f"{kind}{d}" / f"seed-{seeds[0]}")
            test_err, test_std = _mean_std([100 * (1 - r["test"]["top1"]) for r in reports])
            train_err = 100 * (1 - hist[-1]["train_top1"])
            rows.append({"model": f"{kind}{d}", "kind": kind, "depth": d, "seeds": len(seeds),
                         "final_train_error": train_err, "test_error": test_err, "test_error_std": test_std,
                         "paper_test_error": PAPER_TABLE6.get(d) if kind == "resnet" else None,
                         "steps": hist[-1]["step"]})  # fmt: skip
    _write_csv(out / "degradation.csv", rows, list(rows[0]))
    _write_degradation_md(out / "degradation.md", rows, data, recipe, seeds, overrides or {})
    _plot_degradation(out, depths, seeds[0], out / "degradation.png", data)
    return rows


def _write_degradation_md(path: Path, rows: list[dict], data: str, recipe: str, seeds: list[int], overrides: dict):
    shortened = {k: v for k, v in overrides.items() if k in ("epochs", "iterations")}
    lines = [
        f"# Degradation study on {data}",
        "",
        f"Recipe `{recipe}`" + (f", shortened: {shortened}" if shortened else " (full schedule)") +
        f"; seeds {seeds}. Test error measured once per run at the end (best checkpoint on validation).",
        "The paper's figures (He et al. 2016, Table 6) are CIFAR-10 test errors at 64k iterations; it gives the plain "
        "nets only as curves (Figure 6: plain-20..56 error rises with depth).",
        "",
        "| model | final training error (%) | test error (%) | paper, Table 6 (%) |",
        "|---|---:|---:|---:|",
    ]  # fmt: skip
    for r in rows:
        spread = f" ± {r['test_error_std']:.2f}" if r["seeds"] > 1 else ""
        paper = f"{r['paper_test_error']:.2f}" if r["paper_test_error"] is not None else "—"
        lines.append(f"| {r['model']} | {r['final_train_error']:.2f} | {r['test_error']:.2f}{spread} | {paper} |")
    path.write_text("\n".join(lines) + "\n")


def _plot_degradation(out: Path, depths: list[int], seed: int, path: Path, data: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, kind, title in zip(axes, ("plain", "resnet"), ("plain networks", "ResNets"), strict=True):
        for i, d in enumerate(depths):
            hist = _history(out / f"{kind}{d}" / f"seed-{seed}")
            steps = [r["step"] for r in hist]
            ax.plot(steps, [100 * (1 - r["train_top1"]) for r in hist], "--", color=f"C{i}", linewidth=1)
            val = [math.nan if r.get("val_top1") is None else 100 * (1 - r["val_top1"]) for r in hist]
            ax.plot(steps, val, "-", color=f"C{i}", linewidth=2.2, label=f"{kind}-{d}")
        ax.set(title=f"{title} on {data}", xlabel="iterations", ylabel="error (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Degradation (He et al. 2016, Fig. 6 style): dashed = training error, bold = validation error "
                 "(held out from train; test reported once, see degradation.md)", fontsize=10)  # fmt: skip
    fig.savefig(path, dpi=90)


def run_depth(depths: list[int], *, family: str, data: str, recipe: str, seeds: list[int], out: str | Path,
              data_dir: str | None = None, overrides: dict | None = None, jobs: int = 1) -> list[dict]:  # fmt: skip
    """Accuracy, training time and parameters against depth; writes depth.csv and depth.png.

    With ``jobs`` > 1 the runs share the device, so their training times are not comparable: use 1 for the chart.
    """
    from cnnzoo.analysis.profile import profile_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = "resnet" if family == "resnet_cifar" else "plain"
    tasks = [(f"{prefix}{d}", out / f"{prefix}{d}" / f"seed-{s}", s) for d in depths for s in seeds]
    train_in_parallel(tasks, jobs=jobs, data=data, recipe=recipe, data_dir=data_dir, overrides=overrides or {})
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
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4), layout="constrained")
    ax_acc, ax_time, ax_params = fig.subplots(1, 3)
    xs = [r["depth"] for r in rows]
    ax_acc.errorbar(xs, [r["test_top1"] for r in rows], yerr=[r["test_top1_std"] for r in rows], marker="o")
    ax_acc.set(xlabel="depth (layers)", ylabel="test top-1 (%)", title=f"Accuracy on {data}")
    ax_time.plot(xs, [r["train_seconds"] for r in rows], marker="o", color="C1")
    ax_time.set(xlabel="depth (layers)", ylabel="training time (s)", title="Training time (this machine)")
    ax_params.plot(xs, [r["params"] / 1e6 for r in rows], marker="o", color="C2")
    ax_params.set(xlabel="depth (layers)", ylabel="parameters (millions)", title="Parameters")
    for ax in (ax_acc, ax_time, ax_params):
        ax.grid(alpha=0.3)
    fig.suptitle(f"How deep to go: {prefix} nets on {data}, recipe {recipe}, {len(seeds)} seed(s)")
    fig.savefig(out / "depth.png", dpi=90)
    return rows


def _write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


# --- commands --------------------------------------------------------------------------------------------------------


def cmd_gradients(args: argparse.Namespace) -> int:
    rows = run_gradients(args.models, data=args.data, data_dir=args.data_dir, steps=args.steps,
                         batch_size=args.batch_size, device=args.device, seed=args.seed, out=args.out)  # fmt: skip
    for phase in dict.fromkeys(r["phase"] for r in rows):
        for m in args.models:
            sel = [r for r in rows if r["model"] == m and r["phase"] == phase]
            print(f"{m:>10} {phase:>16}: first/last conv gradient norm {decay_ratio(sel):.3g}")
    print(f"wrote {Path(args.out) / 'gradients.csv'} and gradients.png")
    return 0


def cmd_degradation(args: argparse.Namespace) -> int:
    depths = _depths(args.depths, PLAIN_DEPTHS, "degradation (plain and residual)")
    rows = run_degradation(depths, data=args.data, recipe=args.recipe, seeds=_seeds(args.seeds), out=args.out,
                           data_dir=args.data_dir, overrides=_overrides(args), jobs=args.jobs)  # fmt: skip
    print(Path(args.out, "degradation.md").read_text())
    print(f"wrote {len(rows)} rows to {Path(args.out) / 'degradation.csv'} and degradation.png")
    return 0


def cmd_depth(args: argparse.Namespace) -> int:
    allowed = RESNET_DEPTHS if args.family == "resnet_cifar" else PLAIN_DEPTHS
    rows = run_depth(_depths(args.depths, allowed, args.family), family=args.family, data=args.data,
                     recipe=args.recipe, seeds=_seeds(args.seeds), out=args.out, data_dir=args.data_dir,
                     overrides=_overrides(args), jobs=args.jobs)  # fmt: skip
    for r in rows:
        print(f"{r['model']:>10}: test top-1 {r['test_top1']:.2f}%  {r['train_seconds']:.1f} s  {r['params']:,} params")
    print(f"wrote {Path(args.out) / 'depth.csv'} and depth.png")
    return 0
