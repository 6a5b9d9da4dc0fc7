#!/usr/bin/env bash
# The shipped recipe scored on five folds on this machine's CPU, at the machine's default precision
# (trainer.precision=auto: bf16 autocast on a CPU with native bf16), one fold after another:
#
#   FOLDS="1 2 3 4 5" bash scripts/cpu_five_folds.sh
#
# Each fold is `python train.py experiment=vgg8_bc_hour data.fold=K` (protocol cv, its final epoch
# reported), run in $OUT/foldK (default outputs/cpu_five_folds). What is kept of it, to commit, is
# copied to $KEEP/foldK (default docs/results/cpu-bf16-5fold): metrics.json, the validation
# predictions, the composed config and the fold's wall time in seconds. A fold already kept there is
# skipped, so a later sitting continues the series. At the end `python -m esc50_lightning.report
# $KEEP` writes the table over the kept folds. Keep the machine otherwise quiet: a fold's time is
# part of its result.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-outputs/cpu_five_folds}
KEEP=${KEEP:-docs/results/cpu-bf16-5fold}
FOLDS=${FOLDS:-1 2 3 4 5}
PY=${PYTHON:-python}
mkdir -p "$OUT" "$KEEP"
{
  date -u
  git log -1 --format='commit %H %s' 2>/dev/null || true
  lscpu | grep -E 'Model name|^CPU\(s\)'
  echo "bf16 flags: $(grep -o -w -E 'avx512_bf16|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  $PY -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"
} >> "$KEEP/machine.txt" 2>&1

for k in $FOLDS; do
  run="$OUT/fold$k"
  keep="$KEEP/fold$k"
  if [[ -f "$keep/metrics.json" ]]; then
    echo "fold $k: kept before ($keep/metrics.json)"
    continue
  fi
  rm -rf "$run"
  start=$(date +%s)
  $PY train.py experiment=vgg8_bc_hour "data.fold=$k" "hydra.run.dir=$run" > "$OUT/fold$k.log" 2>&1
  mkdir -p "$keep/.hydra"
  echo $(($(date +%s) - start)) > "$keep/wall_seconds"
  cp "$run/.hydra/config.yaml" "$run/.hydra/overrides.yaml" "$keep/.hydra/"
  cp "$run/predictions_val.csv" "$run/train.log" "$keep/"
  cp "$run/metrics.json" "$keep/"  # last: its presence marks the fold done
  echo "fold $k: $(cat "$keep/wall_seconds") s"
done
$PY -m esc50_lightning.report "$KEEP"
