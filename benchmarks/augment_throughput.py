"""Images per second of the streaming loader with each training augmentation (``--augment NAME``).

The folder: ImageNet-sized JPEGs made from real images, so decoding costs what it would on ImageNet: the first
``--images`` CIFAR-10 (JPEG q75) test images of ``../shared/data/cifar10-jpeg.tar.gz``, upscaled (bicubic) to
500x375 (ImageNet's most common size) and saved as JPEG quality 90 under ``--folder`` (made once; random
500x375 images when the archive is absent). ``load_data(folder, augment=NAME, image_size=224, batch_size=64,
val_size=0, num_workers=2)``, then whole training epochs of ``StreamLoader.epoch`` (decode in the workers, the
transform, collate, normalise on the CPU); the best of ``--epochs`` epochs after one warm-up epoch, each epoch
starting its own workers as training does. Also timed: building the loaders (for ``alexnet``/``vgg``/``resnet`` it
includes ``pixel_pca`` over 256 images).

Run:  python benchmarks/augment_throughput.py             (writes docs/results/augment_throughput.json)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnnzoo.data import load_data

ARCHIVE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
NAMES = ("none", "standard", "alexnet", "vgg", "googlenet", "resnet")


def make_folder(root: Path, count: int) -> str:
    """``root/train/<class>/*.jpg``: ``count`` 500x375 JPEGs (q90); returns what the images are made from."""
    if (root / "train").is_dir() and len(list((root / "train").rglob("*.jpg"))) == count:
        return "CIFAR-10 (JPEG q75) test images upscaled to 500x375, JPEG q90 (made before)"
    made, source = 0, "random 500x375 images, JPEG q90"
    if ARCHIVE.is_file():
        source = "CIFAR-10 (JPEG q75) test images upscaled to 500x375, JPEG q90"
        taken: dict[str, int] = {}  # an equal share of each class (the archive is ordered by class)
        with tarfile.open(ARCHIVE) as tar:
            for member in tar:
                parts = Path(member.name).parts
                if made == count or not member.isfile() or len(parts) < 3 or parts[-3] != "test":
                    continue
                if taken.get(parts[-2], 0) >= -(-count // 10):
                    continue
                taken[parts[-2]] = taken.get(parts[-2], 0) + 1
                image = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
                (root / "train" / parts[-2]).mkdir(parents=True, exist_ok=True)
                image.resize((500, 375), Image.BICUBIC).save(root / "train" / parts[-2] / parts[-1], quality=90)
                made += 1
    rng = np.random.default_rng(0)
    for i in range(made, count):
        (root / "train" / str(i % 10)).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "train" / str(i % 10) / f"{i}.jpg", quality=90)
    return source


def measure(folder: Path, name: str, *, batch: int, workers: int, epochs: int) -> dict:
    t0 = time.perf_counter()
    b = load_data(str(folder), augment=name, image_size=224, batch_size=batch, val_size=0, num_workers=workers)
    build = time.perf_counter() - t0
    rates = []
    for e in range(epochs + 1):  # epoch 0 warms up (page cache, first worker start)
        t0, n = time.perf_counter(), 0
        for images, _ in b.train.epoch(e):
            n += len(images)
        if e:
            rates.append(n / (time.perf_counter() - t0))
    return {"augment": name, "images_per_epoch": n, "images_per_s": round(max(rates), 1), "build_s": round(build, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", default="/tmp/cnnzoo-augment-bench")
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--out", default="docs/results/augment_throughput.json")
    args = p.parse_args()
    folder = Path(args.folder)
    source = make_folder(folder, args.images)
    rows = []
    for name in NAMES:
        rows.append(measure(folder, name, batch=args.batch, workers=args.workers, epochs=args.epochs))
        print(rows[-1], flush=True)
    result = {
        "folder": source,
        "images": args.images,
        "batch": args.batch,
        "workers": args.workers,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("| augment | images/s | loader build (s) |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['augment']} | {r['images_per_s']:.0f} | {r['build_s']:.2f} |")


if __name__ == "__main__":
    main()
