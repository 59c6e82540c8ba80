#!/usr/bin/env bash
# One GPU session's measurements, run from the repository root on a machine with a CUDA GPU:
#   bash benchmarks/gpu_session.sh .data/cifar10-jpeg.tar.gz OUT_DIR [PARTS] [EPOCHS_SPEED] [EPOCHS_DEGRADATION]
# PARTS: comma-separated, default "data,compare,speed"; also "step_profile", "step", "step_big", "fast", "speed_all",
# "paper56", "levers" (the lr table and EMA in the captured step, about 2 minutes), "paper64k" (the 64k-iteration reproduction, resumed
# across calls) and "gradients,degradation" (the residual study; the degradation study
# alone takes about 10 minutes). A device call may run 10 minutes at most: give each call a few parts, most valuable first ("step_profile" alone, about 4 minutes and no
# data needed: the step profile comes first; then "data,speed", "paper56,fast", "step", "step_big",
# "compare,speed_all") and the same OUT_DIR; the unpacked data and the decoded cache are reused between calls only
# while the machine stays warm. Writes OUT_DIR/{env.txt, <part>.log, <part>.json, ...}.
# Data: CIFAR-10 (JPEG q75). Checkpoints are deleted at the end; tar OUT_DIR to bring it back in one file.
set -euo pipefail
TAR=${1:-.data/cifar10-jpeg.tar.gz}; OUT=${2:-runs/gpu}; PARTS=${3:-data,compare,speed}
E_SPEED=${4:-5}; E_DEG=${5:-10}
export PYTHONPATH=src
PY=${PY:-python3}
LABEL="CIFAR-10 (JPEG q75)"
mkdir -p "$OUT" .data/cifar10
DATA=.data/cifar10
has() { [[ ",$PARTS," == *",$1,"* ]]; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; nproc; } > "$OUT/env.txt"
if [[ "$PARTS" != "step_profile" ]]; then  # step_profile alone trains on synthetic data: no unpacking, no decoding
  [ -d .data/cifar10/train ] || tar -xzf "$TAR" -C .data/cifar10
  $PY -m cnnzoo data $DATA > "$OUT/data.txt"   # decodes once into the uint8 cache that every run below reuses
fi

# where a resnet56 step's time goes, on synthetic data already on the GPU: eager vs the whole-step
# graph (its own GPU time vs the real loop), kernels by class and idle time, batch 256, bf16 vs fp32+TF32,
# channels_last vs NCHW, every host sync of an epoch and its end, torch.compile + graph. JSON after each measurement.
if has step_profile; then
  $PY benchmarks/step_profile.py --device cuda --out "$OUT/step_profile.json" 2>&1 | tee "$OUT/step_profile.log"
fi

# device-resident augmentation against resnet18_cifar's training throughput (must be >= 20x).
if has data; then
  $PY benchmarks/data_throughput.py --device cuda --folder $DATA --json "$OUT/data_throughput.json" 2>&1 \
      | tee "$OUT/data_throughput.log"
fi
# the overview on the GPU, at 224 (published accuracy) and 32 (accuracy of the fast runs below, if any).
if has compare; then
  $PY -m cnnzoo compare --device cuda --out "$OUT/compare-cuda-224" 2>&1 | tee "$OUT/compare-cuda-224.log"
fi
# the standard pipeline vs cnnzoo's trainer, same model, same hyperparameters, same epochs (MFU printed).
if has speed; then
  $PY benchmarks/cifar_speed.py --data $DATA --device cuda --models resnet18_cifar \
      --recipes baseline,baseline+reduce-overhead,baseline+cuda-graph,fast,fast+cuda-graph,fast+compile+cuda-graph \
      --epochs "$E_SPEED" --workdir "$OUT/speed" \
      --json "$OUT/speed.json" 2>&1 | tee "$OUT/speed.log"
fi
# the other four models of the issue, baseline against cnnzoo at equal hyperparameters and `fast`.
if has speed_all; then
  $PY benchmarks/cifar_speed.py --data $DATA --device cuda --models resnet20,resnet56,vgg16_cifar,googlenet_cifar \
      --recipes baseline,fast --epochs "$E_SPEED" --workdir "$OUT/speed_all" --json "$OUT/speed_all.json" 2>&1 \
      | tee "$OUT/speed_all.log"
fi
# the resnet-cifar-paper recipe for resnet56 (64k iterations of batch 128 wanted in <= 4 min): 2,000
# iterations eager, with torch.compile's CUDA graphs (reduce-overhead: forward and backward only) and with the whole
# step captured (--cuda-graph: the optimizer update too), without and with compiled kernels.
if has paper56; then
  for mode in eager reduce-overhead cuda-graph compile+cuda-graph; do
    case $mode in
      eager) flags=() ;;
      reduce-overhead) flags=(--compile --compile-mode reduce-overhead) ;;
      cuda-graph) flags=(--cuda-graph) ;;
      compile+cuda-graph) flags=(--compile --cuda-graph) ;;
    esac
    TIMEFORMAT="$mode: %R s wall for 2000 iterations"
    { time $PY -m cnnzoo train resnet56 --data $DATA --recipe resnet-cifar-paper --iterations 2000 "${flags[@]}" \
        --out "$OUT/paper56-${mode/+/-}" --overwrite > "$OUT/paper56-${mode/+/-}.log" 2>&1; } 2>> "$OUT/paper56.times"
  done
fi
# the lr table and the EMA inside the captured step, in the profile and in the trainer (with --ema).
if has levers; then
  $PY benchmarks/step_profile.py --device cuda --parts graph,ema,levers --out "$OUT/levers.json" 2>&1 \
      | tee "$OUT/levers.log"
  TIMEFORMAT="cuda-graph+ema: %R s wall for 2000 iterations"
  { time $PY -m cnnzoo train resnet56 --data $DATA --recipe resnet-cifar-paper --iterations 2000 --cuda-graph \
      --ema 0.999 --out "$OUT/paper56-cuda-graph-ema" --overwrite > "$OUT/paper56-cuda-graph-ema.log" 2>&1; } \
      2>> "$OUT/paper56.times"
fi
# ImageNet-size training steps, cnnzoo vs torchvision + autocast + compile (ratio >= 1.0 wanted).
# Compiling both sides of six nets takes minutes: "step" does the four smaller ones, "step_big" resnet50/152.
if has step; then
  $PY benchmarks/imagenet_step.py --device cuda --batch-size 128 --models alexnet,vgg16,googlenet,resnet18 \
      --json "$OUT/imagenet_step.json" 2>&1 | tee "$OUT/imagenet_step.log"
fi
if has step_big; then
  $PY benchmarks/imagenet_step.py --device cuda --batch-size 128 --models resnet50,resnet152 \
      --json "$OUT/imagenet_step_big.json" 2>&1 | tee "$OUT/imagenet_step_big.log"
fi
# Time to accuracy and the 32x32 overview with measured accuracy: the fast recipe, 10 epochs,
# each CIFAR net, then `cnnzoo compare` at 3x32x32 with those runs.
if has fast; then
  runs=()
  for m in resnet18_cifar resnet20 resnet56 vgg16_cifar googlenet_cifar alexnet_cifar; do
    $PY -m cnnzoo train $m --data $DATA --recipe fast --epochs 10 --out "$OUT/fast-$m" --overwrite \
        > "$OUT/fast-$m.log" 2>&1
    runs+=("$OUT/fast-$m")
  done
  # The 90.7 % target: the same run evaluated with flip test-time augmentation (as the speed-run trainers do).
  $PY -m cnnzoo train resnet18_cifar --data $DATA --recipe fast --epochs 10 --tta-flip --overwrite \
      --out "$OUT/fast-resnet18_cifar-tta" > "$OUT/fast-resnet18_cifar-tta.log" 2>&1
  $PY -m cnnzoo compare --device cuda --input 3x32x32 --runs "${runs[@]}" --label "$LABEL" \
      --out "$OUT/compare-cuda-32" 2>&1 | tee "$OUT/compare-cuda-32.log"
fi

# gradients through plain and residual nets, at init and after 200 steps, on a real batch.
if has gradients; then
  $PY -m cnnzoo study gradients plain56 resnet56 plain110 resnet110 --data $DATA --steps 200 --device cuda \
      --label "$LABEL" --out "$OUT/gradients" | tee "$OUT/gradients.log"
fi
# degradation, depths 20-56 plain and residual, the paper's recipe shortened to E_DEG epochs (milestones at
# 50% and 75%, as 32k/48k of 64k). --jobs 8: the 8 runs side by side on the one GPU (each is bound by per-step launch
# overhead at batch 128, not by the GPU).
if has degradation; then
  $PY -m cnnzoo study degradation --depths 20,32,44,56 --data $DATA --recipe resnet-cifar-paper --epochs "$E_DEG" \
      --jobs 8 --label "$LABEL" --out "$OUT/degradation" 2>&1 | tee "$OUT/degradation.log"
fi
# The full-length reproduction (He et al. 2016 section 4.2: 64k iterations, the warm-up rule for 110), depths
# 20-110, plain and residual, 10 runs side by side. Longer than one 10-minute device call: the study resumes
# exactly, so call this part again (same OUT_DIR, checkpoints kept: run it before the cleanup below is reached, i.e.
# alone: PARTS=paper64k) until degradation.md exists. The CPU lesson (resnet-cifar-short) is the same command with
# --depths 20,56 --recipe resnet-cifar-short.
if has paper64k; then
  $PY -m cnnzoo study degradation --depths 20,32,44,56,110 --data $DATA --recipe resnet-cifar-paper --jobs 10 \
      --label "$LABEL" --out "$OUT/paper64k" 2>&1 | tee -a "$OUT/paper64k.log"
  exit 0  # keep the checkpoints for the next call
fi
find "$OUT" -name "*.pt" -delete  # checkpoints stay behind; bring the rest back as one archive (see docs/benchmarks.md)
