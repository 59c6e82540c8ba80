"""A finished run as one object: ``cnnzoo.load_run(run_dir)`` -> :class:`TrainedRun`.

The model (eval mode), its class names and preprocessing come from the run's checkpoint (``best.pt`` by default,
loaded with ``weights_only=True`` by :func:`load_checkpoint`), the report from ``report.json`` when the
run finished. ``run.predict(...)`` is what ``cnnzoo predict`` prints.

    run = cnnzoo.load_run("runs/demo")
    run.predict(["cat.png", "dog.png"], top_k=3)  # [[("cat", 0.91), ("dog", 0.05), ...], ...]
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnzoo.atomic import read_regular
from cnnzoo.errors import CnnzooError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from cnnzoo.train.config import TrainConfig


@dataclass
class TrainedRun:
    """A trained model with what it needs to be used: class names, preprocessing, config and report."""

    run_dir: Path
    model: nn.Module  # in eval mode, on the CPU
    classes: list[str]
    in_channels: int
    image_size: int  # square inputs: image_size x image_size
    mean: tuple[float, ...]  # normalisation, per channel, on pixel values in [0, 1]
    std: tuple[float, ...]
    config: TrainConfig
    report: dict[str, Any] | None = None  # report.json, or None before the run finished
    checkpoint: str = "best"
    meta: dict[str, Any] = field(default_factory=dict, repr=False)

    def preprocess(self, images: Any) -> torch.Tensor:
        """A float32 ``(N, C, image_size, image_size)`` batch from image files (paths), PIL images, uint8 ``(C, H,
        W)`` tensors, or a tensor batch: a uint8 ``(N, C, H, W)`` batch is preprocessed, a floating one is taken as
        already preprocessed (normalised at this run's size)."""
        import torch
        from torchvision.transforms.v2.functional import pil_to_tensor

        from cnnzoo.data.load import load_images, preprocess_images

        size = dict(in_channels=self.in_channels, image_size=self.image_size, mean=self.mean, std=self.std)
        if isinstance(images, torch.Tensor):
            if images.dim() != 4 or images.shape[1] not in (1, 3):
                raise CnnzooError(f"expected an image batch (N, C, H, W) with C 1 or 3, got {tuple(images.shape)}")
            if images.is_floating_point():
                if images.shape[1:] != (self.in_channels, self.image_size, self.image_size):
                    want = f"(N, {self.in_channels}, {self.image_size}, {self.image_size})"
                    raise CnnzooError(f"a preprocessed batch must be {want}, got {tuple(images.shape)}")
                return images.float()
            return preprocess_images(list(images), **size)
        if isinstance(images, (str, os.PathLike)) or not isinstance(images, (list, tuple)):
            images = [images]
        if all(isinstance(i, (str, os.PathLike)) for i in images):
            return load_images(list(images), **size)
        tensors = []
        for image in images:
            if isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.dim() == 3:
                tensors.append(image)
            elif hasattr(image, "convert"):  # a PIL image
                tensors.append(pil_to_tensor(image.convert("L" if self.in_channels == 1 else "RGB")))
            else:
                raise CnnzooError(
                    f"cannot predict {type(image).__name__}: expected paths, PIL images, uint8 (C, H, W) "
                    "tensors or a tensor batch"
                )
        return preprocess_images(tensors, **size)

    def predict(self, images: Any, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """For each image, its ``top_k`` classes as ``(name, probability)``, most likely first."""
        import torch

        if top_k < 1:
            raise CnnzooError(f"top_k must be >= 1, got {top_k}")
        x = self.preprocess(images)
        with torch.no_grad():
            return top_classes(self.model(x), self.classes, top_k)


def top_classes(logits: torch.Tensor, classes: list[str], top_k: int) -> list[list[tuple[str, float]]]:
    """Per row of ``logits`` ``(N, K)``: the ``top_k`` ``(class name, softmax probability)``, most likely first."""
    probs = logits.float().softmax(1)
    top = probs.topk(min(top_k, probs.shape[1]), dim=1)
    return [
        [(classes[i], p) for p, i in zip(vals.tolist(), idx.tolist(), strict=True)]
        for vals, idx in zip(top.values, top.indices, strict=True)
    ]


def load_run(run_dir: str | Path, which: str = "best") -> TrainedRun:
    """The trained model of ``run_dir`` (its ``best.pt``, or ``last.pt`` with ``which="last"``), ready to predict."""
    from cnnzoo.train.config import config_from_dict

    run_dir = Path(run_dir)
    ckpt, model = load_checkpoint(run_dir, which)
    meta = ckpt["meta"]
    report = read_report(run_dir) if (run_dir / "report.json").is_file() else None
    return TrainedRun(
        run_dir=run_dir,
        model=model,
        classes=list(meta["classes"]),
        in_channels=meta["in_channels"],
        image_size=meta["image_size"],
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        config=config_from_dict(ckpt["config"]),
        report=report,
        checkpoint=which,
        meta=meta,
    )


def load_checkpoint(run_dir: str | Path, which: str = "best") -> tuple[dict[str, Any], nn.Module]:
    """(checkpoint, model in eval mode) of a run directory's ``best.pt`` or ``last.pt`` (``weights_only=True``)."""
    from cnnzoo.train import checkpoint
    from cnnzoo.train.run import model_from_checkpoint
    from cnnzoo.train.rundir import MARKER, read_marker

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CnnzooError(f"{run_dir}: no such run directory")
    if which not in ("best", "last"):
        raise CnnzooError(f"checkpoint must be best or last, got {which!r}")
    path = run_dir / f"{which}.pt"
    if not path.is_file():
        raise CnnzooError(f"{path}: no such checkpoint (has the run finished an epoch?)")
    ckpt = checkpoint.load(path)
    marker = read_marker(run_dir)
    if marker is not None and ckpt["meta"].get("run_id") != marker["id"]:  # another run's file copied in
        raise CnnzooError(
            f"{path}: not the checkpoint of the run in {run_dir / MARKER} (its run id differs): a run's files are "
            "not mixed; use the run directory it came from"
        )
    return ckpt, model_from_checkpoint(ckpt)


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
        report = json.loads(read_regular(path, MAX_REPORT_BYTES, "cnnzoo report.json").decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CnnzooError(f"{path}: not a cnnzoo report (not UTF-8 JSON: {str(e).splitlines()[0]})") from None
    except OSError as e:
        raise CnnzooError(f"{path}: cannot read ({e.strerror or e})") from None
    ok = isinstance(report, dict) and isinstance(report.get("model"), str) and isinstance(report.get("data"), str)
    top1 = report["test"].get("top1") if ok and isinstance(report.get("test"), dict) else None
    if not isinstance(top1, (int, float)) or isinstance(top1, bool):
        raise CnnzooError(f"{path}: not a cnnzoo report (expected model, data and test.top1)")
    return report
