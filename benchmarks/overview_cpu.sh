#!/usr/bin/env bash
# The overview's CPU measurements (docs/benchmarks.md, "The overview on this machine"), in order, each step
# skipped when its result exists, so a stopped session reruns this script to go on (the budget runs resume
# from last.pt). Run it alone on a quiet machine: every step logs the load average before and after.
#   bash benchmarks/overview_cpu.sh [LOGDIR]      (CIFAR-10 JPEG folders in .data/cifar10)
set -u
LOG=${1:-runs/overview-logs}
mkdir -p "$LOG"
PY=${PYTHON:-python3}
LABEL="CIFAR-10 (JPEG q75)"
step() {  # step NAME DONE_FILE CMD...
    local name=$1 done=$2; shift 2
    if [ -e "$done" ]; then echo "skip $name ($done exists)"; return 0; fi
    { echo "== $name  $(date -u +%FT%TZ)  load: $(cut -d' ' -f1-3 /proc/loadavg)"; echo "\$ $*"; } | tee -a "$LOG/$name.log"
    local t0=$SECONDS
    "$@" >>"$LOG/$name.log" 2>&1
    local rc=$?
    echo "== $name rc=$rc wall=$((SECONDS - t0))s  load: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$LOG/$name.log"
}
step compare-32 docs/results/compare-cpu-32/.done-spread \
    $PY -m cnnzoo compare --input 3x32x32 --device cpu --batch-size 32 --repeats 20 \
    --runs docs/results/fast_resnet18_cifar_report.json --label "$LABEL" --out docs/results/compare-cpu-32
[ -e docs/results/compare-cpu-32/compare.json ] && grep -q '"complete": true' docs/results/compare-cpu-32/compare.json \
    && touch docs/results/compare-cpu-32/.done-spread
step sweep-32 docs/results/sweep-cpu-32/batch_sweep.json \
    $PY -m cnnzoo compare --sweep --input 3x32x32 --device cpu --repeats 5 --out docs/results/sweep-cpu-32
step budget-10m runs/budget-cpu-10m/budget.json \
    $PY -m cnnzoo compare --train-budget 10m --data .data/cifar10 --label "$LABEL" \
    --batch-size 128 --device cpu --out runs/budget-cpu-10m
step compare-224 docs/results/compare-cpu-224/.done-spread \
    $PY -m cnnzoo compare --input 3x224x224 --device cpu --batch-size 8 --repeats 10 --out docs/results/compare-cpu-224
[ -e docs/results/compare-cpu-224/compare.json ] && grep -q '"complete": true' docs/results/compare-cpu-224/compare.json \
    && touch docs/results/compare-cpu-224/.done-spread
step sweep-224 docs/results/sweep-cpu-224/batch_sweep.json \
    $PY -m cnnzoo compare --sweep 1,2,4,8,16 --input 3x224x224 --device cpu --repeats 3 --out docs/results/sweep-cpu-224
