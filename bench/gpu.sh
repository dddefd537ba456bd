#!/usr/bin/env bash
# The GPU checks of issues 5 and 6 as one prepared run, for a session that is lent a
# device machine (it has python3 with torch 2.11 and timm, but no Rust and no network).
#
# Here:   make device     (builds vit and copies it, the test binaries with CUDA checks, the
#                          CIFAR-10 JPEG converter and archive into the git-ignored .device/,
#                          41 MiB; name it in the device tool's `carry`)
# There:  OUT=$OUT bash bench/gpu.sh     (BUDGET_S: seconds the whole script may take, 540)
#
# Everything is written under $WORK (default /tmp/vit-gpu): info.txt; test-*.txt (the
# CUDA tests); compare-bf16.txt (vit against the PyTorch reference and timm, bf16
# autocast, notebook config, the fused AdamW kernel on every side) and
# compare-bf16-pytorch-foreach.txt (vit eager and with --cuda-graph against timm with
# PyTorch's CUDA-default foreach AdamW); epoch/ and epoch-graph/ (two notebook-config
# epochs on CIFAR-10, eager and with --cuda-graph, with their metrics.csv: epoch_seconds
# is the full-epoch time, and the two runs' losses should agree); strong/ (the strong
# recipe, with --cuda-graph if that worked, as many epochs as the rest of the budget
# allows, or EPOCHS=N); failures.txt; summary.txt. The --cuda-graph parts have not run on
# a GPU before: a failure there is recorded and the script goes on.
#
# The device tool brings back at most 8 files of $OUT, 16 MiB each, so $OUT gets
# results.tar.gz (all of $WORK but the checkpoints), the strong run's best models
# (strong-best_model.safetensors, strong-best_ema_model.safetensors, 13 MB each) and
# summary.txt, packed again after every phase so that a run cut short still returns
# what it finished. summary.txt is printed last, for the tool's output tail.
#
# A dry run on a CPU: VIT_DEVICE=cpu PRECISION=fp32 SUBSET=500 BUDGET_S=400
# BENCH_ARGS="--batch-size 8 --steps 1 --warmup 1" VIT=target/release/vit PY=.venv/bin/python
# OUT=/tmp/dry WORK=/tmp/dry-work bash bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS

OUT=${OUT:-gpu-out}
WORK=${WORK:-/tmp/vit-gpu}
VIT=${VIT:-.device/vit}
DEVICE=${VIT_DEVICE:-cuda}
BUDGET_S=${BUDGET_S:-540}
SUBSET=${SUBSET:-50000}
PRECISION=${PRECISION:-bf16}
PY=${PY:-python3}
BENCH_ARGS=${BENCH_ARGS:---batch-size 256 --steps 30 --warmup 5 --repeats 3}
# GRAPH_FLAG="" leaves --cuda-graph out (CUDA only).
GRAPH_FLAG=${GRAPH_FLAG---cuda-graph}
if [ -n "$(ls -A "$WORK" 2>/dev/null)" ]; then
    echo "$WORK is not empty: remove it, or set WORK to a new folder" >&2
    exit 2
fi
mkdir -p "$OUT" "$WORK"

# What comes back: the summary, the logs and metrics packed in one file, and the strong
# run's best models (see the header).
summarize() {
    {
        echo "== failures"
        cat "$WORK/failures.txt" 2>/dev/null || echo "none"
        echo "== tests"
        grep -H "test result" "$WORK"/test-*.txt 2>/dev/null || true
        for f in "$WORK"/compare-*.txt; do
            [ -f "$f" ] && { echo "== $(basename "$f")"; tail -n 20 "$f"; }
        done
        for run in epoch epoch-graph strong strong-eager; do
            [ -f "$WORK/$run/metrics.csv" ] || continue
            echo "== $run/metrics.csv (header, first 3 and last 5 epochs)"
            head -n 4 "$WORK/$run/metrics.csv"
            tail -n +5 "$WORK/$run/metrics.csv" | tail -n 5
        done
        cat "$WORK/strong-plan.txt" 2>/dev/null || true
        echo "== elapsed $((SECONDS - START)) s"
    } > "$WORK/summary.txt"
}
pack() {
    summarize
    cp "$WORK/summary.txt" "$OUT/summary.txt"
    { tar -czf "$OUT/results.tar.gz.part" -C "$WORK" --exclude='*.safetensors' --exclude=.stop . \
        && mv "$OUT/results.tar.gz.part" "$OUT/results.tar.gz"; } || echo "cannot pack $WORK" >&2
    for run in strong strong-eager; do
        for model in best_model best_ema_model; do
            if [ -f "$WORK/$run/$model.safetensors" ]; then
                cp "$WORK/$run/$model.safetensors" "$OUT/strong-$model.safetensors" || true
            fi
        done
    done
}
# On any exit: stop the background packer (below), pack a last time, print the summary.
PACKER=""
finish() {
    if [ -n "$PACKER" ]; then
        touch "$WORK/.stop"
        wait "$PACKER" || true
    fi
    pack
    cat "$WORK/summary.txt"
}
trap finish EXIT
LIBTORCH_LIB=$($PY -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib
export LD_LIBRARY_PATH="$LIBTORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

if [ ! -d data/cifar-10-batches-bin ]; then
    $PY .device/cifar10-jpeg-to-bin .device/cifar10-jpeg.tar.gz data/cifar-10-batches-bin
fi

"$VIT" info | tee "$WORK/info.txt"

# The test binaries with CUDA checks (CUDA graph steps against eager ones, CUDA peak
# memory, the notebook's and the strong recipe's augmentations on the GPU), built here by
# `make device`.
for test in .device/tests/*; do
    [ -x "$test" ] || continue
    VIT_FIXTURES=tests/fixtures VIT_BIN="$VIT" "$test" --test-threads 1 2>&1 \
        | tee "$WORK/test-$(basename "$test").txt" \
        || echo "$(basename "$test") failed: status $?" | tee -a "$WORK/failures.txt"
done
pack

$PY bench/compare.py --vit "$VIT" --device "$DEVICE" --precision "$PRECISION" \
    --config notebook --threads 2 $BENCH_ARGS | tee "$WORK/compare-$PRECISION.txt" \
    || echo "compare failed: status $?" | tee -a "$WORK/failures.txt"
$PY bench/compare.py --vit "$VIT" --device "$DEVICE" --precision "$PRECISION" \
    --config notebook --threads 2 $BENCH_ARGS --sides vit,timm --pytorch-foreach \
    $GRAPH_FLAG | tee "$WORK/compare-$PRECISION-pytorch-foreach.txt" \
    || echo "compare with --cuda-graph failed: status $?" | tee -a "$WORK/failures.txt"
pack

# Two epochs: the first includes CUDA/cuDNN warm-up, the second is the steady-state
# epoch time (training on all images plus the 10,000-image evaluation). Then the same
# with --cuda-graph, whose losses should match the eager run's closely.
epochs() {
    "$VIT" train --dataset cifar10 --data-dir data --device "$DEVICE" \
        --precision "$PRECISION" --epochs 2 --warmup-epochs 1 --batch-size 256 \
        --train-subset "$SUBSET" --out "$WORK/$1" "${@:2}" 2>&1 | tee "$WORK/$1.txt"
}
epochs epoch || echo "eager epochs failed: status $?" | tee -a "$WORK/failures.txt"
STRONG_FLAGS=""
if [ -n "$GRAPH_FLAG" ]; then
    if epochs epoch-graph --cuda-graph; then
        STRONG_FLAGS="--cuda-graph"
    else
        echo "epochs with --cuda-graph failed: status $?" | tee -a "$WORK/failures.txt"
    fi
fi
pack

# The strong recipe gets what is left of the budget: the epoch count comes from the
# second epoch's time above (times 2 for the augmentations and the EMA model's own
# evaluation), and should that estimate be short, a SIGINT 40 s before the end makes vit
# finish its step (or evaluation), save its state and stop; SIGKILL 40 s later.
strong() {
    local left=$((BUDGET_S - (SECONDS - START) - 60))
    if [ "$left" -lt 60 ]; then
        echo "no time left for the strong recipe (${left} s)" | tee -a "$WORK/strong-plan.txt"
        return 0
    fi
    local timing=epoch
    [ -n "$STRONG_FLAGS" ] && timing=epoch-graph
    local epoch_s epochs
    # 10 s when the timing run left no epoch behind (the SIGINT then bounds the run).
    epoch_s=$($PY -c '
import csv, sys
try:
    rows = list(csv.reader(open(sys.argv[1])))
    print(float(rows[-1][rows[0].index("epoch_seconds")]))
except (OSError, ValueError, IndexError):
    print(10.0)' "$WORK/$timing/metrics.csv")
    epochs=${EPOCHS:-$($PY -c "print(max(1, int($left / ($epoch_s * 2))))")}
    echo "$1: $epochs epochs in the ${left} s left ($timing epoch: $epoch_s s) $STRONG_FLAGS" \
        | tee -a "$WORK/strong-plan.txt"
    # --foreground: SIGINT to vit alone (a second one, to its process group, would make it
    # quit without saving).
    timeout --foreground -s INT -k 40 "$left" \
        "$VIT" train --recipe strong --dataset cifar10 --data-dir data --device "$DEVICE" \
        --precision "$PRECISION" --epochs "$epochs" --warmup-epochs $((epochs / 30 + 1)) \
        --batch-size 256 --train-subset "$SUBSET" --out "$WORK/$1" $STRONG_FLAGS \
        2>&1 | tee "$WORK/$1.txt"
}
# Packed every minute meanwhile, in case the device tool's own limit cuts the script.
(
    n=0
    while [ ! -e "$WORK/.stop" ]; do
        sleep 5
        n=$((n + 5))
        if [ $((n % 60)) -eq 0 ]; then pack; fi
    done
) >/dev/null 2>&1 &
PACKER=$!
if ! strong strong; then
    echo "strong run stopped: status $?" | tee -a "$WORK/failures.txt"
    # A --cuda-graph run that failed before its first epoch: the rest of the time eagerly.
    if [ -n "$STRONG_FLAGS" ] && [ ! -e "$WORK/strong/last_model.safetensors" ]; then
        STRONG_FLAGS=""
        strong strong-eager || echo "eager strong run stopped: status $?" \
            | tee -a "$WORK/failures.txt"
    fi
fi
