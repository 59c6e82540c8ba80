"""Shared fixtures. Everything runs on the CPU with tiny inputs; nothing touches the network."""

from __future__ import annotations

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
def cifar10_jpeg_dir(tmp_path_factory) -> Path:
    """The real CIFAR-10 (JPEG q75) image folder from ../shared/data, unpacked once; skipped cleanly when absent."""
    if not CIFAR10_JPEG.exists():
        pytest.skip(f"{CIFAR10_JPEG} not present")
    out = tmp_path_factory.mktemp("cifar10-jpeg")
    with tarfile.open(CIFAR10_JPEG) as tar:
        tar.extractall(out, filter="data")
    # The archive holds train/ and test/ (possibly under one top folder).
    root = out if (out / "train").is_dir() else next(p for p in out.iterdir() if (p / "train").is_dir())
    return root
