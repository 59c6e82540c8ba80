"""What you do with a finished run: re-evaluate it, predict image files, export the model.

Each rebuilds the model from the run's checkpoint (``best.pt`` by default; loaded with ``weights_only=True``) and
its stored config, and the data or the preprocessing from the checkpoint's metadata (class names, normalisation),
so a run directory is self-contained.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from cnnzoo.errors import CnnzooError
from cnnzoo.train.config import config_from_dict
from cnnzoo.train.engine import resolve_device, step_context
from cnnzoo.train.loop import Dist, evaluate
from cnnzoo.train.run import check_data_matches, load_bundle, load_run

MAX_REPORT_BYTES = 16 << 20  # a report.json is a few kB; anything near this is not one


def read_report(path: str | Path) -> dict:
    """A finished run's ``report.json`` (or the run directory holding it), checked: UTF-8 JSON of an object with
    ``model``, ``data`` and ``test.top1``; anything else (garbage, a hand edit, a folder) is one line naming it."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise CnnzooError(f"{path}: no such report (not a finished cnnzoo run directory)")
    try:
        if path.stat().st_size > MAX_REPORT_BYTES:
            raise CnnzooError(f"{path}: too large for a cnnzoo report.json")
        report = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CnnzooError(f"{path}: not a cnnzoo report (not UTF-8 JSON: {str(e).splitlines()[0]})") from None
    except OSError as e:
        raise CnnzooError(f"{path}: cannot read ({e.strerror or e})") from None
    ok = isinstance(report, dict) and isinstance(report.get("model"), str) and isinstance(report.get("data"), str)
    top1 = report["test"].get("top1") if ok and isinstance(report.get("test"), dict) else None
    if not isinstance(top1, (int, float)) or isinstance(top1, bool):
        raise CnnzooError(f"{path}: not a cnnzoo report (expected model, data and test.top1)")
    return report


def evaluate_run(run_dir: str | Path, *, split: str = "test", which: str = "best", device: str = "auto",
                 protocol: str = "center") -> dict:  # fmt: skip
    """Loss, top-1, top-5 (fractions) and per-class accuracy of a run's checkpoint on ``split``.

    ``protocol``: ``center`` (the loader's single view) or a test protocol of :mod:`cnnzoo.train.protocols`.
    """
    ckpt, model = load_run(run_dir, which)
    cfg = config_from_dict(ckpt["config"])
    dev = resolve_device(device)
    data = load_bundle(cfg, dev, Dist(), augment=False)
    check_data_matches(ckpt["meta"], data, run_dir)
    loader = {"test": data.test, "val": data.val, "train": data.train}[split]
    if loader.num_samples == 0:
        raise CnnzooError(f"{run_dir}: the run has no {split} split")
    ctx = step_context(cfg, dev)
    if protocol == "center":
        result = evaluate(model.to(dev), loader, ctx, data.num_classes, confusion=True, label=split)
        result.pop("confusion")
    else:
        from cnnzoo.train.protocols import evaluate_files, split_files

        result = evaluate_files(model.to(dev), *split_files(cfg, split), protocol, image_size=data.image_size,
                                channels=data.in_channels, mean=data.mean, std=data.std, num_classes=data.num_classes,
                                device=dev, autocast=ctx.autocast, memory_format=ctx.memory_format)  # fmt: skip
    result["per_class"] = dict(zip(data.classes, result["per_class"], strict=True))
    return {"data": data.name, "split": split, "checkpoint": which, "protocol": protocol, **result}


def predict(run_dir: str | Path, images: list[str | Path], *, top_k: int = 5, which: str = "best") -> list[dict]:
    """For each image file: its ``top_k`` classes as ``(name, probability)`` pairs, most likely first."""
    from cnnzoo.data import load_images

    if top_k < 1:
        raise CnnzooError(f"--top-k must be >= 1, got {top_k}")
    ckpt, model = load_run(run_dir, which)
    meta = ckpt["meta"]
    x = load_images([str(p) for p in images], in_channels=meta["in_channels"], image_size=meta["image_size"],
                    mean=tuple(meta["mean"]), std=tuple(meta["std"]))  # fmt: skip
    return top_classes(model, x, meta["classes"], images, top_k)


def top_classes(
    model: torch.nn.Module, x: torch.Tensor, classes: list[str] | None, images: list, top_k: int
) -> list[dict]:
    """``[{"image": path, "top": [(class name, probability), ...]}]`` of ``model`` (in eval mode) on the batch ``x``
    (``classes`` None: the class indices as names)."""
    with torch.no_grad():
        probs = model(x).float().softmax(1)
    classes = classes or [str(i) for i in range(probs.shape[1])]
    top = probs.topk(min(top_k, probs.shape[1]), dim=1)
    return [
        {"image": str(path), "top": [(classes[i], p) for p, i in zip(vals.tolist(), idx.tolist(), strict=True)]}
        for path, vals, idx in zip(images, top.values, top.indices, strict=True)
    ]


def predict_pretrained(
    model: str, weights: str, images: list[str | Path], *, top_k: int = 5, download: bool = False
) -> list[dict]:
    """``cnnzoo predict --model NAME --weights SPEC``: top-k classes with no run directory, named by the weights'
    categories and preprocessed as the weights were evaluated (torchvision's ``weights.transforms()``: resize,
    centre crop, normalisation; a run directory's own; ImageNet's 256 -> 224 for a bare state_dict file)."""
    from cnnzoo.data import load_images
    from cnnzoo.data.folders import decode_file
    from cnnzoo.data.stream import IMAGENET_MEAN, IMAGENET_STD
    from cnnzoo.models.weights import create_pretrained, resolve_weights

    if top_k < 1:
        raise CnnzooError(f"--top-k must be >= 1, got {top_k}")
    if not images:
        raise CnnzooError("no image files given")
    spec = resolve_weights(model, weights)
    net = create_pretrained(model, weights, download=download).eval()
    if spec.source == "torchvision":
        from torchvision.models import get_weight

        transform = get_weight(spec.name).transforms()
        x = torch.stack([transform(decode_file(str(p), 3)) for p in images])
    else:
        channels = len(spec.mean) if spec.mean else 3
        size, mean, std = spec.crop_size or 224, spec.mean or IMAGENET_MEAN, spec.std or IMAGENET_STD
        x = load_images([str(p) for p in images], in_channels=channels, image_size=size, mean=mean, std=std)
    return top_classes(net, x, spec.categories, images, top_k)


ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # export (torch.onnx dynamo exporter) and the check


def export(run_dir: str | Path, *, fmt: str, output: str | Path | None = None, which: str = "best",
           batch: int = 4) -> dict[str, Any]:  # fmt: skip
    """Write the model as TorchScript (``torch.jit.trace``) or ONNX, then run the written file on a random batch
    and compare with the eager model; a mismatch beyond 1e-4 (absolute, on logits) is an error.

    The destination is checked before any work, the file is written under a temporary name in the destination's
    folder and moved into place (``os.replace``) only once it has passed the check: a failure leaves no file and
    an existing one untouched.
    """
    if fmt not in ("torchscript", "onnx"):
        raise CnnzooError(f"unknown export format {fmt!r}: expected onnx or torchscript")
    if fmt == "onnx":
        missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
        if missing:
            raise CnnzooError(f"ONNX export needs the package(s) {', '.join(missing)}: pip install {' '.join(missing)}")
    run_dir = Path(run_dir)
    path = Path(output) if output else run_dir / ("model.ts.pt" if fmt == "torchscript" else "model.onnx")
    _check_destination(path)
    ckpt, model = load_run(run_dir, which)
    meta = ckpt["meta"]
    x = torch.randn(batch, meta["in_channels"], meta["image_size"], meta["image_size"],
                    generator=torch.Generator().manual_seed(0))  # fmt: skip
    with torch.no_grad():
        expected = model(x)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        diff = (_write_torchscript if fmt == "torchscript" else _write_onnx)(model, x, expected, tmp)
        if not diff <= 1e-4:
            raise CnnzooError(f"exported model disagrees with the eager model (max |difference| {diff:.3g})")
        os.replace(tmp, path)
    except OSError as e:  # the disk filled, the folder vanished or turned read-only meanwhile
        raise CnnzooError(f"{path}: cannot write the exported model ({e.strerror or e})") from None
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + ".data")):  # .data: where ONNX puts weights past 2 GB
            with contextlib.suppress(OSError):
                leftover.unlink()
    return {"path": str(path), "format": fmt, "batch": batch, "max_abs_diff": diff}


def _check_destination(path: Path) -> None:
    """One line, before any work, when ``path`` cannot become the exported file."""
    if path.is_dir():
        raise CnnzooError(f"{path}: is a folder; --output names the file to write")
    if not path.parent.is_dir():
        what = "not a folder" if path.parent.exists() else "no such folder"
        raise CnnzooError(f"{path.parent}: {what} (the folder --output writes into must exist)")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise CnnzooError(f"{path.parent}: cannot write into this folder (permission denied)")
    if path.exists() and not path.is_file():
        raise CnnzooError(f"{path}: exists and is not a regular file")


def _write_torchscript(model: torch.nn.Module, x: torch.Tensor, expected: torch.Tensor, path: Path) -> float:
    """Trace ``model`` to ``path``, reload it, and return the max |difference| of its logits from ``expected``."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.9+ marks TorchScript deprecated; asked for here
        traced = torch.jit.trace(model, x)
        traced.save(str(path))
        got = torch.jit.load(str(path))(x)
    return (got.float() - expected.float()).abs().max().item()


def _write_onnx(model: torch.nn.Module, x: torch.Tensor, expected: torch.Tensor, path: Path) -> float:
    """Export ``model`` to ONNX at ``path`` (dynamic batch), run it with onnxruntime at the batch of ``x`` and at
    batch 1, and return the max |difference| from ``expected``."""
    import onnxruntime

    # The dynamo exporter (torch.export -> onnxscript); the batch dimension stays dynamic.
    torch.onnx.export(
        model,
        (x,),
        str(path),
        input_names=["images"],
        output_names=["logits"],
        dynamo=True,
        dynamic_shapes=({0: torch.export.Dim.DYNAMIC},),
        verbose=False,
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    one = torch.from_numpy(session.run(None, {"images": x[:1].numpy()})[0])  # another batch size, same file
    diff1 = (one - expected[:1]).abs().max().item()
    if not diff1 <= 1e-4:
        raise CnnzooError(f"exported ONNX model disagrees at batch size 1 (max |difference| {diff1:.3g})")
    return (got.float() - expected.float()).abs().max().item()
