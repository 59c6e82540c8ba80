"""The run directory's rules: a run directory is one unit, and nothing outside it is ever touched.

- It is recognised by its marker file ``cnnzoo-run.json``, which holds the run's id; every checkpoint's meta holds
  the same id. ``--out`` writes only into a new folder, an empty one, or a run directory of cnnzoo's own (one that
  holds results only with ``--overwrite``, and then only after the new run's data, model and config are built:
  :func:`claim`, which sets the replaced run aside until the new run's first ``last.pt`` exists).
- Every file in it is written atomically (:mod:`cnnzoo.atomic`); the temporary files a kill leaves are removed at
  the next start or resume (:func:`remove_temp_files`).
- A resume takes its config from ``last.pt`` and refuses a directory whose marker, checkpoints or ``config.toml``
  disagree with it (:func:`open_run`).
- One writer at a time: :mod:`cnnzoo.train.rundir_lock`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnzoo.atomic import read_regular, temp_files, write_atomic
from cnnzoo.errors import CnnzooError, DiskError
from cnnzoo.train import checkpoint, rundir_lock
from cnnzoo.train.config import RESUME_OVERRIDES, TrainConfig, read_config, write_config

if TYPE_CHECKING:
    from cnnzoo.train.state import RunState

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


def remove_temp_files(run_dir: Path) -> None:
    """What atomic writes interrupted by a kill left behind (and the fixed-name temporary file of older versions)."""
    for path in [*temp_files(run_dir, RUN_FILES), run_dir / "metrics.jsonl.tmp"]:
        path.unlink(missing_ok=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def set_aside(run_dir: Path) -> Path | None:
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


def put_back(run_dir: Path, aside: Path) -> None:
    """Remove whatever the new run wrote and move the replaced run back, in an order that a kill at any point
    leaves recoverable by :func:`recover_replaced`."""
    if (aside / _ASIDE_DONE).exists():
        remove_temp_files(run_dir)
        for name in (*RUN_FILES, "tensorboard"):
            _remove(run_dir / name)
        (aside / _ASIDE_DONE).unlink()
    for path in aside.iterdir():
        os.replace(path, run_dir / path.name)
    aside.rmdir()


def drop_aside(run_dir: Path) -> None:
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
        drop_aside(run_dir)
    else:
        put_back(run_dir, aside)


def claim(run: RunState, *, overwrite: bool = False, held: contextlib.ExitStack | None = None) -> Path | None:
    """Make ``run.run_dir`` this new run's (rank 0, after :func:`build_run` succeeded): lock it (into ``held``), check
    it again, set a previous run's files aside (:func:`set_aside`; the caller drops or restores them), then write
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
    remove_temp_files(run_dir)
    aside = set_aside(run_dir)
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
            put_back(run_dir, aside)
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


def remove_new_folder(run_dir: Path) -> None:
    """Undo a new run that failed before its first checkpoint in a folder it created: its files, then the folder
    (kept if anything else appeared in it meanwhile)."""
    remove_temp_files(run_dir)
    for name in (*RUN_FILES, "tensorboard", rundir_lock.LOCK_NAME):
        with contextlib.suppress(OSError):
            _remove(run_dir / name)
    with contextlib.suppress(OSError):
        run_dir.rmdir()


def default_out(cfg: TrainConfig) -> Path:
    """``runs/<model>-<data>-<YYYYmmdd-HHMMSS>`` (a folder dataset is named by its last path component)."""
    data = Path(cfg.data).name or "data"
    return Path("runs") / f"{cfg.model}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"
