"""``hparams_search=<name>``: an Optuna search (ask and tell) whose trials are training runs.

Each trial runs ``train.py`` with this command's overrides plus the trial's values, in
``<sweep>/trials/NNN``; its objective is an entry of the validation fold's best epoch in that run's
metrics.json (``hparams_search.metric``). Trials live in ``<sweep>/optuna.db`` (SQLite), so a
search stopped half-way continues with ``hparams_search.dir=<sweep>`` up to ``n_trials`` finished
trials. The best trial is written as ``<sweep>/best.yaml`` (its values and score) and
``<sweep>/best.sh`` (the command that trains it).

Our own small driver, not Hydra's Optuna sweeper: that plugin (1.3.x) pins optuna<3, whose SQLite
storage breaks with SQLAlchemy 2.
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from esc50_lightning.errors import UserError

log = logging.getLogger(__name__)

STATE_DONE = ("COMPLETE", "FAIL")


def _suggest(trial: Any, key: str, spec: dict[str, Any]) -> Any:
    kind = spec.get("type")
    if kind == "float":
        return trial.suggest_float(key, spec["low"], spec["high"], log=bool(spec.get("log")))
    if kind == "int":
        return trial.suggest_int(key, spec["low"], spec["high"], log=bool(spec.get("log")))
    if kind == "categorical":
        return trial.suggest_categorical(key, list(spec["choices"]))
    raise UserError(f"hparams_search.params.{key}: type must be float, int or categorical, not {kind!r}")


def base_overrides() -> list[str]:
    """This command's overrides, less the search's own (each trial is a plain training run)."""
    return [o for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith("hparams_search")]


def search(cfg: DictConfig) -> dict[str, Any]:
    try:
        import optuna
    except ImportError:
        raise UserError('hparams_search needs Optuna: pip install -e ".[search]"') from None
    spec = OmegaConf.to_container(cfg.hparams_search, resolve=True)
    assert isinstance(spec, dict)
    sweep = Path(spec.get("dir") or cfg.paths.output_dir).resolve()
    (sweep / "trials").mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{sweep / 'optuna.db'}"
    metric, direction = spec.get("metric", "loss"), spec.get("direction", "minimize")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=spec["name"],
        storage=storage,
        direction=direction,
        sampler=optuna.samplers.TPESampler(seed=cfg.seed),
        load_if_exists=True,
    )
    base = base_overrides()
    script = Path(sys.argv[0]).resolve()
    n_trials = int(spec.get("n_trials", 20))
    log.info("hparams_search=%s: %d trials in %s (storage %s)", spec["name"], n_trials, sweep, storage)

    def finished() -> int:
        return sum(t.state.name in STATE_DONE for t in study.get_trials(deepcopy=False))

    while finished() < n_trials:
        trial = study.ask()
        values = {key: _suggest(trial, key, s) for key, s in spec["params"].items()}
        run_dir = sweep / "trials" / f"{trial.number:03d}"
        overrides = [*base, *(f"{k}={v}" for k, v in values.items()), f"hydra.run.dir={run_dir}"]
        log.info("trial %d: %s", trial.number, " ".join(f"{k}={v}" for k, v in values.items()))
        proc = subprocess.run([sys.executable, str(script), *overrides], cwd=Path.cwd())
        metrics_file = run_dir / "metrics.json"
        if proc.returncode != 0 or not metrics_file.is_file():
            log.warning("trial %d failed (exit status %d)", trial.number, proc.returncode)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        best = json.loads(metrics_file.read_text()).get("best") or {}
        value = best.get(metric)
        if value is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            choices = ", ".join(sorted(best))
            raise UserError(f"hparams_search.metric={metric}: not in metrics.json's best entry ({choices})")
        study.tell(trial, float(value))
        log.info("trial %d: validation %s %.4f", trial.number, metric, value)

    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not complete:
        raise UserError(f"hparams_search={spec['name']}: no trial finished; see {sweep}/trials")
    best_trial = study.best_trial
    best_overrides = [*base, *(f"{k}={v}" for k, v in best_trial.params.items())]
    record = {
        "search": spec["name"],
        "trial": best_trial.number,
        "trials": len(complete),
        f"val_{metric}": best_trial.value,
        "direction": direction,
        "params": best_trial.params,
        "overrides": best_overrides,
        "run_dir": str(sweep / "trials" / f"{best_trial.number:03d}"),
    }
    (sweep / "best.yaml").write_text(yaml.safe_dump(record, sort_keys=False))
    command = " ".join(["python", shlex.quote(script.name), *map(shlex.quote, best_overrides)])
    (sweep / "best.sh").write_text(
        "#!/bin/sh\n"
        f"# hparams_search={spec['name']}: trial {best_trial.number} of {len(complete)}, "
        f"validation {metric} {best_trial.value:.4f}. Extra overrides: ./best.sh data.fold=3\n"
        f'cd {shlex.quote(str(script.parent))} && exec {command} "$@"\n'
    )
    (sweep / "best.sh").chmod(0o755)
    print(f"best trial: {best_trial.number} (validation {metric} {best_trial.value:.4f})")
    print(f"recipe: {sweep / 'best.yaml'}\ncommand: {sweep / 'best.sh'}")
    return {"headline": {}, "best_trial": record}
