#!/usr/bin/env bash
# The shipped recipe scored on five folds on this machine's CPU, at the machine's default precision
# (trainer.precision=auto: bf16 autocast on a CPU with native bf16), one fold after another:
#
#   FOLDS="1 2 3 4 5" bash scripts/cpu_five_folds.sh        # OUT=outputs/cpu_five_folds by default
#
# Each fold is `python train.py experiment=vgg8_bc_hour data.fold=K` (protocol cv, its final epoch
# reported), written to $OUT/foldK with its wall time in $OUT/foldK/wall_seconds; a fold that has a
# metrics.json already is skipped, so the script continues a series another sitting started. At the
# end `python -m esc50_lightning.report $OUT` writes the table. Keep the machine otherwise quiet:
# a fold's time is part of its result.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-outputs/cpu_five_folds}
FOLDS=${FOLDS:-1 2 3 4 5}
PY=${PYTHON:-python}
mkdir -p "$OUT"
{
  date -u
  git log -1 --format='commit %H %s' 2>/dev/null || true
  lscpu | grep -E 'Model name|^CPU\(s\)'
  echo "bf16 flags: $(grep -o -w -E 'avx512_bf16|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  $PY -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"
} > "$OUT/machine.txt" 2>&1

for k in $FOLDS; do
  run="$OUT/fold$k"
  if [[ -f "$run/metrics.json" ]]; then
    echo "fold $k: done before ($run/metrics.json)"
    continue
  fi
  rm -rf "$run"
  start=$(date +%s)
  $PY train.py experiment=vgg8_bc_hour "data.fold=$k" "hydra.run.dir=$run" > "$OUT/fold$k.log" 2>&1
  echo $(($(date +%s) - start)) > "$run/wall_seconds"
  echo "fold $k: $(cat "$run/wall_seconds") s"
done
$PY -m esc50_lightning.report "$OUT"
