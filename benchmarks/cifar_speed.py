"""cnnzoo's trainer against the standard PyTorch CIFAR pipeline, same model, same data, same epochs.

The baseline is the recipe most tutorials and popular CIFAR repositories write (kuangliu/pytorch-cifar, the PyTorch
CIFAR tutorial): a map-style dataset over in-memory uint8 images with per-image PIL transforms
(RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize), ``DataLoader(batch_size=128, shuffle=True,
num_workers=2)``, fp32, SGD(lr 0.1, momentum 0.9, weight decay 5e-4, on every parameter), a cosine schedule stepped
per iteration, the model in its default memory format. Both pipelines train the same model definition, on the same
training images (cnnzoo's training split after the 5,000-image validation carve, or ``--subset`` of it), and report
test accuracy after the same number of epochs.

Timing: wall seconds of each training epoch, evaluation excluded, the first epoch (warm-up: cudnn autotuning,
compilation, worker start-up) excluded from the mean; ``torch.cuda.synchronize()`` before each clock read on CUDA.
MFU (model FLOPs utilisation) = 6 x MACs per image (forward 2 FLOPs per MAC, backward twice the forward) x training
images per second / peak; the peak defaults to 800 TFLOP/s on CUDA (the bf16 matrix rate measured on the H100) and is
left out on the CPU unless ``--peak-tflops`` names one.

Run (GPU):  python benchmarks/cifar_speed.py --data ../shared/data/cifar10-jpeg.tar.gz --device cuda --epochs 10
Run (CPU):  python benchmarks/cifar_speed.py --device cpu --models resnet20 --subset 5000 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

import cnnzoo
from cnnzoo.analysis.profile import profile_model
from cnnzoo.data import load_data

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz"
MODELS = ("resnet18_cifar", "resnet20", "resnet56", "vgg16_cifar", "googlenet_cifar")


class UInt8Images(Dataset):
    """The tutorial dataset: in-memory uint8 HWC images, one PIL image and one transform call per sample."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.images[i].squeeze(-1) if self.images.shape[-1] == 1 else self.images[i])
        return self.transform(img), int(self.labels[i])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_baseline(model_name: str, bundle, *, epochs: int, device: torch.device, seed: int) -> dict:
    """Train with the standard pipeline; return seconds per epoch and test accuracy after ``epochs``."""
    torch.manual_seed(seed)
    norm = transforms.Normalize(bundle.mean, bundle.std)
    train_tf = transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm]
    )
    test_tf = transforms.Compose([transforms.ToTensor(), norm])
    # The loaders hold uint8 NHWC tensors: the same images cnnzoo trains on, handed over as numpy arrays.
    train_ds = UInt8Images(bundle.train.images.cpu().numpy(), bundle.train.labels.cpu().numpy(), train_tf)
    test_ds = UInt8Images(bundle.test.images.cpu().numpy(), bundle.test.labels.cpu().numpy(), test_tf)
    pin = device.type == "cuda"
    train_loader = DataLoader(
        train_ds, batch_size=128, shuffle=True, num_workers=2, pin_memory=pin, persistent_workers=True
    )
    test_loader = DataLoader(test_ds, batch_size=512, num_workers=2, pin_memory=pin)

    model = cnnzoo.create_model(model_name, num_classes=len(bundle.classes), in_channels=bundle.in_channels)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(train_loader))
    seconds = []
    for _ in range(epochs):
        model.train()
        sync(device)
        t0 = time.perf_counter()
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = model(x)
            logits = out[0] if isinstance(out, tuple) else out
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        sync(device)
        seconds.append(time.perf_counter() - t0)
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in test_loader:
            pred = model(x.to(device)).argmax(1).cpu()
            correct += int((pred == y).sum())
            total += len(y)
    return {"epoch_seconds": seconds, "test_top1": correct / total}


def run_cnnzoo(
    model_name: str,
    data: str,
    *,
    epochs: int,
    device: torch.device,
    seed: int,
    subset: int | None,
    recipe: str,
    out: Path,
) -> dict:
    """Train with cnnzoo's trainer; seconds per epoch (training only) from metrics.jsonl.

    ``recipe="baseline"``: the baseline's own hyperparameters (batch 128, SGD 0.1/0.9, wd 5e-4 on every parameter,
    per-step cosine, no label smoothing) through cnnzoo's pipeline with its device defaults (CUDA: data resident on
    the GPU, bf16 autocast, channels_last, fused SGD): the same training, only the machinery differs. Any other
    name is a cnnzoo recipe with ``epochs`` overridden (e.g. ``fast``: cnnzoo's own time-to-accuracy settings).
    Suffixes: ``+compile`` or ``+<torch.compile mode>`` (``fast+reduce-overhead``) compiles the model,
    ``+cuda-graph`` replays the whole step as one CUDA graph (``fast+compile+cuda-graph`` does both); the first
    epoch, which pays for compilation and capture, is left out of the mean as always.
    """
    recipe, *mods = recipe.split("+")  # "fast+compile+cuda-graph": the recipe, then its speed options
    same = dict(
        batch_size=128,
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        nesterov=False,
        weight_decay=5e-4,
        wd_exclude_bn_bias=False,
        schedule="cosine",
        warmup_epochs=0.0,
        label_smoothing=0.0,
    )
    kw: dict = same if recipe == "baseline" else {"recipe": recipe}
    for mod in mods:
        if mod == "cuda-graph":
            kw.update(cuda_graph=True)
        else:
            kw.update(compile=True, compile_mode="default" if mod == "compile" else mod)
    result = cnnzoo.train(
        model_name,
        data=data,
        out=str(out),
        epochs=epochs,
        device=str(device),
        seed=seed,
        subset=subset,
        quiet=True,
        **kw,
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"epoch_seconds": [r["seconds"] for r in rows], "test_top1": result["test"]["top1"]}


def mean_after_first(seconds: list[float]) -> float:
    rest = seconds[1:] or seconds
    return sum(rest) / len(rest)


def resolve_data(path: Path, workdir: Path) -> str:
    """A folder is used as is; the tarball is unpacked once into ``workdir``."""
    if path.is_dir():
        return str(path)
    if not path.exists():
        raise SystemExit(f"error: {path} not found (pass --data PATH to CIFAR-10 as a folder or .tar.gz)")
    target = workdir / path.name.split(".")[0]
    if not (target / "train").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path) as tar:
            tar.extractall(target, filter="data")
    return str(target)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CIFAR-10 folder or .tar.gz (train/, test/)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--subset", type=int, default=None, help="train on this many training images (CPU runs)")
    p.add_argument(
        "--recipes",
        default="baseline",
        help="cnnzoo side, comma-separated: 'baseline' (the baseline's hyperparameters) and/or recipe "
        "names; suffixes +compile, +reduce-overhead (torch.compile) and +cuda-graph (the whole "
        "step as one CUDA graph) combine: fast+compile+cuda-graph",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "cnnzoo-speed")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--peak-tflops", type=float, default=None, help="for MFU (default 800 on CUDA, none on the CPU)")
    args = p.parse_args()

    device = torch.device(args.device)
    peak = args.peak_tflops or (800.0 if device.type == "cuda" else None)

    def mfu(macs: int, images: int, seconds: float) -> float | None:
        return 6 * macs * images / seconds / (peak * 1e12) if peak else None

    def pct(x: float | None) -> str:
        return "" if x is None else f"  MFU {100 * x:5.2f}%"

    data = resolve_data(args.data.resolve(), args.workdir)
    print(
        f"torch {torch.__version__} | device {device} "
        f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'}) | "
        f"threads {torch.get_num_threads()} | data CIFAR-10 (JPEG q75) {data} | epochs {args.epochs} | "
        f"subset {args.subset}"
    )
    results = []
    recipes = args.recipes.split(",")
    width = max(len("baseline (standard pipeline)"), *(len(f"cnnzoo ({r})") for r in recipes))
    for name in args.models.split(","):
        # The baseline reads the very images cnnzoo trains on: the same bundle, kept on the CPU for PIL.
        bundle = load_data(data, batch_size=128, device="cpu", seed=args.seed, subset=args.subset)
        base = run_baseline(name, bundle, epochs=args.epochs, device=device, seed=args.seed)
        b = mean_after_first(base["epoch_seconds"])
        n_train = bundle.train.num_samples  # images per epoch (both sides drop at most one partial batch)
        macs = profile_model(name, num_classes=10, input_shape=(3, 32, 32))["macs"]
        print(
            f"{name:16s} {'baseline (standard pipeline)':<{width}s} {b:8.2f} s/epoch  test top-1 "
            f"{100 * base['test_top1']:5.2f}%{pct(mfu(macs, n_train, b))}",
            flush=True,
        )
        for recipe in recipes:
            ours = run_cnnzoo(
                name,
                data,
                epochs=args.epochs,
                device=device,
                seed=args.seed,
                subset=args.subset,
                recipe=recipe,
                out=args.workdir / "runs" / f"{name}-{recipe}-{int(time.time())}",
            )
            o = mean_after_first(ours["epoch_seconds"])
            results.append(
                {
                    "model": name,
                    "cnnzoo_recipe": recipe,
                    "baseline_s_per_epoch": b,
                    "cnnzoo_s_per_epoch": o,
                    "speedup": b / o,
                    "baseline_test_top1": base["test_top1"],
                    "cnnzoo_test_top1": ours["test_top1"],
                    "train_images_per_epoch": n_train,
                    "baseline_mfu": mfu(macs, n_train, b),
                    "cnnzoo_mfu": mfu(macs, n_train, o),
                }
            )
            print(
                f"{name:16s} {f'cnnzoo ({recipe})':<{width}s} {o:8.2f} s/epoch  test top-1 "
                f"{100 * ours['test_top1']:5.2f}%  speed-up x{b / o:.2f}{pct(mfu(macs, n_train, o))}",
                flush=True,
            )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "torch": torch.__version__,
                    "device": str(device),
                    "epochs": args.epochs,
                    "subset": args.subset,
                    "peak_tflops": peak,
                    "results": results,
                },
                indent=2,
            )
        )
    if any(math.isnan(r["speedup"]) for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
