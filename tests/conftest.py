"""Shared fixtures. Everything runs on the CPU with tiny inputs; nothing touches the network."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CIFAR10_JPEG = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own decoded-data cache and data dir, so no test sees another's files or the user's."""
    root = tmp_path_factory.mktemp("cnnzoo-home")
    monkeypatch.setenv("CNNZOO_CACHE_DIR", str(root / "cache"))
    monkeypatch.setenv("CNNZOO_DATA_DIR", str(root / "data"))
    monkeypatch.setenv("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def cifar10_jpeg_slice(tmp_path_factory) -> Path:
    """A slice of the real CIFAR-10 (JPEG q75) folder from ../shared/data (the first 20 training and 5 test images
    of each class, as stored in the archive); skipped cleanly when the archive is absent.

    Only the slice is written out: unpacking all 60,000 files would cost the suite half a minute for 250 images.
    """
    if not CIFAR10_JPEG.exists():
        pytest.skip(f"{CIFAR10_JPEG} not present")
    out = tmp_path_factory.mktemp("cifar10-jpeg")
    wanted = {"train": 20, "test": 5}
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(CIFAR10_JPEG) as tar:
        for member in tar:
            parts = Path(member.name).parts
            # .../{train,test}/<class>/<image>, possibly under one top folder.
            if not member.isfile() or len(parts) < 3 or parts[-3] not in wanted:
                continue
            key = (parts[-3], parts[-2])
            if taken.get(key, 0) < wanted[parts[-3]]:
                taken[key] = taken.get(key, 0) + 1
                member.name = "/".join(parts[-3:])
                tar.extract(member, out, filter="data")
    return out


# --- training runs shared by the whole session ---------------------------------------------------------------------
# A training run is the costliest thing a test does; runs that several tests only read are trained once per session
# here. A test that changes a run works on a copy (`copy_run`).

# A few steps of resnet20 on 96 digits images: 3 steps of 32 per epoch, 48 validation images, 360 test images.
TINY = dict(subset=96, val_size=48, batch_size=32, eval_batch_size=64, device="cpu", threads=2)
# Everything a resumed run must reproduce exactly: EMA, mixup and cutmix draws, label smoothing (CPU, deterministic).
EXACT = dict(epochs=3, deterministic=True, ema=0.9, mixup=0.2, cutmix=1.0, label_smoothing=0.1, **TINY)


def _train_once(tmp_path_factory, name: str, **opts) -> tuple[Path, dict]:
    """Train resnet20 on digits into a session folder, with its own cache (the per-test one is not set up yet)."""
    from cnnzoo.train.api import train

    with pytest.MonkeyPatch.context() as mp:
        home = tmp_path_factory.mktemp(f"{name}-home")
        mp.setenv("CNNZOO_CACHE_DIR", str(home / "cache"))
        mp.setenv("CNNZOO_DATA_DIR", str(home / "data"))
        mp.setenv("MPLBACKEND", "Agg")
        torch.manual_seed(0)
        out = tmp_path_factory.mktemp("runs") / name
        report = train("resnet20", "digits", out=out, quiet=True, **opts)
    return out, report


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Path, dict]:
    """(run directory, report) of resnet20 trained 2 epochs on TINY digits with an EMA of decay 0.9. Read only."""
    return _train_once(tmp_path_factory, "tiny", epochs=2, ema=0.9, **TINY)


@pytest.fixture(scope="session")
def exact_run(tmp_path_factory) -> tuple[Path, dict]:
    """(run directory, report) of an uninterrupted EXACT run, what stopped and resumed runs must equal. Read only."""
    return _train_once(tmp_path_factory, "exact", **EXACT)


@pytest.fixture(scope="session")
def graphed_runs(tmp_path_factory) -> dict:
    """The EXACT run with ``--cuda-graph``, uninterrupted (``full``) and stopped after step 5 (``cut``, with
    ``cut_checkpoint``: its last.pt as the interruption left it) then resumed (``resumed``: the report). Read only."""
    from cnnzoo.train.api import train

    full_dir, full = _train_once(tmp_path_factory, "graphed-full", cuda_graph=True, **EXACT)
    cut_dir, cut = _train_once(tmp_path_factory, "graphed-cut", cuda_graph=True, stop_after=5, **EXACT)
    cut_checkpoint = torch.load(cut_dir / "last.pt", weights_only=True)
    with pytest.MonkeyPatch.context() as mp:
        home = tmp_path_factory.mktemp("graphed-resume-home")
        mp.setenv("CNNZOO_CACHE_DIR", str(home / "cache"))
        mp.setenv("CNNZOO_DATA_DIR", str(home / "data"))
        mp.setenv("MPLBACKEND", "Agg")
        resumed = train(resume=cut_dir, quiet=True)
    return {
        "full_dir": full_dir,
        "full": full,
        "cut_dir": cut_dir,
        "cut": cut,
        "cut_checkpoint": cut_checkpoint,
        "resumed": resumed,
    }


@pytest.fixture
def copy_run(tmp_path):
    """``copy_run(run_dir)``: a copy of a shared run directory that the test may change."""

    def copy(run_dir: Path) -> Path:
        return Path(shutil.copytree(run_dir, tmp_path / f"copy-of-{run_dir.name}"))

    return copy
