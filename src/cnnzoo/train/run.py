"""One training run from a resolved :class:`TrainConfig` to a finished run directory.

``run_training`` checks everything it can before any work (arguments, the ``--out`` folder), builds the run in
memory (:func:`build_run`: data, model, optimizer, EMA), only then claims the run directory, or continues the run
from its ``last.pt``, calls :func:`cnnzoo.train.loop.fit`, then (unless stopped) draws ``curves.png`` and tests the
best checkpoint once on the test split: ``report.json`` and ``confusion.png``. ``model_from_checkpoint``
rebuilds a trained model (:func:`cnnzoo.train.trained.load_checkpoint`: for ``cnnzoo eval``, ``predict``, ``export``).

A run directory is one unit, and nothing outside it is ever touched:

- it is recognised by its marker file ``cnnzoo-run.json``, which holds the run's id; every checkpoint's meta holds
  the same id. ``--out`` writes only into a new folder, an empty one, or a run directory of cnnzoo's own (one that
  holds results only with ``--overwrite``, and then only after the new run's data, model and config are built);
- every file in it is written atomically (:mod:`cnnzoo.atomic`); the temporary files a kill leaves are removed at
  the next start or resume;
- a resume takes its config from ``last.pt`` and refuses a directory whose marker, checkpoints or ``config.toml``
  disagree with it, and data that differs from what the run was trained on (:func:`check_data_matches`).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import random
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnzoo.atomic import read_regular, temp_files, write_atomic
from cnnzoo.data.bundle import data_counts
from cnnzoo.errors import CnnzooError, DiskError
from cnnzoo.models import create_model, get_model_info
from cnnzoo.train import checkpoint, finetune, rundir_lock
from cnnzoo.train.config import RESUME_OVERRIDES, TrainConfig, config_from_dict, read_config, write_config
from cnnzoo.train.engine import (
    GraphedStep,
    backend_settings,
    lr_table,
    make_ema,
    resolve_device,
    set_dropout,
    setup_training,
)
from cnnzoo.train.estimate import announce as announce_estimate
from cnnzoo.train.loop import Dist, RunState, evaluate, fit, load_state, write_metrics


def default_out(cfg: TrainConfig) -> Path:
    """``runs/<model>-<data>-<YYYYmmdd-HHMMSS>`` (a folder dataset is named by its last path component)."""
    data = Path(cfg.data).name or "data"
    return Path("runs") / f"{cfg.model}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"


def init_distributed(cfg: TrainConfig) -> tuple[Dist, torch.device]:
    """Join the DDP job described by torchrun's environment (``WORLD_SIZE`` > 1), else a single process.

    Backend: NCCL on CUDA (one GPU per process, ``LOCAL_RANK``), gloo on the CPU.
    """
    world = env_int("WORLD_SIZE", 1, 1)
    rank = env_int("RANK", 0, 0)
    local_rank = env_int("LOCAL_RANK", 0, 0)
    device = resolve_device(cfg.device)
    if world <= 1:
        if rank != 0:
            raise CnnzooError(f"RANK={rank} with WORLD_SIZE={world}: a rank must be below the world size (unset RANK)")
        return Dist(), device
    if rank >= world:
        raise CnnzooError(f"RANK={rank} is not below WORLD_SIZE={world} (start several processes with torchrun)")
    if not os.environ.get("MASTER_ADDR") or not os.environ.get("MASTER_PORT"):
        raise CnnzooError(
            f"WORLD_SIZE={world} without MASTER_ADDR and MASTER_PORT: start several processes with torchrun "
            "(or unset WORLD_SIZE to train in one process)"
        )
    env_int("MASTER_PORT", 0, 1, 65535)
    import torch.distributed as tdist

    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise CnnzooError(f"LOCAL_RANK={local_rank}, but this machine has {torch.cuda.device_count()} GPU(s)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(tdist.get_rank(), tdist.get_world_size()), device


def env_int(name: str, default: int, minimum: int, maximum: int = 2**31 - 1) -> int:
    """An integer environment variable (torchrun's ``WORLD_SIZE``, ``RANK``, ...) checked to lie in
    ``[minimum, maximum]``; anything else is one line naming it."""
    text = os.environ.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        value = int(text.strip())
    except ValueError:
        value = None
    if value is None or not minimum <= value <= maximum:
        raise CnnzooError(f"environment variable {name}={text[:40]!r}: expected an integer in [{minimum}, {maximum}]")
    return value


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), Python's ``random`` and NumPy's global generator."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def build_model(cfg: TrainConfig, num_classes: int, in_channels: int) -> nn.Module:
    """The registered model with the config's model-level options (zero-init residual, auxiliary classifiers,
    dropout override)."""
    options: dict = {"zero_init_residual": True} if cfg.zero_init_residual else {}
    if cfg.aux_logits is not None:
        if "aux_logits" not in inspect.signature(get_model_info(cfg.model).builder).parameters:
            raise CnnzooError(f"--aux-logits: {cfg.model} has no auxiliary classifiers (the GoogLeNets have)")
        options["aux_logits"] = cfg.aux_logits
    options.update(finetune.model_options(cfg))  # GoogLeNet's transform_input for torchvision's weights
    model = create_model(cfg.model, num_classes=num_classes, in_channels=in_channels, **options)
    if cfg.dropout is not None and set_dropout(model, cfg.dropout) == 0:
        raise CnnzooError(f"--dropout given but {cfg.model} has no dropout layers")
    return model


def load_bundle(cfg: TrainConfig, device: torch.device, dist: Dist, *, augment: bool = True):
    """The data for ``cfg`` on ``device``; the global batch is split evenly over the DDP ranks."""
    from cnnzoo.data import load_data

    val_size = cfg.val_size
    if val_size is not None and val_size >= 1:
        val_size = int(val_size)  # a count of images, not a fraction
    per_rank = cfg.batch_size // dist.world_size
    return load_data(
        cfg.data,
        data_dir=cfg.data_dir,
        download=cfg.download or None,
        batch_size=per_rank,
        eval_batch_size=cfg.eval_batch_size or 2 * per_rank,
        device=device,
        image_size=cfg.image_size,
        in_channels=cfg.in_channels,
        val_size=val_size,
        seed=cfg.seed,
        augment=cfg.augment if augment else "none",
        cutout=cfg.cutout,
        rank=dist.rank,
        world_size=dist.world_size,
        subset=cfg.subset,
        mean=tuple(cfg.mean) or None,  # the --weights' normalisation (finetune.start_config), else the data's
        std=tuple(cfg.std) or None,
        auto_augment=cfg.auto_augment if augment else None,
        random_erase=cfg.random_erase if augment else 0.0,
    )


def _open_writer(run: RunState):
    """A TensorBoard SummaryWriter on ``run_dir/tensorboard`` when tensorboard is installed (the ``tensorboard``
    extra), else None. A resumed run purges the events logged after its checkpoint's step (a kill after the last
    save), so no step appears twice."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    purge = run.step + 1 if run.step > 0 else None  # events at steps <= run.step match the checkpoint: kept
    return SummaryWriter(log_dir=str(run.run_dir / "tensorboard"), purge_step=purge)


def log_final(writer, run: RunState, report: dict[str, Any]) -> None:
    """The run's hyperparameters with its test metrics (TensorBoard's hparams dashboard), written into the run's own
    event file (``add_hparams`` would open a timestamped subfolder), and curves.png / confusion.png as images."""
    from PIL import Image
    from torch.utils.tensorboard.summary import hparams

    hp = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in run.cfg.to_dict().items()}
    test = report["test"]
    metrics = {"hparam/test_top1": test["top1"], "hparam/test_top5": test["top5"], "hparam/test_loss": test["loss"]}
    metrics["hparam/best_val_top1"] = report["best_val_top1"] if report["best_val_top1"] is not None else float("nan")
    for summary in hparams(hp, metrics):
        writer.file_writer.add_summary(summary)
    for tag, value in metrics.items():
        writer.add_scalar(tag, value, run.step)
    for name in ("curves", "confusion"):
        path = run.run_dir / f"{name}.png"
        if path.is_file():
            with Image.open(path) as image:
                writer.add_image(name, np.asarray(image.convert("RGB")), run.step, dataformats="HWC")
    writer.flush()


# --- the run directory ---------------------------------------------------------------------------------------------

MARKER = "cnnzoo-run.json"
# Every file a run (or an export of it) writes into its directory: what --overwrite removes.
RUN_FILES = (
    MARKER,
    "config.toml",
    "metrics.jsonl",
    "last.pt",
    "best.pt",
    "curves.png",
    "report.json",
    "confusion.png",
    "model.onnx",
    "model.ts.pt",
)
FINAL_FILES = ("report.json", "curves.png", "confusion.png")  # written by finish(), at the end of a run
RESULTS = ("metrics.jsonl", "last.pt", "best.pt", "report.json")  # a run that holds any is kept unless --overwrite
# A run replaced with --overwrite waits here until the new run has written its first last.pt (then it is removed;
# on any failure before that it is put back). ``.complete`` inside it says the set-aside itself finished.
ASIDE = ".cnnzoo-replaced"
_ASIDE_DONE = ".complete"
# Not a run's results: the writer's lock and a replaced run kept aside (an "empty" folder may hold them).
BOOKKEEPING = (rundir_lock.LOCK_NAME, ASIDE, ASIDE + ".drop")


def read_marker(run_dir: Path) -> dict[str, Any] | None:
    """The marker of a cnnzoo run directory (``{"cnnzoo_run": 1, "id": ..., ...}``), or None if it has no valid one."""
    try:
        marker = json.loads(read_regular(run_dir / MARKER, 1 << 16, "run marker").decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, CnnzooError):
        return None
    if not isinstance(marker, dict) or marker.get("cnnzoo_run") != 1 or not isinstance(marker.get("id"), str):
        return None
    return marker


def check_out(run_dir: Path, *, overwrite: bool = False) -> None:
    """Refuse, before any work, a destination a new run may not write into: a file, a folder that is not writable,
    a non-empty folder that is not a cnnzoo run directory, or (without ``overwrite``) a run that holds results."""
    if run_dir.exists() and not run_dir.is_dir():
        raise CnnzooError(f"--out {run_dir} is a file, not a folder: name a new or empty folder for the run")
    existing = next((p for p in (run_dir, *run_dir.parents) if p.exists()), Path("."))
    if not existing.is_dir():  # a path through a file: a mistake in the argument, not a permission
        raise CnnzooError(f"--out {run_dir}: cannot write in {existing}, a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DiskError(f"--out {run_dir}: cannot write in {existing} (permission denied)")
    if not run_dir.is_dir() or not any(p.name not in BOOKKEEPING for p in run_dir.iterdir()):
        return
    if read_marker(run_dir) is None:
        raise CnnzooError(
            f"--out {run_dir} holds other files and is not a cnnzoo run directory (no {MARKER}): "
            "name a new or empty folder"
        )
    if not overwrite and any((run_dir / name).exists() for name in RESULTS):
        raise CnnzooError(f"{run_dir} already holds a run: --resume {run_dir}, --overwrite, or another --out")


def check_seeds_out(root: Path, seeds: list[int], *, overwrite: bool = False) -> None:
    """:func:`check_out` for each ``root/seed-K`` of a multi-seed run, and ``root`` may hold nothing else."""
    if root.exists() and not root.is_dir():
        raise CnnzooError(f"--out {root} is a file, not a folder: name a new or empty folder for the runs")
    if root.is_dir():
        seed_run = re.compile(r"seed-\d+")
        others = sorted(p.name for p in root.iterdir() if p.name != "seeds.json" and not seed_run.fullmatch(p.name))
        if others:
            raise CnnzooError(f"--out {root} holds files other than seed runs ({others[0]}): name a new or empty one")
        if (root / "seeds.json").exists() and not overwrite:
            raise CnnzooError(f"{root} already holds a multi-seed run: --overwrite or another --out")
    for seed in seeds:
        check_out(root / f"seed-{seed}", overwrite=overwrite)


def _remove_temp_files(run_dir: Path) -> None:
    """What atomic writes interrupted by a kill left behind (and the fixed-name temporary file of older versions)."""
    for path in [*temp_files(run_dir, RUN_FILES), run_dir / "metrics.jsonl.tmp"]:
        path.unlink(missing_ok=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _set_aside(run_dir: Path) -> Path | None:
    """Move a previous run's files into ``run_dir/ASIDE`` (renames in one filesystem: nothing is copied or lost);
    None when there is nothing to keep."""
    names = [n for n in (*RUN_FILES, "tensorboard") if os.path.lexists(run_dir / n)]
    if not names:
        return None
    aside = run_dir / ASIDE
    aside.mkdir()
    for name in names:
        os.replace(run_dir / name, aside / name)
    (aside / _ASIDE_DONE).touch()  # from here on the run directory holds the new run
    return aside


def _put_back(run_dir: Path, aside: Path) -> None:
    """Remove whatever the new run wrote and move the replaced run back, in an order that a kill at any point
    leaves recoverable by :func:`recover_replaced`."""
    if (aside / _ASIDE_DONE).exists():
        _remove_temp_files(run_dir)
        for name in (*RUN_FILES, "tensorboard"):
            _remove(run_dir / name)
        (aside / _ASIDE_DONE).unlink()
    for path in aside.iterdir():
        os.replace(path, run_dir / path.name)
    aside.rmdir()


def _drop_aside(run_dir: Path) -> None:
    """The new run has its first checkpoint: the replaced run goes for good."""
    aside, drop = run_dir / ASIDE, run_dir / (ASIDE + ".drop")
    if aside.is_dir():
        os.replace(aside, drop)
    shutil.rmtree(drop, ignore_errors=True)


def recover_replaced(run_dir: Path) -> None:
    """After a writer was killed in the middle of ``--overwrite`` (call with the lock held): the replaced run is
    removed if the new run had written its ``last.pt``, else put back; a half-finished set-aside is undone."""
    shutil.rmtree(run_dir / (ASIDE + ".drop"), ignore_errors=True)
    aside = run_dir / ASIDE
    if not aside.is_dir():
        return
    if (aside / _ASIDE_DONE).exists() and (run_dir / "last.pt").is_file():
        _drop_aside(run_dir)
    else:
        _put_back(run_dir, aside)


def claim(run: RunState, *, overwrite: bool = False, held: contextlib.ExitStack | None = None) -> Path | None:
    """Make ``run.run_dir`` this new run's (rank 0, after :func:`build_run` succeeded): lock it (into ``held``), check
    it again, set a previous run's files aside (:func:`_set_aside`; the caller drops or restores them), then write
    the marker with a fresh run id and ``config.toml``. Returns the folder holding the replaced run, or None."""
    run_dir = run.run_dir
    check_out(run_dir, overwrite=overwrite)  # again: the folder may have changed while the data loaded
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DiskError(f"--out {run_dir}: cannot create the folder ({e.strerror})") from None
    if held is not None:
        held.enter_context(rundir_lock.hold(run_dir))
        recover_replaced(run_dir)
        check_out(run_dir, overwrite=overwrite)  # under the lock: what another writer did before it is seen
    _remove_temp_files(run_dir)
    aside = _set_aside(run_dir)
    try:
        run.run_id = uuid.uuid4().hex
        marker = {
            "cnnzoo_run": 1,
            "id": run.run_id,
            "model": run.cfg.model,
            "data": run.cfg.data,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_atomic(run_dir / MARKER, json.dumps(marker, indent=2) + "\n")
        write_config(run.cfg, run_dir / "config.toml")
    except BaseException:
        if aside is not None:
            _put_back(run_dir, aside)
        raise
    return aside


def open_run(run_dir: str | Path) -> dict[str, Any]:
    """The ``last.pt`` of a run directory to resume, after checking that its files are one run's: the marker's id is
    the checkpoints' and ``config.toml`` agrees with the checkpoint's config (except the settings a resume may
    change, ``RESUME_OVERRIDES``: there the checkpoint's values are the run's)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CnnzooError(f"--resume {run_dir}: no such run directory")
    marker = read_marker(run_dir)
    if marker is None:
        raise CnnzooError(f"--resume {run_dir}: not a cnnzoo run directory (no valid {MARKER})")
    if not (run_dir / "last.pt").is_file():
        raise CnnzooError(
            f"--resume {run_dir}: no last.pt (the run stopped before its first checkpoint): "
            f"train it again with --out {run_dir}"
        )
    ckpt = checkpoint.load(run_dir / "last.pt", resume=True)
    if ckpt["meta"].get("run_id") != marker["id"]:
        raise CnnzooError(f"--resume {run_dir}: last.pt is not the checkpoint of the run in {MARKER}")
    if ckpt["best"]["epoch"] >= 1:  # finish() tests best.pt: it must be there, and this run's
        best = run_dir / "best.pt"
        if not best.is_file() or checkpoint.load(best)["meta"].get("run_id") != marker["id"]:
            raise CnnzooError(f"--resume {run_dir}: best.pt is missing or not this run's: the run cannot be finished")
    stored = read_config(run_dir / "config.toml").to_dict()
    differ = sorted(k for k, v in ckpt["config"].items() if k not in RESUME_OVERRIDES and stored.get(k) != v)
    if differ:
        raise CnnzooError(
            f"--resume {run_dir}: config.toml disagrees with last.pt on {', '.join(differ)} (edited by hand?); "
            "a run's files are not edited: restore config.toml, or start a new run with the new settings"
        )
    return ckpt


def check_data_matches(meta: dict[str, Any], data, where: str | Path) -> None:
    """Refuse data (a :class:`~cnnzoo.data.DataBundle`) that differs from what a checkpoint was trained on (its
    ``meta``: class names, channels, image size, normalisation), in one line that says how it differs."""
    diffs = []
    then, now = list(meta["classes"]), list(data.classes)
    if then != now:
        missing, new = [c for c in then if c not in now], [c for c in now if c not in then]
        if not (missing or new):
            diffs.append("the same classes in another order")
        diffs += [
            f"{label} {_names(names)}" for label, names in (("missing classes", missing), ("new classes", new)) if names
        ]
    if meta["in_channels"] != data.in_channels:
        diffs.append(f"{data.in_channels} channels, not {meta['in_channels']}")
    if meta["image_size"] != data.image_size:
        diffs.append(f"image size {data.image_size}, not {meta['image_size']}")
    then_counts, now_counts = meta.get("data_counts"), data_counts(data)
    if isinstance(then_counts, dict):  # what the data holds, whatever the normalisation (--mean/--std fix it)
        for key in ("train", "val", "test"):
            if then_counts.get(key) != now_counts.get(key):
                diffs.append(f"{now_counts.get(key)} {key} images, not {then_counts.get(key)}")
        if then_counts.get("sizes") != now_counts.get("sizes"):
            diffs.append("images of other sizes")
    for key in ("mean", "std"):
        a, b = [float(v) for v in meta[key]], [float(v) for v in getattr(data, key)]
        if len(a) != len(b) or any(abs(x - y) > 1e-6 * max(1.0, abs(x)) for x, y in zip(a, b, strict=True)):
            diffs.append(f"normalisation {key} {_floats(b)}, not {_floats(a)}")
    if diffs:
        raise CnnzooError(f"{where}: the data is not what the run was trained on ({meta['data']}): {'; '.join(diffs)}")


def _names(names: list[str], most: int = 3) -> str:
    shown = ", ".join(repr(n) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _floats(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


# --- one run -------------------------------------------------------------------------------------------------------


def check_setup(cfg: TrainConfig, device: torch.device, dist: Dist) -> None:
    """Refuse, before any work, what this device or process group cannot run."""
    if cfg.batch_size % dist.world_size:
        raise CnnzooError(f"batch size {cfg.batch_size} is not divisible by the {dist.world_size} processes")
    if cfg.sync_bn and device.type != "cuda":
        raise CnnzooError("--sync-bn needs CUDA (torch's SyncBatchNorm does not run on the CPU)")
    if cfg.cuda_graph and dist.world_size > 1:
        raise CnnzooError(
            "--cuda-graph trains in one process (DDP's gradient all-reduce is not captured): drop it under torchrun"
        )


def build_run(cfg: TrainConfig, dist: Dist, device: torch.device, run_dir: Path | None = None, log=print) -> RunState:
    """Everything a run needs in memory, nothing written: seeds, data, model, :func:`setup_training` (the set-up
    ``cnnzoo compare`` times), EMA and the ``--cuda-graph`` step. Call inside :func:`backend_settings`."""
    seed_everything(cfg.seed)
    data = load_bundle(cfg, device, dist)
    model = build_model(cfg, data.num_classes, data.in_channels)
    finetune.freeze(model, cfg, log)  # --freeze, --freeze-until: before the optimizer is made
    net, optimizer, ctx = setup_training(model, cfg, device, world_size=dist.world_size)
    ema = make_ema(model, cfg.ema) if cfg.ema > 0 else None
    if cfg.early_stop and data.val.num_samples == 0:
        raise CnnzooError(f"--early-stop {cfg.early_stop} needs a validation split, and {data.name} has none here")
    run = RunState(cfg, data, model, net, optimizer, ctx, run_dir=run_dir, ema=ema, dist=dist, log=log)
    if cfg.cuda_graph:
        run.graph = GraphedStep(net, optimizer, ctx, ema=ema, lrs=lr_table(cfg, run.steps_per_epoch, device))
        if device.type != "cuda":
            log(f"--cuda-graph: no CUDA graphs on {device}; the same step runs uncaptured")
    return run


def run_training(
    cfg: TrainConfig,
    run_dir: str | Path | None = None,
    *,
    resume: dict[str, Any] | None = None,
    stop_after: int | None = None,
    overwrite: bool = False,
    log=print,
    estimate: bool = True,
) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir``, or continue the run there from ``resume`` (its ``last.pt``, as
    :func:`open_run` returns it); returns the report. ``estimate``: time a few steps first and log the
    ``estimate:`` line (a quiet run, whose line nobody reads, skips the probe).

    ``overwrite``: replace a previous run in ``run_dir`` (after the new one is built) instead of refusing.
    An interrupted run returns ``{"interrupted": True, "signal": ..., "run_dir": ..., "step": ...}`` with ``last.pt``
    written (``signal``: the number of the signal that stopped it, None for ``stop_after``).
    """
    dist, device = init_distributed(cfg)
    log = log if dist.main else (lambda *a, **k: None)
    if resume is None:
        cfg = finetune.start_config(cfg)  # the --weights' preprocessing, unless given
    run_dir = Path(run_dir) if run_dir is not None else default_out(cfg)
    check_setup(cfg, device, dist)
    if resume is None and (not run_dir.is_dir() or read_marker(run_dir) is None):
        check_out(run_dir, overwrite=overwrite)  # a stranger's folder is refused before a lock file is put in it
    with contextlib.ExitStack() as held:
        if dist.main and run_dir.is_dir():  # one writer at a time, from before the first check to the end
            held.enter_context(rundir_lock.hold(run_dir))
            if resume is None:
                recover_replaced(run_dir)
                check_out(run_dir, overwrite=overwrite)  # under the lock: a writer at work is named first
        return _train_locked(
            cfg,
            run_dir,
            dist,
            device,
            held,
            resume=resume,
            stop_after=stop_after,
            overwrite=overwrite,
            log=log,
            estimate=estimate,
        )


def _train_locked(cfg, run_dir, dist, device, held, *, resume, stop_after, overwrite, log, estimate) -> dict[str, Any]:
    """:func:`run_training` once the run directory is this process's (rank 0 holds its lock, or takes it at
    :func:`claim`). A run replaced with ``--overwrite`` is kept aside until the new run's first ``last.pt`` exists
    and put back on any failure before that."""
    aside, fresh = None, False
    with backend_settings(cfg, device):
        run = build_run(cfg, dist, device, run_dir, log)
        if resume is not None:
            continue_run(run, resume)
        else:
            if cfg.weights:  # a new run's start (a resumed one has its weights in last.pt)
                cfg.weights_sha256 = finetune.load_start(run.model, cfg, log)
            fresh = dist.main and not run_dir.exists()
            if dist.main:
                aside = claim(run, overwrite=overwrite, held=held)
            _announce(run)
        if estimate:
            announce_estimate(run, stop_after=stop_after)  # before the first step: how long the whole run will take
        writer = _open_writer(run) if dist.main else None
        try:
            try:
                result = fit(run, stop_after=stop_after, writer=writer)
            except BaseException as e:
                if resume is None and fresh and not _has_own_last(run):
                    if writer is not None:
                        writer.close()
                        writer = None
                    _remove_new_folder(run_dir)  # nothing worth keeping: the folder goes as it came
                if aside is not None and not _has_own_last(run):
                    if writer is not None:
                        writer.close()
                        writer = None
                    _put_back(run_dir, aside)
                    if isinstance(e, CnnzooError):
                        back = CnnzooError(f"{e}; the run it was to replace is back in {run_dir}, as it was")
                        back.exit_code = e.exit_code
                        raise back from None
                raise
            finally:
                if aside is not None and _has_own_last(run):
                    _drop_aside(run_dir)  # the new run has its first checkpoint: it replaces the old one now
            if result["interrupted"]:
                where = {"run_dir": str(run_dir), "epoch": run.epoch, "batch": run.batch, "step": run.step}
                return {"interrupted": True, "reason": result["reason"], "signal": result["signal"], **where}
            return finish(run, writer, early_stopped=result["early_stopped"])
        finally:
            if writer is not None:
                writer.close()


def _remove_new_folder(run_dir: Path) -> None:
    """Undo a new run that failed before its first checkpoint in a folder it created: its files, then the folder
    (kept if anything else appeared in it meanwhile)."""
    _remove_temp_files(run_dir)
    for name in (*RUN_FILES, "tensorboard", rundir_lock.LOCK_NAME):
        with contextlib.suppress(OSError):
            _remove(run_dir / name)
    with contextlib.suppress(OSError):
        run_dir.rmdir()


def _has_own_last(run: RunState) -> bool:
    """Whether the new run has written its ``last.pt`` (the replaced run's was moved aside by :func:`claim`, so any
    ``last.pt`` in the folder is the new run's)."""
    return (run.run_dir / "last.pt").is_file()


def _announce(run: RunState) -> None:
    """One line: what trains on what, where, and into which folder."""
    d, n = run.data, run.dist.world_size
    n_params = sum(p.numel() for p in run.model.parameters())
    procs = f", {n} processes" if n > 1 else ""
    run.log(
        f"training {run.cfg.model} ({n_params:,} parameters) on {d.name} ({d.train.num_samples * n} train / "
        f"{d.val.num_samples * n} val images) on {run.ctx.device} [{run.ctx.precision}{procs}] -> {run.run_dir}"
    )
    if run.cfg.subset and d.val.num_samples > d.train.num_samples and run.cfg.eval_every == 1:
        # --subset leaves validation whole (a split size is part of what a figure means): say how to keep it cheap.
        run.log(
            f"note: validating {d.val.num_samples * n} images after every epoch of {d.train.num_samples * n}: "
            "--val-size N or --eval-every N keep evaluation in proportion"
        )


def continue_run(run: RunState, ckpt: dict[str, Any]) -> None:
    """Continue ``run`` from its ``last.pt`` (``ckpt``) at the exact batch it stopped, on the same data."""
    check_data_matches(ckpt["meta"], run.data, f"--resume {run.run_dir}")
    try:
        load_state(run, ckpt)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:  # a hand-edited or foreign last.pt
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CnnzooError(f"{run.run_dir / 'last.pt'}: cannot resume from it ({first})") from None
    if run.dist.main:
        _remove_temp_files(run.run_dir)
        for name in FINAL_FILES:  # a finished run resumed for more epochs: its old report no longer describes it
            (run.run_dir / name).unlink(missing_ok=True)
        write_config(run.cfg, run.run_dir / "config.toml")  # with what this resume changed (e.g. more epochs)
        write_metrics(run)  # drop any line written after the checkpoint
    run.log(f"resuming {run.run_dir} at epoch {run.epoch + 1}, batch {run.batch} (step {run.step})")


def finish(run: RunState, writer=None, *, early_stopped: int | None = None) -> dict[str, Any]:
    """After training: curves.png, then ONE test of the best checkpoint, on the whole test split (``--subset`` and
    ``--val-size`` never shrink it; the report says how many images): report.json and confusion.png, and into
    TensorBoard (``writer``) the hyperparameters with the test metrics and both figures. ``early_stopped``: the
    epoch after which ``--early-stop`` ended training (recorded in the report)."""
    from cnnzoo.train.plots import plot_confusion, plot_curves, training_objective

    run_dir, data = run.run_dir, run.data
    best = checkpoint.load(run_dir / "best.pt") if run.dist.main else None
    if run.dist.world_size > 1:  # every rank evaluates its shard of the test split with the same weights
        import torch.distributed as tdist

        holder = [best["model"] if best is not None else None]
        tdist.broadcast_object_list(holder, src=0)
        weights = holder[0]
    else:
        weights = best["model"]
    tester = build_model(run.cfg, data.num_classes, data.in_channels).to(run.ctx.device)
    tester.load_state_dict(weights)
    test = evaluate(tester, data.test, run.ctx, data.num_classes, dist=run.dist, confusion=True, label="test")
    last = run.history[-1]
    report = {
        "model": run.cfg.model,
        "data": data.name,
        "classes": list(data.classes),
        "test": {
            "loss": test["loss"],
            "top1": test["top1"],
            "top5": test["top5"],
            "n": test["n"],
            "protocol": "center",
            "per_class": dict(zip(data.classes, test["per_class"], strict=True)),
        },
        "best_epoch": run.best["epoch"],
        "best_val_top1": run.best["val_top1"],
        "best_weights": run.best["weights"],
        "selection": "best validation top-1" if data.val.num_samples else "last epoch (no validation split)",
        "tta": "flip" if run.cfg.tta_flip else None,
        "epochs": last["epoch"],
        "early_stopped": early_stopped is not None,
        "stopped_epoch": early_stopped,
        "steps": run.step,
        "warmup_end_step": run.warmup_end,  # the step at which the warm-up rule ended the warm-up (None: no rule)
        "final_val_top1": last["val_top1"],
        "train_seconds": round(run.train_seconds, 3),
        "parameters": sum(p.numel() for p in tester.parameters()),
        "seed": run.cfg.seed,
        "device": str(run.ctx.device),
        "precision": run.ctx.precision,
        # What "bf16"/"fp16" mean here (the CUDA default of --precision auto): the forward pass under autocast.
        "autocast": None
        if run.ctx.precision == "fp32"
        else f"{run.ctx.precision} autocast (weights, gradients and optimizer state in fp32)",
        "world_size": run.dist.world_size,
        "run_dir": str(run_dir),
        "start_weights": {"source": run.cfg.weights, "sha256": run.cfg.weights_sha256} if run.cfg.weights else None,
    }
    if run.dist.main:
        write_atomic(run_dir / "report.json", json.dumps(report, indent=2) + "\n")
        plot_curves(
            run.history,
            run_dir / "curves.png",
            model=run.cfg.model,
            data=data.name,
            run=run.cfg.label or run_dir.name,
            objective=training_objective(run.cfg),
            best_epoch=run.best["epoch"],
        )
        plot_confusion(
            test["confusion"],
            data.classes,
            run_dir / "confusion.png",
            title=f"{run.cfg.model} on {data.name}: test top-1 {100 * test['top1']:.2f}%",
        )
        if writer is not None:
            log_final(writer, run, report)
        run.log(format_report(report))
    if run.dist.world_size > 1:  # no rank returns before rank 0 has written the report
        import torch.distributed as tdist

        tdist.barrier()
    return report


def format_report(report: dict[str, Any]) -> str:
    """The test report as a few lines of text (percentages)."""
    t = report["test"]
    worst = sorted(t["per_class"].items(), key=lambda kv: kv[1])[:3]
    return (
        f"test ({t['n']} images, {report['model']} on {report['data']}, best epoch {report['best_epoch']} by "
        f"{report['selection']}{', flip TTA' if report.get('tta') else ''}"
        f"{', stopped early after epoch ' + str(report['stopped_epoch']) if report.get('early_stopped') else ''}):\n"
        f"  loss {t['loss']:.4f}   top-1 {100 * t['top1']:.2f}%   top-5 {100 * t['top5']:.2f}%\n"
        f"  weakest classes: {', '.join(f'{k} {100 * v:.1f}%' for k, v in worst)}\n"
        f"  run directory: {report['run_dir']} (report.json, metrics.jsonl, curves.png, confusion.png, best.pt)"
    )


# --- trained runs --------------------------------------------------------------------------------------------------


def model_from_checkpoint(ckpt: dict[str, Any], device: torch.device | str = "cpu") -> nn.Module:
    """The model a checkpoint was trained as, with its weights, in eval mode."""
    meta, cfg = ckpt["meta"], config_from_dict(ckpt["config"])
    model = build_model(cfg, meta["num_classes"], meta["in_channels"])
    checkpoint.load_weights(model, ckpt["model"], f"the {meta['model']} checkpoint")
    return model.to(device).eval()
