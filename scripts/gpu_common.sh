# Sourced by the GPU scripts (gpu_check.sh, gpu_long_schedule.sh): the repository as the working
# folder, $OUT and $WORK, the Python path and data cache, a clock against $BUDGET (note, left),
# the machine's description in $OUT/env.txt, and the data ($ESC50_ROOT, else laid out from
# ../shared/esc50 under $WORK). The sourcing script sets TAG (its log prefix), OUT_NAME (the
# default $OUT under the repository), WORK_DEFAULT and BUDGET first.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
OUT=${OUT:-$REPO/$OUT_NAME}
WORK=${WORK:-$WORK_DEFAULT}
PY=${PYTHON:-python}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
export ESC50_CACHE=${ESC50_CACHE:-$WORK/cache}
SECONDS=0

note() { echo "[$TAG ${SECONDS}s] $*" | tee -a "$OUT/progress.log"; }
left() { echo $((BUDGET - SECONDS)); }

{
  date -u
  git -C "$REPO" log -1 --format='commit %H %s' 2>/dev/null || true
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  $PY - <<'PYEOF' 2>&1 || true
import torch, lightning
from esc50_lightning.training.gpu_share import mps_daemon_status
print("torch", torch.__version__, "lightning", lightning.__version__, "cuda", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0))
print(mps_daemon_status())
PYEOF
} >"$OUT/env.txt"
note "environment written"
if ! $PY -c "import esc50_lightning, torch, hydra" 2>>"$OUT/progress.log"; then
  note "the Python environment cannot import esc50_lightning, torch and hydra: stopping"
  exit 1
fi

if [[ -z "${ESC50_ROOT:-}" ]]; then
  export ESC50_ROOT=$WORK/ESC-50
  if [[ ! -f $ESC50_ROOT/meta/esc50.csv ]]; then
    note "laying out ESC-50 in $ESC50_ROOT"
    timeout 300 $PY ../shared/esc50/materialize.py "$ESC50_ROOT" >>"$OUT/progress.log" 2>&1
  fi
fi
note "data at $ESC50_ROOT"
