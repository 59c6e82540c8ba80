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
