#!/usr/bin/env bash
# One GPU session's measurements (issues 6 and 7), run from the repository root on a machine with a CUDA GPU:
#   bash benchmarks/gpu_session.sh .data/cifar10-jpeg.tar.gz OUT_DIR [EPOCHS_SPEED] [EPOCHS_DEGRADATION]
# Writes OUT_DIR/{env.txt, speed.json, speed.log, fast-*.log, degradation/...}. Data: CIFAR-10 (JPEG q75).
set -euo pipefail
TAR=${1:-.data/cifar10-jpeg.tar.gz}; OUT=${2:-runs/gpu}; E_SPEED=${3:-5}; E_DEG=${4:-10}
export PYTHONPATH=src
PY=${PY:-python3}
mkdir -p "$OUT" .data/cifar10
[ -d .data/cifar10/train ] || tar -xzf "$TAR" -C .data/cifar10
DATA=.data/cifar10
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; nproc; } > "$OUT/env.txt"
$PY -m cnnzoo data $DATA > "$OUT/data.txt"   # decodes once into the uint8 cache that every run below reuses

# Issue 7: the standard pipeline vs cnnzoo's trainer, same model, same hyperparameters, same epochs.
$PY benchmarks/cifar_speed.py --data $DATA --device cuda --models resnet18_cifar --recipes baseline,fast --epochs "$E_SPEED" \
    --workdir "$OUT/speed" --json "$OUT/speed.json" 2>&1 | tee "$OUT/speed.log"
# Issue 7: the `fast` recipe's time to accuracy on resnet18_cifar.
$PY -m cnnzoo train resnet18_cifar --data $DATA --recipe fast --epochs 10 --out "$OUT/fast-resnet18_cifar" \
    > "$OUT/fast-resnet18_cifar.log" 2>&1

# Issue 6: gradients through plain and residual nets, at init and after 200 steps, on a real batch.
$PY -m cnnzoo study gradients plain56 resnet56 plain110 resnet110 --data $DATA --steps 200 --device cuda \
    --out "$OUT/gradients" | tee "$OUT/gradients.log"

# Issue 6: degradation, depths 20-56 plain and residual, the paper's recipe shortened to E_DEG epochs (milestones at
# 50% and 75%, as 32k/48k of 64k). --jobs 8: the 8 runs side by side on the one GPU (each is bound by per-step launch
# overhead at batch 128, not by the GPU).
$PY -m cnnzoo study degradation --depths 20,32,44,56 --data $DATA --recipe resnet-cifar-paper --epochs "$E_DEG" \
    --jobs 8 --out "$OUT/degradation" 2>&1 | tee "$OUT/degradation.log"
find "$OUT" -name "*.pt" -delete  # checkpoints stay behind; bring the rest back as one archive (see docs/benchmarks.md)
