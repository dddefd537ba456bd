#!/usr/bin/env bash
# The GPU checks of issues 5 and 6 as one prepared run, for a session that is lent a
# device machine (it has python3 with torch 2.11 and timm, but no Rust and no network).
#
# Here:   make device     (builds vit and copies it, the CIFAR-10 JPEG converter and archive
#                          into the git-ignored .device/; name it in the device tool's `carry`)
# There:  OUT=$OUT bash bench/gpu.sh     (BUDGET_S: seconds the whole script may take, 540)
#
# Writes into $OUT: info.txt; compare-bf16.txt (vit against the PyTorch reference and timm,
# bf16 autocast, notebook config, the fused AdamW kernel on every side) and
# compare-bf16-pytorch-foreach.txt (timm with PyTorch's CUDA-default foreach AdamW);
# epoch/ (two notebook-config epochs on CIFAR-10 with their metrics.csv: epoch_seconds is
# the full-epoch time); strong/ (the strong recipe, as many epochs as the rest of the
# budget allows, or EPOCHS=N).
# A dry run on a CPU: VIT_DEVICE=cpu PRECISION=fp32 SUBSET=500 BUDGET_S=400
# BENCH_ARGS="--batch-size 8 --steps 1 --warmup 1" VIT=target/release/vit PY=.venv/bin/python
# OUT=/tmp/dry bash bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS

OUT=${OUT:-gpu-out}
VIT=${VIT:-.device/vit}
DEVICE=${VIT_DEVICE:-cuda}
BUDGET_S=${BUDGET_S:-540}
SUBSET=${SUBSET:-50000}
PRECISION=${PRECISION:-bf16}
PY=${PY:-python3}
BENCH_ARGS=${BENCH_ARGS:---batch-size 512 --steps 20 --warmup 5 --repeats 3}
mkdir -p "$OUT"
LIBTORCH_LIB=$($PY -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib
export LD_LIBRARY_PATH="$LIBTORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

if [ ! -d data/cifar-10-batches-bin ]; then
    $PY .device/cifar10-jpeg-to-bin .device/cifar10-jpeg.tar.gz data/cifar-10-batches-bin
fi

"$VIT" info | tee "$OUT/info.txt"

$PY bench/compare.py --vit "$VIT" --device "$DEVICE" --precision "$PRECISION" \
    --config notebook --threads 2 $BENCH_ARGS | tee "$OUT/compare-$PRECISION.txt"
$PY bench/compare.py --vit "$VIT" --device "$DEVICE" --precision "$PRECISION" \
    --config notebook --threads 2 $BENCH_ARGS --sides vit,timm --pytorch-foreach \
    | tee "$OUT/compare-$PRECISION-pytorch-foreach.txt"

# Two epochs: the first includes CUDA/cuDNN warm-up, the second is the steady-state
# epoch time (training on all images plus the 10,000-image evaluation).
"$VIT" train --dataset cifar10 --data-dir data --device "$DEVICE" --precision "$PRECISION" \
    --epochs 2 --warmup-epochs 1 --batch-size 256 --train-subset "$SUBSET" \
    --out "$OUT/epoch" | tee "$OUT/epoch.txt"

# The strong recipe gets what is left of the budget: the epoch count comes from the
# second epoch's time above (times 2 for the augmentations and the EMA model's own
# evaluation), and should that estimate be short, a SIGINT 40 s before the end makes vit
# finish its step (or evaluation), save its state and stop; SIGKILL 40 s later.
LEFT=$((BUDGET_S - (SECONDS - START) - 60))
if [ "$LEFT" -lt 60 ]; then
    echo "no time left for the strong recipe (${LEFT} s)" | tee "$OUT/strong-plan.txt"
    exit 0
fi
EPOCH_S=$($PY -c '
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
print(float(rows[-1][rows[0].index("epoch_seconds")]))' "$OUT/epoch/metrics.csv")
EPOCHS=${EPOCHS:-$($PY -c "print(max(1, int($LEFT / ($EPOCH_S * 2))))")}
echo "strong recipe: $EPOCHS epochs in the ${LEFT} s left (notebook epoch: $EPOCH_S s)" \
    | tee "$OUT/strong-plan.txt"
# --foreground: SIGINT to vit alone (a second one, to its process group, would make it
# quit without saving).
timeout --foreground -s INT -k 40 "$LEFT" \
    "$VIT" train --recipe strong --dataset cifar10 --data-dir data --device "$DEVICE" \
    --precision "$PRECISION" --epochs "$EPOCHS" --warmup-epochs $((EPOCHS / 30 + 1)) \
    --batch-size 256 --train-subset "$SUBSET" --out "$OUT/strong" \
    | tee "$OUT/strong.txt" || echo "strong run stopped: status $?"
