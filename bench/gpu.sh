#!/usr/bin/env bash
# The GPU checks of issues 5 and 6 as one prepared run, for a session that is lent a
# device machine (it has python3 with torch 2.11 and timm, but no Rust and no network).
#
# Here:   cargo build --release && mkdir -p .device && cp target/release/vit .device/ &&
#         cp ../shared/tools/cifar10-jpeg-to-bin .device/ &&
#         cp ../shared/data/cifar10-jpeg.tar.gz .device/
#         (.device/ is git-ignored; name it in the device tool's `carry`)
# There:  OUT=$OUT bash bench/gpu.sh            (EPOCHS=N for the strong-recipe run)
#
# Writes into $OUT: info.txt, compare-bf16.txt (vit vs the PyTorch reference and timm,
# bf16 autocast, notebook config), epoch/ (two notebook-config epochs on CIFAR-10 with their
# metrics.csv: epoch_seconds is the full-epoch time), strong/ (the strong recipe).
# A dry run on a CPU: VIT_DEVICE=cpu EPOCHS=1 SUBSET=500 BENCH_ARGS="--batch-size 8
# --steps 1 --warmup 1" VIT=target/release/vit PY=.venv/bin/python OUT=/tmp/dry bash bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-gpu-out}
VIT=${VIT:-.device/vit}
DEVICE=${VIT_DEVICE:-cuda}
EPOCHS=${EPOCHS:-100}
SUBSET=${SUBSET:-50000}
PRECISION=${PRECISION:-bf16}
PY=${PY:-python3}
BENCH_ARGS=${BENCH_ARGS:---batch-size 512 --steps 20 --warmup 5 --repeats 3}
mkdir -p "$OUT"
if [ "$DEVICE" = cpu ]; then PRECISION=fp32; fi
LIBTORCH_LIB=$($PY -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib
export LD_LIBRARY_PATH="$LIBTORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

if [ ! -d data/cifar-10-batches-bin ]; then
    $PY .device/cifar10-jpeg-to-bin .device/cifar10-jpeg.tar.gz data/cifar-10-batches-bin
fi

"$VIT" info | tee "$OUT/info.txt"

$PY bench/compare.py --vit "$VIT" --device "$DEVICE" --precision "$PRECISION" \
    --config notebook --threads 2 $BENCH_ARGS | tee "$OUT/compare-$PRECISION.txt"

# Two epochs: the first includes CUDA/cuDNN warm-up, the second is the steady-state
# epoch time (training on all images plus the 10,000-image evaluation).
"$VIT" train --dataset cifar10 --data-dir data --device "$DEVICE" --precision "$PRECISION" \
    --epochs 2 --warmup-epochs 1 --batch-size 256 --train-subset "$SUBSET" \
    --out "$OUT/epoch" | tee "$OUT/epoch.txt"

"$VIT" train --recipe strong --dataset cifar10 --data-dir data --device "$DEVICE" \
    --precision "$PRECISION" --epochs "$EPOCHS" --warmup-epochs $((EPOCHS / 30 + 1)) \
    --batch-size 256 --train-subset "$SUBSET" --out "$OUT/strong" | tee "$OUT/strong.txt"
