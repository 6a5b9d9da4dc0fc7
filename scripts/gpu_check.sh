#!/usr/bin/env bash
# The GPU check of issue #28 (device-resident data, speed=gpu_fast, hydra/launcher=shared_gpu), for
# a session with one GPU: one call of at most 10 minutes (the budget below) on one H200; results go
# to "$OUT" as they come:
#
#   bash scripts/gpu_check.sh
#
# 1. env.txt: the GPU, versions, whether an MPS daemon runs;
# 2. fastpath.md/.json: python -m benchmarks.fastpath for cnn8 and the long-schedule
#    recipe (experiment=long_schedule: its vgg8, frontend and augmentation): today's path,
#    device-resident data alone, and speed=gpu_fast's (resident, batch 256, bf16, channels_last,
#    torch.compile) side by side; again without compile if the compiled run fails;
# 3. sweep.log, sweep.md: one command, a five-fold cv of experiment=long_schedule with
#    speed=gpu_fast for $EPOCHS epochs (default 200; 100 when under 400 s are left; a speed check,
#    not the recipe's 1000), the five runs sharing the GPU (hydra/launcher=shared_gpu), timed,
#    with each fold's final accuracy; skipped when too little time is left.
#
# Data: $ESC50_ROOT if set, else laid out from ../shared/esc50 (materialize.py) under $WORK.
# GPU_CHECK_DRY=1 runs the same steps on the CPU with tiny settings (a check of the script).
# GPU_CHECK_BUDGET_S (default 540) is the time after which no step starts and the sweep stops, so
# one call fits a 10-minute command limit. With less than that per command, run the two halves as
# two calls on the same (warm) machine: GPU_CHECK_STEPS=bench, then GPU_CHECK_STEPS=sweep; the
# data and cache under $WORK are reused.
TAG=gpu_check
OUT_NAME=gpu_check_out
WORK_DEFAULT=/tmp/esc50-gpu-check
BUDGET=${GPU_CHECK_BUDGET_S:-540}  # stop starting steps past this many seconds
source "$(dirname "$0")/gpu_common.sh"
DRY=${GPU_CHECK_DRY:-0}
STEPS=${GPU_CHECK_STEPS:-bench sweep}
EPOCHS=${EPOCHS:-}  # default: 200, or 100 when the sweep starts with under 400 s left
export ESC50_OUTPUTS=$WORK/outputs

if [[ $DRY == 1 ]]; then
  DEVICE=cpu
  BENCH_ARGS=(--models cnn4 --limit-per-class 1 --steps 1 --warmup 0 --repeats 1 --batch-size 8 --fast-batch-size 16)
  SWEEP_ARGS=(debug=tiny model=cnn4 compile=false data.fold=1,2 trainer.max_epochs=1 +trainer.limit_train_batches=2)
  SWEEP_JOBS=2
else
  DEVICE=cuda
  BENCH_ARGS=(--models cnn8,experiment=long_schedule --steps 20 --repeats 3)
  SWEEP_ARGS=(experiment=long_schedule data.fold=1,2,3,4,5 callbacks.progress_bar=null)
  SWEEP_JOBS=5
fi

# ---- 2. today's path against the fast path ---------------------------------------------------------
COMPILE=${COMPILE:-true}
if [[ " $STEPS " == *" bench "* ]]; then
  note "bench.fastpath (${BENCH_ARGS[*]}) ..."
  if timeout $(($(left) < 420 ? $(left) : 420)) $PY -m benchmarks.fastpath --device "$DEVICE" "${BENCH_ARGS[@]}" \
    --json "$OUT/fastpath.json" >"$OUT/fastpath.md" 2>"$OUT/fastpath.err"; then
    note "bench.fastpath done"
  else
    note "bench.fastpath failed (exit $?; fastpath.err); again without torch.compile"
    COMPILE=false
    if (($(left) > 240)); then
      timeout $(($(left) < 300 ? $(left) : 300)) $PY -m benchmarks.fastpath --device "$DEVICE" "${BENCH_ARGS[@]}" --no-compile \
        --json "$OUT/fastpath_nocompile.json" >"$OUT/fastpath_nocompile.md" 2>"$OUT/fastpath_nocompile.err" ||
        note "bench.fastpath --no-compile failed too (exit $?)"
    fi
  fi
  cat "$OUT/fastpath"*.md 2>/dev/null || true
fi
[[ " $STEPS " == *" sweep "* ]] || exit 0

# ---- 3. five folds sharing the GPU from one command --------------------------------------------------
REMAINING=$(left)
if ((REMAINING < 150)); then
  note "sweep skipped: ${REMAINING}s left of the ${BUDGET}s budget"
  exit 0
fi
SWEEP_TIMEOUT=$((REMAINING - 30))
if [[ -z $EPOCHS ]]; then
  EPOCHS=$((REMAINING >= 400 ? 200 : 100))
fi
[[ $DRY == 1 ]] || SWEEP_ARGS+=("trainer.max_epochs=$EPOCHS")
note "sweep: speed=gpu_fast compile=$COMPILE ${SWEEP_ARGS[*]}, $SWEEP_JOBS jobs, timeout ${SWEEP_TIMEOUT}s ..."
rm -rf "$ESC50_OUTPUTS"
START=$SECONDS
STATUS=0
timeout "$SWEEP_TIMEOUT" $PY train.py -m hydra/launcher=shared_gpu "hydra.launcher.n_jobs=$SWEEP_JOBS" \
  speed=gpu_fast "compile=$COMPILE" logger=csv "${SWEEP_ARGS[@]}" >"$OUT/sweep.log" 2>&1 || STATUS=$?
WALL=$((SECONDS - START))
note "sweep ended: exit $STATUS after ${WALL}s"
$PY - "$ESC50_OUTPUTS" "$WALL" "$STATUS" >"$OUT/sweep.md" <<'EOF' || note "sweep summary failed"
import json, sys
from pathlib import Path

outputs, wall, status = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
print(f"Sweep: one command, exit {status}, {wall} s wall (start-up, compile, training, validation).\n")
print("| run | fold | epochs | final acc | s/epoch (train.log, median) |")
print("|---|---:|---:|---:|---:|")
accs = []
for metrics in sorted(outputs.rglob("metrics.json")):
    m = json.loads(metrics.read_text())
    seconds = []
    for line in (metrics.parent / "train.log").read_text().splitlines():
        if "| epoch " in line or " - epoch " in line:
            tail = line.rsplit("|", 1)[-1].strip()
            if tail.endswith(" s"):
                seconds.append(float(tail[:-2]))
    per_epoch = sorted(seconds)[len(seconds) // 2] if seconds else float("nan")
    acc = m["headline"].get("acc", float("nan"))
    accs.append(acc)
    print(f"| {metrics.parent.name} | {m['fold']} | {m['epochs']} | {acc:.4f} | {per_epoch:.2f} |")
if accs:
    print(f"\nMean final accuracy over {len(accs)} runs: {sum(accs) / len(accs):.4f}")
EOF
cat "$OUT/sweep.md"
note "done"
