"""Is the device-resident augmentation ever what training waits on?

Measures, on one device:

1. augmented images per second of cnnzoo's device-resident loader (``cnnzoo.data.device_loader.DeviceLoader``) on
   CIFAR-size data: CIFAR-10 (JPEG q75) decoded from ``../shared/data/cifar10-jpeg.tar.gz`` when it exists (unpacked
   once under the cache dir, decoded once into the uint8 cache), else random uint8 images of the same shape
   (50,000 x 3 x 32 x 32; the loader's cost does not depend on the pixel values). The training split after the
   5,000-image validation carve, batch 128 and 512, random crop (pad 4, zero) + flip, with and without cutout 16;
   every batch is the normalised channels_last float32 tensor the model gets. The best of three whole epochs after
   a warm-up epoch, ``torch.cuda.synchronize()`` before each clock read on CUDA.
2. training images per second of ``create_model("resnet18_cifar", num_classes=10)`` at batch 128: forward,
   cross-entropy, backward and an SGD step (momentum 0.9, weight decay 5e-4), channels_last, bf16 autocast on CUDA
   (as the trainer's fast recipes run; the faster the training, the harder the bar), fp32 on the CPU. Warm-up steps,
   then ``--steps`` timed steps on one fixed batch (the data path is excluded: this is what the model alone costs).
3. the ratio (1) / (2). The issue asks for at least 20x on a GPU.

Run:  python benchmarks/data_throughput.py --device cpu          (this machine: 2 cores)
      python benchmarks/data_throughput.py --device cuda --folder .data/cifar10   (gpu_session.sh's unpacked copy)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tarfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import cnnzoo
from cnnzoo.data import load_data
from cnnzoo.data.cache import cache_dir
from cnnzoo.data.device_loader import DeviceLoader

DEFAULT_ARCHIVE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cifar_images(archive: Path, workdir: Path, folder: Path | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The 45,000 training images (uint8 N, 3, 32, 32) and labels, from the JPEG archive or random of that shape."""
    if folder is None and not archive.is_file():
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (45_000, 3, 32, 32), dtype=torch.uint8, generator=g)
        return images, torch.randint(0, 10, (45_000,), generator=g), "random uint8 45,000 x 3 x 32 x 32"
    root = folder or workdir / "cifar10-jpeg"
    if not (root / "train").is_dir():  # unpacked once; tar keeps the mtimes, so the decoded cache stays valid
        print(f"unpacking {archive} into {root} ...", flush=True)
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    t = time.perf_counter()
    bundle = load_data(str(root), batch_size=128, device="cpu")  # decodes into the uint8 cache on the first run
    print(f"loaded {root} in {time.perf_counter() - t:.1f} s (decode on the first run, the cache after)", flush=True)
    train = bundle.train
    images = train.images.permute(0, 3, 1, 2)  # the loader keeps NHWC; DeviceLoader takes NCHW
    return images, train.labels, "CIFAR-10 (JPEG q75), training split after the 5,000-image validation carve"


def loader_throughput(images, labels, device, batch_size: int, cutout: int, repeats: int = 3) -> float:
    """Augmented images per second of the device-resident loader: the best of ``repeats`` whole epochs after a
    warm-up epoch (the best, because on a shared machine the others measure the neighbours as much as the loader)."""
    loader = DeviceLoader(
        images,
        labels,
        batch_size=batch_size,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        device=device,
        train=True,
        seed=0,
        pad=4,
        flip=True,
        cutout=cutout,
    )
    best = 0.0
    for epoch in range(1 + repeats):
        sync(device)
        start = time.perf_counter()
        n = 0
        for x, y in loader.epoch(epoch):  # noqa: B007 (the last batch is checked below)
            n += x.shape[0]
        sync(device)
        if epoch:
            best = max(best, n / (time.perf_counter() - start))
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last) and y.device == x.device
    return best


def training_throughput(device: torch.device, batch_size: int, warmup: int, steps: int, amp: bool) -> float:
    """resnet18_cifar training images per second: forward + backward + SGD step, one fixed batch."""
    model = cnnzoo.create_model("resnet18_cifar", num_classes=10).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    x = torch.randn(batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), device=device)
    model.train()

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | mps")
    p.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE, help="cifar10-jpeg.tar.gz (random data if absent)")
    p.add_argument("--workdir", type=Path, default=None, help="where the archive is unpacked (default: cache dir)")
    p.add_argument("--folder", type=Path, default=None, help="the archive already unpacked (train/ and test/)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--warmup", type=int, default=None, help="untimed training steps (default 2 on CPU, 20 on GPU)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default 3 on CPU, 100 on GPU)")
    p.add_argument("--no-amp", action="store_true", help="fp32 training on CUDA too (default: bf16 autocast)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    on_gpu = device.type != "cpu"
    amp = device.type == "cuda" and not args.no_amp
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    images, labels, source = cifar_images(args.archive, args.workdir or cache_dir() / "bench", args.folder)
    rows = {}
    for batch_size in (128, 512):
        for cutout in (0, 16):
            rows[f"batch {batch_size}, crop+flip" + (f"+cutout {cutout}" if cutout else "")] = loader_throughput(
                images, labels, device, batch_size, cutout
            )
    train_ips = training_throughput(
        device, 128, args.warmup or (20 if on_gpu else 2), args.steps or (100 if on_gpu else 3), amp
    )
    aug_ips = rows["batch 128, crop+flip"]
    result = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or 'cpu'} ({torch.get_num_threads()} threads, {os.cpu_count()} CPUs)",
        "torch": torch.__version__,
        "data": source,
        "augmented_images_per_s": {k: round(v) for k, v in rows.items()},
        "train_images_per_s": round(train_ips, 1),
        "train": f"resnet18_cifar batch 128, SGD, channels_last, {'bf16 autocast' if amp else 'fp32'}",
        "ratio": round(aug_ips / train_ips, 1),
    }
    print(f"device: {result['device']}; torch {result['torch']}; data: {source}")
    for name, ips in rows.items():
        print(f"device-resident augmentation, {name:<30} {ips:>12,.0f} images/s")
    print(f"training ({result['train']}):{'':<6}{train_ips:>12,.1f} images/s")
    print(
        f"ratio (augmentation at batch 128, crop+flip / training): {result['ratio']:,.1f}x "
        f"({'meets' if result['ratio'] >= 20 else 'below'} the issue's 20x)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
