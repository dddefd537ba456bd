#!/usr/bin/env bash
# The GPU checks of issues 5 and 6 as one prepared run, for a session that is lent a
# device machine (it has python3 with torch 2.11 and timm, but no Rust and no network).
#
# Here:   make device     (builds vit and copies it, the test binaries with CUDA checks, the
#                          CIFAR-10 JPEG converter and archive into the git-ignored .device/,
#                          41 MiB; name it in the device tool's `carry`)
# There:  OUT=$OUT BUDGET_S=540 bash bench/gpu.sh   (BUDGET_S: seconds the whole script may
#                          take, 10 or more under the device call's limit: its strong
#                          run gets SIGINT 35 s before BUDGET_S and, if need be, SIGKILL
#                          15 s later, then the last packing. Check the device tool's
#                          `status` first: with less than 600 s of device time left, the
#                          limit is lower than the timeout_s asked for)
#
# Everything is written under $WORK (default /tmp/vit-gpu): info.txt (vit, GPU, torch and
# timm versions); test-*.txt (the CUDA tests); compare-bf16.txt (vit against the PyTorch
# reference and timm, bf16 autocast, notebook config, batch 256, the fused AdamW kernel on
# every side) and compare-bf16-pytorch-foreach.txt (vit eager and with --cuda-graph
# against timm with PyTorch's CUDA-default foreach AdamW); epoch/ and epoch-graph/ (two
# notebook-config epochs on CIFAR-10, eager and with --cuda-graph, with their
# metrics.csv: epoch_seconds is the full-epoch time, and the two runs' losses should
# agree); strong-timing/ (two epochs of the strong recipe, for its epoch time; or
# strong-timing-step/ with --cuda-graph=step, or strong-timing-eager/, where the graph
# failed); strong/ (the strong recipe, with the graph that worked, as many epochs as the
# rest of the budget allows, or EPOCHS=N); failures.txt; summary.txt. Every phase has a
# time limit; a failure is recorded and the script goes on.
#
# PHASES (default "tests compare epoch strong") chooses what runs. The first H200 run
# (bench/results/2026-11-29-h200/) measured all of them; PHASES="tests strong" gives the
# rest of the budget to the strong recipe's accuracy (its two timing epochs, then the run,
# with --cuda-graph if tests/cuda_graph.rs passed, --cuda-graph=step if only the
# augmentation's capture failed there; PHASES=strong takes --cuda-graph untested, and
# falls back to =step, then eager steps, where the timing run fails).
#
# One device call may run 600 s, but a session has 900 s of device time. To train the
# strong recipe in both: the first call plans its epochs for its own time left plus
# EXTRA_S seconds more (default 0), and stops at its limit with the run's state saved; a
# second call at once, while the machine is still warm (the device tool keeps it 30 s),
# with PHASES=resume (alone) and the same WORK, continues that run with `vit train
# --resume` for its own BUDGET_S. A machine that went back in between has lost $WORK: the
# resume call then stops at once, and the first call's files are all there is.
# EPOCHS=N fixes the strong run's epochs instead; MIX_OFF_PERCENT=P (1 to 99) stops its
# MixUp and CutMix after P% of them (vit's --mix-off-epoch). BATCH_SIZE (default 256) is
# every training run's batch; STRONG_ARGS adds `vit train` flags to the strong runs (the
# timing epochs and the run), for example "--mix-prob 0.5 --mixup 1.0": a flag the script
# sets itself is refused at once, and the command goes through vit's argument parser
# before the first phase (vit's own checks of the values come when the runs start).
#
# The device tool brings back at most 8 files of $OUT, 16 MiB each, so $OUT gets
# results.tar.gz (all of $WORK but the checkpoints), the strong run's best models
# (strong-best_model.safetensors, strong-best_ema_model.safetensors, 13 MB each) and
# summary.txt, packed again after every phase so that a run cut short still returns
# what it finished. summary.txt is printed last, for the tool's output tail.
#
# A dry run on a CPU: VIT_DEVICE=cpu PRECISION=fp32 EVAL_PRECISION=fp32 SUBSET=500
# BUDGET_S=600 GRAPH_FLAG="" BENCH_ARGS="--batch-size 8 --steps 1 --warmup 1 --repeats 1"
# VIT=target/release/vit PY=.venv/bin/python OUT=/tmp/dry WORK=/tmp/dry-work bash bench/gpu.sh
# (float32 throughout: bf16 crawls on a CPU without bf16 instructions).
set -euo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
# A point, not a comma, in $EPOCHREALTIME's decimals (see stamp).
export LC_ALL=C

OUT=${OUT:-gpu-out}
WORK=${WORK:-/tmp/vit-gpu}
VIT=${VIT:-.device/vit}
DEVICE=${VIT_DEVICE:-cuda}
BUDGET_S=${BUDGET_S:-540}
SUBSET=${SUBSET:-50000}
PRECISION=${PRECISION:-bf16}
PY=${PY:-python3}
BENCH_ARGS=${BENCH_ARGS:---batch-size 256 --steps 100 --warmup 20 --repeats 2}
# GRAPH_FLAG="" leaves --cuda-graph out (CUDA only); "--cuda-graph=step" keeps the
# augmentation out of the graph.
GRAPH_FLAG=${GRAPH_FLAG---cuda-graph}
PHASES=${PHASES:-tests compare epoch strong}
EXTRA_S=${EXTRA_S:-0}
BATCH_SIZE=${BATCH_SIZE:-256}
# Split into words as typed (no quoting inside): `vit train` flags and their values.
read -r -d '' -a strong_args <<<"${STRONG_ARGS:-}" || true
# The strong run mixes only in its first MIX_OFF_PERCENT percent of epochs (vit's
# --mix-off-epoch, of the epochs it plans); empty: every epoch, as the strong recipe does.
# PHASES=resume takes the flag from the resumed run's command instead.
MIX_OFF_PERCENT=${MIX_OFF_PERCENT:-}
# The strong runs' per-epoch test passes (vit's --eval-precision): bf16, for more epochs
# in the same time (the two float32 passes and the rest of an H200 strong epoch's end took
# 0.36 s of its 1.93 s; what bf16 saves is not measured yet); fp32 as vit eval measures.
# PHASES=resume takes the flag from the resumed run's command instead.
EVAL_PRECISION=${EVAL_PRECISION:-bf16}
# Seconds of the budget the strong run leaves for its SIGINT, the SIGKILL after it, and
# the last packing.
RESERVE_S=35
# One space between names, whatever separated them, for `wanted`.
read -r -d '' -a phase_list <<<"$PHASES" || true
PHASES="${phase_list[*]}"
KNOWN="known: tests compare epoch strong, or resume alone"
[ -n "$PHASES" ] || { echo "PHASES names no phase ($KNOWN)" >&2; exit 2; }
for phase in $PHASES; do
    case $phase in
        tests | compare | epoch | strong) ;;
        resume) [ "$PHASES" = resume ] || { echo "PHASES: resume runs alone ($KNOWN)" >&2; exit 2; } ;;
        *)
            echo "PHASES: unknown phase '$phase' ($KNOWN)" >&2
            exit 2
            ;;
    esac
done
[[ $EXTRA_S =~ ^[0-9]+$ ]] || { echo "EXTRA_S must be a whole number of seconds, not '$EXTRA_S'" >&2; exit 2; }
[[ $BATCH_SIZE =~ ^[1-9][0-9]*$ ]] || { echo "BATCH_SIZE must be a positive whole number, not '$BATCH_SIZE'" >&2; exit 2; }
# The flags this script sets itself: given again in STRONG_ARGS, vit would refuse every
# strong run (a flag twice), after the device time of the phases before them.
for word in "${strong_args[@]}"; do
    case ${word%%=*} in
        --batch-size) instead="BATCH_SIZE" ;;
        --epochs) instead="EPOCHS" ;;
        --mix-off-epoch) instead="MIX_OFF_PERCENT" ;;
        --eval-precision) instead="EVAL_PRECISION" ;;
        --precision) instead="PRECISION" ;;
        --cuda-graph) instead="GRAPH_FLAG" ;;
        --train-subset) instead="SUBSET" ;;
        --device) instead="VIT_DEVICE" ;;
        --warmup-epochs | --recipe | --dataset | --data-dir | --out | --resume) instead="" ;;
        *) continue ;;
    esac
    echo "STRONG_ARGS: the script sets ${word%%=*} itself${instead:+ (set $instead instead)}" >&2
    exit 2
done
[[ $EVAL_PRECISION =~ ^(fp32|bf16)$ ]] \
    || { echo "EVAL_PRECISION must be fp32 or bf16, not '$EVAL_PRECISION'" >&2; exit 2; }
[[ -z $MIX_OFF_PERCENT || $MIX_OFF_PERCENT =~ ^([1-9]|[1-9][0-9])$ ]] \
    || { echo "MIX_OFF_PERCENT must be a whole number from 1 to 99, not '$MIX_OFF_PERCENT'" >&2; exit 2; }
# Whether PHASES names $1.
wanted() { [[ " $PHASES " == *" $1 "* ]]; }
if wanted resume; then
    # The strong run an earlier call left (see strong, below): its name, and its command.
    RESUME_RUN=$(cat "$WORK/strong-run.txt" 2>/dev/null) || RESUME_RUN=""
    if [ -z "$RESUME_RUN" ] || [ ! -f "$WORK/$RESUME_RUN.args" ] \
        || [ ! -f "$WORK/$RESUME_RUN/resume.safetensors" ]; then
        echo "$WORK holds no strong run to resume (strong-run.txt, the run's .args and its" \
            "resume.safetensors): PHASES=resume continues the run of an earlier call on the" \
            "same, still warm, machine" >&2
        exit 2
    fi
    rm -f "$WORK/.stop" "$WORK/.pack"
elif [ -n "$(ls -A "$WORK" 2>/dev/null)" ]; then
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
        # The logs' lines start with their time stamp (see stamp), left out here.
        echo "== tests"
        grep -H "test result" "$WORK"/test-*.txt 2>/dev/null | sed 's/:[0-9.]* /: /' || true
        for f in "$WORK"/compare-*.txt; do
            [ -f "$f" ] && { echo "== $(basename "$f")"; tail -n 20 "$f" | sed 's/^[0-9.]* //'; }
        done
        for run in epoch epoch-graph strong-timing strong-timing-step strong-timing-eager \
            strong strong-eager; do
            [ -f "$WORK/$run/metrics.csv" ] || continue
            echo "== $run/metrics.csv (header, first 3 and last 5 epochs)"
            head -n 4 "$WORK/$run/metrics.csv"
            tail -n +5 "$WORK/$run/metrics.csv" | tail -n 5
        done
        # vit's closing lines of the strong run: its best models, once it has finished (in
        # its first call, or in the resumed one).
        for log in "$WORK"/strong.txt "$WORK"/strong-eager.txt "$WORK"/strong*-resume-*.txt; do
            [ -f "$log" ] || continue
            grep -h "Best .*Validation Accuracy" "$log" | sed 's/^[0-9.]* //' || true
        done
        cat "$WORK/strong-plan.txt" 2>/dev/null || true
        echo "== elapsed $((SECONDS - START)) s"
    } > "$WORK/summary.txt"
}
pack() {
    summarize
    cp "$WORK/summary.txt" "$OUT/summary.txt"
    # tar's status 1 is "a file changed while read": a log being written, which is fine.
    local status=0
    # Checkpoints stay out, and so do vit's temporary files of one being written.
    tar -czf "$OUT/results.tar.gz.part" -C "$WORK" --warning=no-file-changed \
        --exclude='*.safetensors' --exclude='*.tmp-*' --exclude=.stop --exclude=.pack . \
        || status=$?
    if [ "$status" -le 1 ]; then
        mv "$OUT/results.tar.gz.part" "$OUT/results.tar.gz"
    else
        echo "cannot pack $WORK: tar status $status" >&2
    fi
    for run in strong strong-eager; do
        for model in best_model best_ema_model; do
            if [ -f "$WORK/$run/$model.safetensors" ]; then
                cp "$WORK/$run/$model.safetensors" "$OUT/strong-$model.safetensors" || true
            fi
        done
    done
}
# One packer at a time: the background one below packs every minute, in case the device
# tool's own limit cuts the script, and whenever the script asks (pack_now); on exit,
# finish stops it, then packs a last time and prints the summary.
pack_now() { touch "$WORK/.pack"; }
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
(
    n=0
    while [ ! -e "$WORK/.stop" ]; do
        sleep 1
        n=$((n + 1))
        if [ -e "$WORK/.pack" ] || [ $((n % 60)) -eq 0 ]; then
            rm -f "$WORK/.pack"
            pack
        fi
    done
) >/dev/null 2>&1 &
PACKER=$!

# Prefixes each line with the time it arrived (seconds since 1970): vit prints a
# training run's epoch line after that epoch's evaluation and once the previous epoch's
# checkpoints are on disk (they are written while the next epoch trains), so the gap
# between two such lines is what an epoch really costs.
stamp() {
    local line
    while IFS= read -r line; do
        printf '%s %s\n' "${EPOCHREALTIME:-$(date +%s.%N)}" "$line"
    done
}

# run_phase NAME LIMIT_S LOG COMMAND...: runs COMMAND for at most LIMIT_S seconds (less
# where the budget has less left), its output (time-stamped, after a "== NAME started"
# line) to the terminal and LOG; a failure (124: the limit) goes to failures.txt with its
# status, and the status is returned for the caller to act on.
run_phase() {
    local name=$1 limit=$2 log=$3
    shift 3
    local left=$((BUDGET_S - (SECONDS - START) - 30))
    if [ "$left" -lt 20 ]; then
        echo "$name skipped: the time budget is spent" | tee -a "$WORK/failures.txt"
        return 124
    fi
    [ "$limit" -le "$left" ] || limit=$left
    local status=0
    { echo "== $name started"; timeout -k 10 "$limit" "$@"; } 2>&1 | stamp | tee "$log" \
        || status=$?
    if [ "$status" -eq 124 ]; then
        echo "$name stopped: over its ${limit} s" | tee -a "$WORK/failures.txt"
    elif [ "$status" -ne 0 ]; then
        echo "$name failed: status $status" | tee -a "$WORK/failures.txt"
    fi
    return "$status"
}

LIBTORCH_LIB=$($PY -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib
export LD_LIBRARY_PATH="$LIBTORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# The carry may lose the execute bits.
chmod +x "$VIT" .device/tests/* .device/cifar10-jpeg-to-bin 2>/dev/null || true

# Every training run of this script: CIFAR-10, the training batch, the subset.
TRAIN=("$VIT" train --dataset cifar10 --data-dir data --device "$DEVICE"
    --precision "$PRECISION" --batch-size "$BATCH_SIZE" --train-subset "$SUBSET")
STRONG=(--recipe strong --eval-precision "$EVAL_PRECISION" "${strong_args[@]}")
# A resumed call runs on the machine of the first, whose info.txt is there.
wanted resume || {
    "$VIT" info || echo "vit info failed: status $?"
    # Built on another machine: a library missing here (an older glibc, say) shows now.
    ldd "$VIT" | grep "not found" || echo "vit's libraries: all found"
    # sed, not head: head would end ldd by SIGPIPE, and pipefail the script.
    ldd --version 2>&1 | sed -n 1p || true
    nvidia-smi || true
    $PY -c 'import torch, timm; print("torch", torch.__version__, "CUDA", torch.version.cuda,
torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU", "timm", timm.__version__)' \
        || true
} 2>&1 | tee "$WORK/info.txt"
if ! wanted resume && [ "$DEVICE" != cpu ] && ! grep -q "CUDA available: true" "$WORK/info.txt"; then
    echo "vit sees no CUDA device (see info.txt): every GPU figure below is missing" \
        | tee -a "$WORK/failures.txt"
fi
# The strong runs' command as the timing run builds it, through vit's argument parser
# (--help stops it there): a flag it does not know, or a value it cannot parse, in
# STRONG_ARGS would fail every strong phase. Status 2 is the parser's refusal; another
# is vit failing to start, which info.txt shows.
if wanted strong; then
    status=0
    "${TRAIN[@]}" --out "$WORK/strong-check" "${STRONG[@]}" --epochs 2 --warmup-epochs 1 \
        $GRAPH_FLAG ${MIX_OFF_PERCENT:+--mix-off-epoch 1} --help >/dev/null 2>"$WORK/strong-args.txt" \
        || status=$?
    if [ "$status" -eq 2 ]; then
        { echo "STRONG_ARGS: vit train refuses the strong command:"; cat "$WORK/strong-args.txt"; } \
            | tee -a "$WORK/failures.txt" >&2
        exit 2
    elif [ "$status" -ne 0 ]; then
        echo "vit train --help failed (status $status; see info.txt)" | tee -a "$WORK/failures.txt"
    fi
    rm -f "$WORK/strong-args.txt"
fi

# The CIFAR-10 conversion (CPU only) runs beside the tests, which time nothing; it is
# waited for before the comparisons, which it would disturb.
CONVERT=""
if { wanted epoch || wanted strong; } && [ ! -d data/cifar-10-batches-bin ]; then
    run_phase convert 300 "$WORK/convert.txt" \
        $PY .device/cifar10-jpeg-to-bin .device/cifar10-jpeg.tar.gz data/cifar-10-batches-bin \
        >/dev/null &
    CONVERT=$!
fi

# The test binaries with CUDA checks (CUDA graph steps against eager ones, CUDA peak
# memory, the notebook's and the strong recipe's augmentations on the GPU), built here by
# `make device`. Each takes seconds; 90 s bounds one that hangs.
if wanted tests; then
    tests=(.device/tests/*)
    [ -e "${tests[0]}" ] || echo "no test binaries in .device/tests (run make device)" \
        | tee -a "$WORK/failures.txt"
    # A CUDA check that finds no CUDA device passes unchecked, except under
    # VIT_REQUIRE_CUDA=1, where it fails (tests/common's cuda_device).
    require_cuda=1
    [ "$DEVICE" != cpu ] || require_cuda=0
    for test in "${tests[@]}"; do
        [ -e "$test" ] || continue
        name=test-$(basename "$test")
        # --nocapture: the tests' own lines (a CUDA check's "no CUDA device") reach the log.
        run_phase "$name" 90 "$WORK/$name.txt" \
            env VIT_FIXTURES=tests/fixtures VIT_BIN="$(realpath "$VIT")" \
            VIT_REQUIRE_CUDA=$require_cuda "$test" --test-threads 1 --nocapture || true
        # Said in failures.txt too, where a result's reader looks first.
        if grep -q "no CUDA device" "$WORK/$name.txt"; then
            echo "$name: a CUDA check found no CUDA device" | tee -a "$WORK/failures.txt"
        fi
    done
    # The graph phases only if the graph steps matched eager ones: a graph that hangs would
    # cost each of them its whole limit.
    # Where the augmentation's capture failed its test but the step's did not,
    # --cuda-graph=step.
    passed() { grep -q "test $1 \.\.\. ok\$" "$WORK/test-cuda_graph.txt" 2>/dev/null; }
    if [ -n "$GRAPH_FLAG" ] && ! grep -q "test result: ok" "$WORK/test-cuda_graph.txt" 2>/dev/null; then
        strong=graph_steps_with_the_strong_augmentation
        if passed graph_steps_follow_the_eager_steps_on_cuda \
            && passed "${strong}_in_the_graph_follow_the_eager_steps_on_cuda"; then
            echo "tests/cuda_graph.rs failed, but not its graph tests: --cuda-graph phases" \
                | tee -a "$WORK/failures.txt"
        elif passed graph_steps_follow_the_eager_steps_on_cuda \
            && passed "${strong}_before_the_graph_follow_the_eager_steps_on_cuda"; then
            echo "tests/cuda_graph.rs failed with the augmentation in the graph:" \
                "--cuda-graph=step phases" | tee -a "$WORK/failures.txt"
            GRAPH_FLAG="--cuda-graph=step"
        else
            echo "no --cuda-graph phases: tests/cuda_graph.rs did not pass" \
                | tee -a "$WORK/failures.txt"
            GRAPH_FLAG=""
        fi
    fi
fi
if [ -n "$CONVERT" ]; then
    wait "$CONVERT" || true
fi
pack_now

# vit against both PyTorch sides on the same fused AdamW kernel; then vit eager and with
# --cuda-graph against timm on PyTorch's CUDA default (foreach AdamW). A side that fails
# is left out of its table, and the others stay.
# A side that hangs counts as failed after 90 s (each side's figures are logged as it ends).
if wanted compare; then
    run_phase compare 200 "$WORK/compare-$PRECISION.txt" \
        $PY bench/compare.py --vit "$VIT" --device "$DEVICE" --precision "$PRECISION" \
        --config notebook --threads 2 --side-timeout 90 $BENCH_ARGS || true
    run_phase compare-pytorch-foreach 200 "$WORK/compare-$PRECISION-pytorch-foreach.txt" \
        $PY bench/compare.py --vit "$VIT" --device "$DEVICE" --precision "$PRECISION" \
        --config notebook --threads 2 --side-timeout 90 $BENCH_ARGS --sides vit,timm \
        --pytorch-foreach ${GRAPH_FLAG:+--cuda-graph} || true
    pack_now
fi

# Two epochs: the first includes CUDA/cuDNN warm-up, the second is the steady-state
# epoch time (training on all images plus the 10,000-image evaluation). Then the same
# with the graph ($GRAPH_FLAG), whose losses should match the eager run's closely.
train() {
    local run=$1 limit=$2
    shift 2
    run_phase "$run" "$limit" "$WORK/$run.txt" "${TRAIN[@]}" --out "$WORK/$run" "$@"
}
# Without the epoch phases the strong recipe takes --cuda-graph as given.
STRONG_FLAGS=$GRAPH_FLAG
if wanted epoch; then
    train epoch 180 --epochs 2 --warmup-epochs 1 || true
    STRONG_FLAGS=""
    if [ -n "$GRAPH_FLAG" ] && train epoch-graph 180 --epochs 2 --warmup-epochs 1 $GRAPH_FLAG; then
        STRONG_FLAGS=$GRAPH_FLAG
    elif [ "$GRAPH_FLAG" = --cuda-graph ]; then
        # The notebook's crop and flip may be what failed to capture.
        STRONG_FLAGS="--cuda-graph=step"
    fi
    pack_now
fi
# Runs a strong-recipe training command (after RUN LEFT) for at most LEFT seconds, its
# output time-stamped into LOG: a SIGINT at the limit makes vit finish its step (or
# evaluation), save its state and stop (a second or two); SIGKILL 15 s later (a slow
# evaluation: its epoch is lost, but the state of the one before is there). The callers
# hold back RESERVE_S of the budget for that and the last packing. Returns vit's status (124: the
# limit), recorded in failures.txt, or in strong-plan.txt when a resumed call is planned.
train_strong() {
    local run=$1 left=$2 log=$3
    shift 3
    local status=0 started=$SECONDS
    # --foreground: SIGINT to vit alone (a second one, to its process group, would make it
    # quit without saving).
    {
        echo "== $run started"
        timeout --foreground -s INT -k 15 "$left" "$@"
    } 2>&1 | stamp | tee "$log" || status=$?
    # The run folder (after --out), where a run killed after the SIGINT left its state. A
    # kill before the limit (the kernel's, out of memory) is a failure.
    local out="" previous=""
    for arg in "$@"; do
        [ "$previous" != --out ] || out=$arg
        previous=$arg
    done
    if [ "$status" -eq 137 ] && [ $((SECONDS - started)) -ge "$left" ] \
        && [ -e "$out/resume.safetensors" ]; then
        echo "$run killed 15 s after its SIGINT; the state of an earlier epoch is saved" \
            | tee -a "$WORK/failures.txt"
        status=124
    fi
    if [ "$status" -eq 124 ] && [ "$EXTRA_S" -gt 0 ]; then
        echo "$run stopped at this call's limit (${left} s), state saved, for PHASES=resume" \
            | tee -a "$WORK/strong-plan.txt"
    elif [ "$status" -eq 124 ]; then
        echo "$run stopped at its time limit (${left} s), state saved" | tee -a "$WORK/failures.txt"
    elif [ "$status" -ne 0 ]; then
        echo "$run failed: status $status" | tee -a "$WORK/failures.txt"
    fi
    return "$status"
}

# A second call: the first call's strong run, resumed with the command it was started with,
# for what is left of this call's budget (its log: RUN-resume-N.txt).
if wanted resume; then
    left=$((BUDGET_S - (SECONDS - START) - RESERVE_S))
    if [ "$left" -lt 30 ]; then
        echo "no time left to resume the strong run (${left} s)" | tee -a "$WORK/strong-plan.txt"
        exit 0
    fi
    mapfile -d '' -t resume_command <"$WORK/$RESUME_RUN.args"
    # A run the first call finished (it had time to spare) has nothing to resume.
    planned=""
    for i in "${!resume_command[@]}"; do
        [ "${resume_command[$i]}" != --epochs ] || planned=${resume_command[$((i + 1))]}
    done
    finished=$(($(wc -l <"$WORK/$RESUME_RUN/metrics.csv" 2>/dev/null || echo 1) - 1))
    if [ -n "$planned" ] && [ "$finished" -ge "$planned" ]; then
        echo "$RESUME_RUN already finished its $planned epochs: nothing to resume" \
            | tee -a "$WORK/strong-plan.txt"
        exit 0
    fi
    n=1
    while [ -e "$WORK/$RESUME_RUN-resume-$n.txt" ]; do n=$((n + 1)); done
    echo "$RESUME_RUN-resume-$n: resumed for the ${left} s left" | tee -a "$WORK/strong-plan.txt"
    train_strong "$RESUME_RUN-resume-$n" "$left" "$WORK/$RESUME_RUN-resume-$n.txt" \
        "${resume_command[@]}" --resume || true
    exit 0
fi
wanted strong || exit 0

# The strong recipe's own epoch time, from two epochs of it (the EMA update runs outside
# the graph, and the EMA model has its own evaluation). Should that fail with the
# augmentation in the graph, again with --cuda-graph=step; then eagerly.
case $STRONG_FLAGS in
    --cuda-graph | --cuda-graph=batch) candidates="$STRONG_FLAGS --cuda-graph=step eager" ;;
    --cuda-graph=step) candidates="--cuda-graph=step eager" ;;
    *) candidates=eager ;;
esac
for candidate in $candidates; do
    case $candidate in
        --cuda-graph=step) TIMING=strong-timing-step STRONG_FLAGS=$candidate ;;
        --cuda-graph*) TIMING=strong-timing STRONG_FLAGS=$candidate ;;
        *) TIMING=strong-timing-eager STRONG_FLAGS="" ;;
    esac
    status=0
    train "$TIMING" 180 "${STRONG[@]}" --epochs 2 --warmup-epochs 1 $STRONG_FLAGS || status=$?
    [ "$status" -eq 0 ] && break
    # A graph that hung (the phase's limit): straight to eager steps, as another would too.
    if [ "$status" -eq 124 ] && [ -n "$STRONG_FLAGS" ]; then
        TIMING=strong-timing-eager STRONG_FLAGS=""
        train "$TIMING" 180 "${STRONG[@]}" --epochs 2 --warmup-epochs 1 || true
        break
    fi
done
pack_now

# The strong recipe gets what is left of the budget, plus EXTRA_S for a resumed call (less
# that call's own start-up): as many epochs as fit at the timing run's second epoch (from
# its first epoch line to its second: training, evaluation and any wait for checkpoint
# writes), plus 2%. Its command goes to RUN.args (and its name to strong-run.txt) for
# PHASES=resume.
strong() {
    local run=$1
    local left=$((BUDGET_S - (SECONDS - START) - RESERVE_S))
    if [ "$left" -lt 60 ]; then
        echo "no time left for the strong recipe (${left} s)" | tee -a "$WORK/strong-plan.txt"
        return 0
    fi
    # The epoch time and the start-up (process start to the first epoch's own start) from
    # the timing run's log; else 1.25 x its last epoch_seconds; else 10 s, which the
    # SIGINT then bounds.
    local plan epochs epoch_s startup
    plan=$($PY -c '
import csv, re, sys
log, metrics, left, extra = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
startup = 0.0
try:
    text = open(log).read()
    start = float(re.search(r"^(\S+) == .* started", text, re.M).group(1))
    times = [float(t) for t in re.findall(r"^(\S+) Epoch: \d+,", text, re.M)]
    epoch_s = times[1] - times[0]
    startup = max(0.0, times[0] - start - epoch_s)
except (OSError, ValueError, IndexError, AttributeError):
    try:
        epoch_s = 1.25 * float(list(csv.DictReader(open(metrics)))[-1]["epoch_seconds"])
    except (OSError, ValueError, IndexError, KeyError):
        epoch_s = 10.0
epoch_s = max(epoch_s, 0.5)
starts = 2 if extra > 0 else 1
print(max(1, int((left + extra - starts * startup) / (epoch_s * 1.02))), f"{epoch_s:.3f}",
      f"{startup:.1f}")
' "$WORK/$TIMING.txt" "$WORK/$TIMING/metrics.csv" "$left" "$EXTRA_S") || plan="1 10.0 0"
    read -r epochs epoch_s startup <<<"$plan"
    epochs=${EPOCHS:-$epochs}
    local mix_off=()
    if [ -n "$MIX_OFF_PERCENT" ]; then
        local off=$((epochs * MIX_OFF_PERCENT / 100))
        mix_off=(--mix-off-epoch $((off > 0 ? off : 1)))
    fi
    echo "$run: $epochs epochs in the ${left} s left and ${EXTRA_S} s of a resumed call" \
        "($TIMING: ${epoch_s} s an epoch, ${startup} s to start) --batch-size $BATCH_SIZE ${STRONG[*]}${STRONG_FLAGS:+ $STRONG_FLAGS}${mix_off[*]:+ ${mix_off[*]}}" \
        | tee -a "$WORK/strong-plan.txt"
    local command=("${TRAIN[@]}" --out "$WORK/$run" "${STRONG[@]}" --epochs "$epochs"
        --warmup-epochs $((epochs / 30 + 1)) $STRONG_FLAGS "${mix_off[@]}")
    printf '%s\0' "${command[@]}" >"$WORK/$run.args"
    echo "$run" >"$WORK/strong-run.txt"
    train_strong "$run" "$left" "$WORK/$run.txt" "${command[@]}"
}
# A --cuda-graph run that failed before its first epoch: the rest of the time eagerly.
if ! strong strong && [ -n "$STRONG_FLAGS" ] && [ ! -e "$WORK/strong/last_model.safetensors" ]; then
    STRONG_FLAGS=""
    strong strong-eager || true
fi
