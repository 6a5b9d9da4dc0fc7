"""An Optuna pruner whose verdicts a test can predict (``hparams_search.pruner``'s plumbing is the
point): it prunes every trial but the first at the first value the trial reports."""

from __future__ import annotations

import optuna


class PruneAllButFirst(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number > 0 and bool(trial.intermediate_values)
