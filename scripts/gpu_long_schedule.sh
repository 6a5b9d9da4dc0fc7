#!/usr/bin/env bash
# Issue #28 part 4 on one GPU, in as many 10-minute calls as it takes: tune experiment=long_schedule
# under holdout, then report it over five folds (cv) and two seeds. Results go to "$OUT".
#
#   LONG_STEP=search bash scripts/gpu_long_schedule.sh
#     Continues the holdout search (hparams_search=long_schedule, test folds 2 and 4, validation
#     folds 1 and 3, 4 trials sharing the GPU) until the budget is spent, then stops it (SIGTERM:
#     the trial under way is asked again next time). The study travels in the repository:
#     docs/results/long-schedule/search/optuna.db is copied in first and the grown study comes
#     back as $OUT/search/optuna.db, with the search report (search.md, trials, history) and
#     $OUT/tta.md (scripts/compare_tta.py: the best local trial's runs scored on their validation
#     folds with the whole clip and with five cuts averaged). Commit the study to continue in
#     the next GPU session. When it has its trials, copy the best settings (search.md) into
#     conf/experiment/long_schedule.yaml.
#   LONG_STEP=cv bash scripts/gpu_long_schedule.sh
#     The recipe (RECIPE, default experiment=long_schedule) over folds 1-5 and seeds 1 and 2 from
#     one command, five runs at a time on the GPU (hydra/launcher=shared_gpu), timed; the
#     five-fold report of each seed comes back as $OUT/cv/.
#
# The command lines are fixed here, so every session continues the same study (a search refuses
# a continuation with other overrides). LONG_DRY=1 runs the plumbing on the CPU with a small space
# and tiny runs (a check of the script, not of the recipe). LONG_BUDGET_S (default 540) is the
# time after which the step is stopped.
TAG=gpu_long
OUT_NAME=gpu_long_out
WORK_DEFAULT=/tmp/esc50-gpu-long
BUDGET=${LONG_BUDGET_S:-540}
source "$(dirname "$0")/gpu_common.sh"
DRY=${LONG_DRY:-0}
STEP=${LONG_STEP:-search}
STATE=$REPO/docs/results/long-schedule/search

note "step $STEP; budget ${BUDGET}s"
if (($(left) < 180)); then
  note "under 180 s of the budget left: nothing started"
  exit 0
fi

if [[ $DRY == 1 ]]; then
  COMMON=(debug=tiny model=cnn4 logger=csv)
  SPACE=(hparams_search=lr_wd hparams_search.n_trials=2 "hparams_search.folds=[2,4]" hparams_search.n_jobs=2
    "hparams_search.pruner={_target_:optuna.pruners.MedianPruner,n_startup_trials:1}")
  CV_RUNS=(data.fold=1,2 seed=1 hydra.launcher.n_jobs=2)
else
  COMMON=(speed=gpu_fast logger=csv callbacks.progress_bar=null)
  SPACE=(hparams_search=long_schedule hparams_search.n_trials=24 "hparams_search.folds=[2,4]" hparams_search.n_jobs=4)
  CV_RUNS=(data.fold=1,2,3,4,5 seed=1,2 hydra.launcher.n_jobs=5)
fi

case $STEP in
search)
  SWEEP=$WORK/search
  mkdir -p "$SWEEP"
  if [[ $DRY != 1 && -f $STATE/optuna.db && ! -f $SWEEP/optuna.db ]]; then
    cp "$STATE/optuna.db" "$SWEEP/optuna.db"
    note "continuing the study in $STATE/optuna.db"
  fi
  RECIPE=(experiment=long_schedule)
  [[ $DRY == 1 ]] && RECIPE=()
  export ESC50_OUTPUTS=$WORK/outputs  # the search's own log folder; trials live under $SWEEP
  STATUS=0
  # SIGTERM reaches the search, which passes it on to its trials; the unfinished one is asked again.
  # 150 s are kept for the report and the test-time averaging comparison below
  timeout --signal=TERM --kill-after=30 $(($(left) - 150)) $PY train.py "${RECIPE[@]}" data.protocol=holdout \
    "${COMMON[@]}" "${SPACE[@]}" "hparams_search.dir=$SWEEP" >"$OUT/search.log" 2>&1 || STATUS=$?
  note "search ended: exit $STATUS ($([[ $STATUS == 124 ]] && echo 'budget spent, to be continued' || echo finished))"
  $PY -m esc50_lightning.report "$SWEEP" >"$OUT/search_report.md" 2>>"$OUT/progress.log" || note "report failed"
  mkdir -p "$OUT/search"
  cp "$SWEEP/optuna.db" "$OUT/search/" 2>/dev/null || note "no study written"
  cp "$SWEEP"/report/* "$SWEEP"/best.yaml "$OUT/search/" 2>/dev/null || true
  # test-time averaging against the whole clip, on the best local trial's validation folds
  timeout $(($(left) > 20 ? $(left) - 10 : 10)) $PY scripts/compare_tta.py "$SWEEP" "$WORK/tta" >"$OUT/tta.md" \
    2>>"$OUT/progress.log" || note "test-time averaging comparison incomplete"
  cat "$OUT/tta.md"
  ;;
cv)
  RECIPE=${RECIPE:-experiment=long_schedule}
  [[ $DRY == 1 ]] && RECIPE=experiment=seed
  export ESC50_OUTPUTS=$WORK/cv
  rm -rf "$ESC50_OUTPUTS"
  START=$SECONDS
  STATUS=0
  timeout --signal=TERM --kill-after=30 $(($(left) - 60)) $PY train.py -m "$RECIPE" hydra/launcher=shared_gpu \
    "${COMMON[@]}" "${CV_RUNS[@]}" >"$OUT/cv.log" 2>&1 || STATUS=$?
  note "cv ended: exit $STATUS after $((SECONDS - START))s wall ($RECIPE ${CV_RUNS[*]})"
  $PY -m esc50_lightning.report "$ESC50_OUTPUTS" >"$OUT/cv_report.md" 2>>"$OUT/progress.log" || note "report failed"
  mkdir -p "$OUT/cv"
  cp "$ESC50_OUTPUTS"/report/* "$OUT/cv/" 2>/dev/null || true
  ;;
*)
  note "LONG_STEP=$STEP: choose search or cv"
  exit 2
  ;;
esac
note "done"
