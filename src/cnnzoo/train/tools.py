"""What you do with a finished run: re-evaluate it, predict image files, export the model.

Each rebuilds the model from the run's checkpoint (``best.pt`` by default; loaded with ``weights_only=True``) and
its stored config, and the data or the preprocessing from the checkpoint's metadata (class names, normalisation),
so a run directory is self-contained.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from cnnzoo.errors import CnnzooError, DiskError
from cnnzoo.train.checkpoint import check_data_matches
from cnnzoo.train.config import config_from_dict
from cnnzoo.train.distributed import Dist
from cnnzoo.train.engine import resolve_device, step_context
from cnnzoo.train.loop import evaluate
from cnnzoo.train.run import load_bundle
from cnnzoo.train.trained import load_checkpoint, read_report  # noqa: F401  (read_report: cnnzoo.train.tools API)


def evaluate_run(
    run_dir: str | Path, *, split: str = "test", which: str = "best", device: str = "auto", protocol: str = "center"
) -> dict:
    """Loss, top-1, top-5 (fractions) and per-class accuracy of a run's checkpoint on ``split``.

    ``protocol``: ``center`` (the loader's single view) or a test protocol of :mod:`cnnzoo.train.protocols`.
    """
    ckpt, model = load_checkpoint(run_dir, which)
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

        result = evaluate_files(
            model.to(dev),
            *split_files(cfg, split),
            protocol,
            image_size=data.image_size,
            channels=data.in_channels,
            mean=data.mean,
            std=data.std,
            num_classes=data.num_classes,
            device=dev,
            autocast=ctx.autocast,
            memory_format=ctx.memory_format,
        )
    result["per_class"] = dict(zip(data.classes, result["per_class"], strict=True))
    return {"data": data.name, "split": split, "checkpoint": which, "protocol": protocol, **result}


def predict(run_dir: str | Path, images: list[str | Path], *, top_k: int = 5, which: str = "best") -> list[dict]:
    """For each image file: its ``top_k`` classes as ``(name, probability)`` pairs, most likely first
    (:meth:`cnnzoo.train.trained.TrainedRun.predict`)."""
    from cnnzoo.train.trained import load_run as load_trained

    if top_k < 1:
        raise CnnzooError(f"--top-k must be >= 1, got {top_k}")
    tops = load_trained(run_dir, which).predict([str(p) for p in images], top_k=top_k)
    return [{"image": str(path), "top": top} for path, top in zip(images, tops, strict=True)]


def predict_onnx(path: str | Path, images: list[str | Path], *, top_k: int = 5) -> list[dict]:
    """:func:`predict` with an exported ``.onnx`` file, run by onnxruntime: preprocessing and class names come from
    the file's metadata (:func:`export_metadata`)."""
    from cnnzoo.data import load_images
    from cnnzoo.train.trained import top_classes

    if top_k < 1:
        raise CnnzooError(f"--top-k must be >= 1, got {top_k}")
    if importlib.util.find_spec("onnxruntime") is None:
        raise CnnzooError(f"{path}: running an ONNX file needs onnxruntime: pip install cnnzoo[onnx]")
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types: a missing, truncated or foreign file
        raise CnnzooError(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0][:200]})") from None
    meta = read_onnx_metadata(session.get_modelmeta().custom_metadata_map, path)
    size = {key: meta[key] for key in ("in_channels", "image_size")}
    x = load_images([str(p) for p in images], **size, mean=tuple(meta["mean"]), std=tuple(meta["std"]))
    logits = session.run(None, {session.get_inputs()[0].name: x.contiguous().numpy()})[0]
    tops = top_classes(torch.from_numpy(logits), meta["classes"], top_k)
    return [{"image": str(p), "top": top} for p, top in zip(images, tops, strict=True)]


def read_onnx_metadata(props: dict[str, str], path: str | Path) -> dict[str, Any]:
    """The :func:`export_metadata` of an ONNX file's ``metadata_props``, decoded; one line when it has none."""
    try:
        return {key: json.loads(props[f"{ONNX_PREFIX}{key}"]) for key in EXPORT_KEYS}
    except (KeyError, ValueError):
        raise CnnzooError(f"{path}: no cnnzoo metadata (class names, input size): not from `cnnzoo export`") from None


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
    from cnnzoo.train.trained import top_classes

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
    with torch.no_grad():
        logits = net(x)
    classes = spec.categories or [str(i) for i in range(logits.shape[1])]  # a bare state_dict names no classes
    tops = top_classes(logits, classes, top_k)
    return [{"image": str(p), "top": top} for p, top in zip(images, tops, strict=True)]


ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # export (torch.onnx dynamo exporter) and the check
ONNX_PREFIX = "cnnzoo."  # metadata_props keys: cnnzoo.classes, cnnzoo.mean, ... (export_metadata)
EXPORT_KEYS = ("model", "classes", "in_channels", "image_size", "mean", "std")  # export_metadata
TORCHSCRIPT_EXTRA = "cnnzoo.json"  # the TorchScript extra file holding export_metadata


def export(
    run_dir: str | Path,
    *,
    fmt: str,
    output: str | Path | None = None,
    which: str = "best",
    batch: int = 4,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the model as TorchScript (``torch.jit.trace``) or ONNX, then run the written file on a random batch
    and compare with the eager model; a mismatch beyond 1e-4 (absolute, on logits) is an error.

    The file carries what a user needs to feed it (:func:`export_metadata`: class names, input size and channels,
    normalisation): ONNX as ``metadata_props``, TorchScript as the extra file ``cnnzoo.json``. The ONNX input
    ``images`` has a dynamic batch axis named ``batch``.

    The destination is checked before any work, the files are written into a temporary folder beside it and moved
    into place (``os.replace``) only once they have passed the check: a failure leaves no file and an existing one
    untouched. An existing file is replaced only when it is an earlier cnnzoo export of the same format, or with
    ``overwrite``; a run directory's checkpoints, config, marker and other files never are. ``files`` in the result
    names every file written (ONNX past 2 GB keeps its weights in a second file,
    ``NAME.data``).
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
    _check_replace(path, fmt, overwrite)
    ckpt, model = load_checkpoint(run_dir, which)
    meta = ckpt["meta"]
    x = torch.randn(
        batch, meta["in_channels"], meta["image_size"], meta["image_size"], generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        expected = model(x)
    _remove_stale_exports(path)
    _check_room(path, model)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".export.tmp", dir=path.parent))
    try:
        # Written under the final name inside the temporary folder: an ONNX file refers to its external data file
        # by name, so the pair must keep the names it was written with.
        write = _write_torchscript if fmt == "torchscript" else _write_onnx
        diff = write(model, x, expected, tmp_dir / path.name, export_metadata(meta))
        if not diff <= 1e-4:
            raise CnnzooError(f"exported model disagrees with the eager model (max |difference| {diff:.3g})")
        written = sorted(tmp_dir.iterdir(), key=lambda f: f.name != path.name)  # the model file first
        for f in written[1:]:  # ONNX's external data file: the same rules as the model file
            _check_replace(path.parent / f.name, fmt, overwrite, data_file=True)
        for f in written:
            os.replace(f, path.parent / f.name)
    except OSError as e:  # the disk filled, the folder vanished or turned read-only meanwhile: an OS error (exit 1)
        raise OSError(e.errno, f"cannot write the exported model ({e.strerror or e})", str(path)) from None
    except RuntimeError as e:  # torch's writers report a failed write (a full disk) as a RuntimeError
        from cnnzoo.atomic import _write_error

        error = _write_error(path, e)
        if error.errno != errno.ENOSPC and not any(w in str(e).lower() for w in ("writ", "unexpected pos")):
            raise
        raise error from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    files = [str(path.parent / f.name) for f in written]
    return {"path": str(path), "files": files, "format": fmt, "batch": batch, "max_abs_diff": diff}


def export_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """What an exported file carries about its input and output, as strings (JSON values): ``classes``,
    ``in_channels``, ``image_size`` (square), ``mean`` and ``std`` (per channel, on pixels scaled to [0, 1]),
    ``model``. :func:`read_onnx_metadata` reads it back."""
    return {key: json.dumps(list(meta[key]) if key in ("classes", "mean", "std") else meta[key]) for key in EXPORT_KEYS}


def _check_destination(path: Path) -> None:
    """One line, before any work, when ``path`` cannot become the exported file."""
    if path.is_dir():
        raise CnnzooError(f"{path}: is a folder; --output names the file to write")
    if not path.parent.is_dir():
        what = "not a folder" if path.parent.exists() else "no such folder"
        raise CnnzooError(f"{path.parent}: {what} (the folder --output writes into must exist)")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise DiskError(f"{path.parent}: cannot write into this folder (permission denied)")
    if path.exists() and not path.is_file():
        raise CnnzooError(f"{path}: exists and is not a regular file")


PROTECTED = ("cnnzoo-run.json", "config.toml", "metrics.jsonl", "last.pt", "best.pt", "report.json")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _is_export(path: Path, fmt: str) -> bool:
    """Whether ``path`` is a file an earlier ``cnnzoo export`` of ``fmt`` wrote (it carries our metadata)."""
    try:
        if fmt == "torchscript":
            import zipfile

            with zipfile.ZipFile(path) as z:
                return any(name.endswith(f"/extra/{TORCHSCRIPT_EXTRA}") for name in z.namelist())
        with open(path, "rb") as f:  # ONNX's metadata_props keys are stored as plain strings in the protobuf
            return f"{ONNX_PREFIX}classes".encode() in f.read(64 << 20)
    except Exception:  # zipfile.BadZipFile, an unreadable file, ...: not ours  # noqa: BLE001
        return False


def _check_replace(path: Path, fmt: str, overwrite: bool, *, data_file: bool = False) -> None:
    """Refuse a destination that is a run directory's own file (always), or an existing file that no earlier
    export of this format wrote (without ``overwrite``)."""
    from cnnzoo.train.rundir import MARKER

    real = Path(os.path.realpath(path))
    if real.name in PROTECTED and (real.parent / MARKER).is_file():
        raise CnnzooError(
            f"{path}: is a file of the run in {real.parent}; export never replaces a run's checkpoints, config or "
            "marker: name another --output"
        )
    if real.name.startswith(".cnnzoo") and (real.parent / MARKER).is_file():
        raise CnnzooError(f"{path}: is cnnzoo's bookkeeping in the run {real.parent}: name another --output")
    if not os.path.lexists(path) or overwrite:
        return
    if data_file or not _is_export(path, fmt):
        raise CnnzooError(
            f"{path}: exists and is not an earlier cnnzoo {fmt} export; add --overwrite to replace it, or name another "
            "--output"
        )


def _remove_stale_exports(path: Path) -> None:
    """Temporary folders that a killed export to ``path`` left behind."""
    import glob

    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.export.tmp"):
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)


def _check_room(path: Path, model: torch.nn.Module) -> None:
    """An OS error (exit 1) before writing when the folder clearly cannot hold the export: torch's writers abort the
    process, or fail half-way, on a full disk instead of raising."""
    need = sum(t.numel() * t.element_size() for t in model.state_dict().values()) * 2 + (1 << 20)
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return
    if free < need:
        raise OSError(errno.ENOSPC, f"No space left on device ({need:,} bytes needed, {free:,} free)", str(path))


def _write_torchscript(
    model: torch.nn.Module, x: torch.Tensor, expected: torch.Tensor, path: Path, metadata: dict[str, str]
) -> float:
    """Trace ``model`` to ``path`` with ``metadata`` as the extra file ``cnnzoo.json``, reload it, and return the max
    |difference| of its logits from ``expected``."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.9+ marks TorchScript deprecated; asked for here
        traced = torch.jit.trace(model, x)
        torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_EXTRA: json.dumps(metadata)})
        got = torch.jit.load(str(path))(x)
    return (got.float() - expected.float()).abs().max().item()


def _write_onnx(
    model: torch.nn.Module, x: torch.Tensor, expected: torch.Tensor, path: Path, metadata: dict[str, str]
) -> float:
    """Export ``model`` to ONNX at ``path`` (batch axis dynamic, named ``batch``) with ``metadata`` as its
    ``metadata_props``, run it with onnxruntime at the batch of ``x`` and at batch 1, and return the max
    |difference| from ``expected``."""
    import onnxruntime

    # The dynamo exporter (torch.export -> onnxscript); the batch dimension stays dynamic.
    program = torch.onnx.export(
        model,
        (x,),
        input_names=["images"],
        output_names=["logits"],
        dynamo=True,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        verbose=False,
    )
    for key, value in metadata.items():
        program.model.metadata_props[f"{ONNX_PREFIX}{key}"] = value
    program.save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    one = torch.from_numpy(session.run(None, {"images": x[:1].numpy()})[0])  # another batch size, same file
    diff1 = (one - expected[:1]).abs().max().item()
    if not diff1 <= 1e-4:
        raise CnnzooError(f"exported ONNX model disagrees at batch size 1 (max |difference| {diff1:.3g})")
    return (got.float() - expected.float()).abs().max().item()
