"""Training on tiny generated image folders: small images (device-resident) and large ones (streamed)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from cnnzoo.errors import CnnzooError
from cnnzoo.train.api import train
from cnnzoo.train.tools import evaluate_run, predict

CLASSES = ("red", "green", "blue")


def _folder(root, size: int, per_class: dict[str, int]):
    """root/<split>/<class>/<i>.png: a noisy image dominated by its class's colour (learnable in a few steps)."""
    g = torch.Generator().manual_seed(0)
    for split, count in per_class.items():
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                x = torch.randint(0, 80, (size, size, 3), generator=g, dtype=torch.uint8)
                x[..., c] = 200
                Image.fromarray(x.numpy()).save(root / split / name / f"{i}.png")
    return root


@pytest.mark.parametrize("size", [32, 72])  # 32 px: decoded once onto the device; 72 px: streamed from the files
def test_train_on_an_image_folder(tmp_path, size):
    data = _folder(tmp_path / "folder", size, {"train": 12, "test": 4})
    out = tmp_path / "run"
    report = train(
        "resnet20", str(data), out=out, epochs=2, batch_size=8, val_size=6, lr=0.05, device="cpu", threads=2, quiet=True
    )
    assert report["classes"] == sorted(CLASSES) and report["test"]["n"] == 12  # classes: sorted folder names
    assert set(report["test"]["per_class"]) == set(CLASSES)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((out / "report.json").read_text())["test"]["top1"] == report["test"]["top1"]
    (result,) = predict(out, [data / "test" / "blue" / "0.png"], top_k=3)
    assert sorted(name for name, _ in result["top"]) == sorted(CLASSES)
    # The folder changes after training: resuming or evaluating on it is refused, saying how it differs.
    for split in ("train", "test"):
        shutil.rmtree(data / split / "blue")
    with pytest.raises(CnnzooError, match="not what the run was trained on .*missing classes 'blue'"):
        train(resume=out, epochs=3, quiet=True)
    with pytest.raises(CnnzooError, match="missing classes 'blue'"):
        evaluate_run(out, device="cpu")
