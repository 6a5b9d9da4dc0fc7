"""``hparams_search=<name>``: an Optuna search (ask and tell) whose trials are training runs.

A trial trains once per fold the search names (``hparams_search.folds``, each under
``data.protocol=holdout``: test fold ``f``, validation fold ``f - 1``), in
``<sweep>/trials/NNN/fold<f>``, with this command's overrides plus the trial's values. Its
objective is the mean over those folds of an entry of the validation fold's best epoch in each
run's metrics.json (``hparams_search.metric``; the entry ``hparams_search.epoch``: the epoch with the
lowest validation loss, or the final one); the test folds are never read. ``n_jobs`` trials run at
once, each fold a child process (threads here only wait for them).

With ``hparams_search.pruner`` (an Optuna pruner), each run reports its validation metric to this
process after every validation (``training/search_trial.py``), at step ``1000 * i + 1000 * epoch /
max_epochs`` for the trial's ``i``-th fold: trials are compared at the same share of their schedule,
so a longer schedule is not pruned for being behind at the same epoch. A pruned trial's run stops
after that epoch and its remaining folds are not trained.

Trials live in ``<sweep>/optuna.db`` (SQLite). A search stopped half-way, even killed, continues with
``hparams_search.dir=<sweep>`` up to ``n_trials`` finished trials: a trial left running by the
killed search is marked failed and its values are tried again. A continued search never repeats a
point it tried: its sampler is seeded with ``seed`` plus the trials the study holds, so its draws
are new ones, not a replay of the first start's. Trials die with their search (a parent-death
signal, ``trial_dies_with_parent``): no trial outlives a killed search to train beside the trial
a continued search starts with the same values. ``<sweep>/best.yaml`` is the best
trial as a recipe (a primary config over ``train``), ``<sweep>/best.sh`` the command that trains it.

Our own small driver, not Hydra's Optuna sweeper: that plugin (1.3.x) pins optuna<3, whose SQLite
storage breaks with SQLAlchemy 2 (docs/tracking.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from esc50_lightning.errors import UserError
from esc50_lightning.filelock import file_lock

log = logging.getLogger(__name__)

STUDY_FILE = "optuna.db"
RECIPE_FILE = "best.yaml"
# A failed trial carries this user attribute (why); a FAIL without it was interrupted, not finished.
ERROR_ATTR = "error"
# A pruned trial carries this user attribute: where it was stopped ("fold 2, epoch 150").
PRUNED_ATTR = "pruned"
# Intermediate steps of one fold: a run reports at 1000 * epoch / max_epochs.
STEPS_PER_FOLD = 1000
# metrics.json entries a search can score (tasks/results.py).
EPOCHS = ("best", "final")
# Keys a recipe leaves to the command that runs it: how it is evaluated, debugged, searched, launched.
NOT_IN_RECIPE = ("data.protocol", "data.fold", "debug", "hparams_search", "hydra", "ckpt_path")


@dataclass
class SearchSpec:
    """``cfg.hparams_search``, checked."""

    name: str
    metric: str
    epoch: str
    direction: str
    n_trials: int
    n_jobs: int
    folds: list[int]
    params: dict[str, dict[str, Any]]
    dir: str | None
    pruner: Any = None  # an optuna.pruners.BasePruner, or None: every trial runs to its end

    @classmethod
    def from_config(cls, cfg: DictConfig) -> SearchSpec:
        spec = OmegaConf.to_container(cfg.hparams_search, resolve=True)
        assert isinstance(spec, dict)
        name = spec.get("name", "search")
        epoch = spec.get("epoch", "best")
        if epoch not in EPOCHS:
            raise UserError(
                f"hparams_search.epoch={epoch} must be best (the epoch with the lowest validation loss) "
                "or final"
            )
        direction = spec.get("direction", "minimize")
        if direction not in ("minimize", "maximize"):
            raise UserError(f"hparams_search.direction={direction} must be minimize or maximize")
        n_trials = int(spec.get("n_trials", 20))
        if n_trials < 1:
            raise UserError(f"hparams_search.n_trials={n_trials} must be at least 1")
        n_jobs = spec.get("n_jobs")
        n_jobs = int(n_jobs) if n_jobs is not None else _launcher_jobs()
        if n_jobs < 1:
            raise UserError(f"hparams_search.n_jobs={n_jobs} must be at least 1")
        folds = spec.get("folds")
        folds = [int(cfg.data.fold)] if folds is None else [int(f) for f in folds]
        known = [int(f) for f in cfg.data.dataset.folds]
        bad = [f for f in folds if f not in known]
        if bad or not folds or len(set(folds)) != len(folds):
            raise UserError(
                f"hparams_search.folds={folds}: give distinct test folds of data.dataset.folds {known} "
                "(each trial trains once per fold, validating on the fold before it)"
            )
        recipe_name = spec.get("experiment")  # a space searching around one recipe names it
        chosen = HydraConfig.get().runtime.choices.get("experiment")
        if recipe_name and chosen != recipe_name:
            raise UserError(
                f"hparams_search={name} searches the settings of experiment={recipe_name}, but this "
                f"command chose {f'experiment={chosen}' if chosen else 'no experiment'}: "
                f"add experiment={recipe_name}"
            )
        params = spec.get("params") or {}
        if not params:
            raise UserError(f"hparams_search={name}: params is empty; name at least one key to search")
        pruner = None
        if cfg.hparams_search.get("pruner"):
            import optuna

            # here, not at the top: the report reads this module and needs no torch
            from esc50_lightning.factory import instantiate_setting

            pruner = instantiate_setting(cfg.hparams_search.pruner, "hparams_search.pruner")
            if not isinstance(pruner, optuna.pruners.BasePruner):
                raise UserError(
                    f"hparams_search.pruner: {type(pruner).__name__} is not an Optuna pruner "
                    "(_target_: optuna.pruners.MedianPruner, say)"
                )
        metric = spec.get("metric", "loss")
        return cls(name, metric, epoch, direction, n_trials, n_jobs, folds, params, spec.get("dir"), pruner)


def _launcher_jobs() -> int:
    """With ``hydra/launcher=local_parallel`` (joblib), its ``n_jobs`` trials at once; else one."""
    launcher = HydraConfig.get().launcher
    if str(launcher.get("_target_", "")).endswith("JoblibLauncher"):
        return max(1, int(launcher.get("n_jobs") or 1))
    return 1


# prctl(2) option: the signal a process gets when the thread that started it ends.
PR_SET_PDEATHSIG = 1


def trial_dies_with_parent() -> Any:
    """A ``preexec_fn`` for a trial's process: killed (SIGKILL) when its search dies, however it
    dies, so that a continued search never trains beside an orphan. ``None`` off Linux.

    The signal follows the thread that started the child (here the trial's worker thread, which
    waits for it), and a parent already gone before ``prctl`` ran is caught by comparing the
    parent's pid. libc is looked up here, in the parent: the child, between fork and exec, only
    calls it.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    parent = os.getpid()

    def arm() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the search died while this process was being started
            os._exit(1)

    return arm


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


def main_config_source() -> str:
    """The config folder this search was composed from (``file://.../conf``), so that the recipe
    it writes into the sweep folder composes ``train`` from the same configs."""
    from hydra.core.hydra_config import HydraConfig

    sources = HydraConfig.get().runtime.config_sources
    return next(f"{s.schema}://{s.path}" for s in sources if s.provider == "main")


def _leaves_recipe(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") or key.startswith(k + "/") for k in NOT_IN_RECIPE)


def recipe(overrides: list[str], groups: set[str]) -> tuple[dict[str, Any], list[str]]:
    """The YAML of a primary config that composes ``train`` with ``overrides``, and the overrides
    a config file cannot hold (deletions, packages), which stay on the command line.

    Group choices become defaults-list entries, values become keys after ``_self_`` (so they win
    over the recipe a chosen ``experiment`` brings, as on the command line). Evaluation and
    launching (protocol, fold, debug, hydra) are left to the command that runs it.
    """
    defaults: dict[str, str] = {}
    body = OmegaConf.create({})
    extra: list[str] = []
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.key_or_group
        if _leaves_recipe(key):
            continue
        if o.is_delete() or o.package is not None:
            extra.append(o.input_line)
        elif key in groups:
            defaults[key] = str(o.value())
        else:
            OmegaConf.update(body, key, o.value(), force_add=True)
    entries: list[Any] = ["train", *({f"override {g}": v} for g, v in defaults.items()), "_self_"]
    text = {"defaults": entries, "hydra": {"searchpath": [main_config_source()]}}
    return {**text, **OmegaConf.to_container(body)}, extra


class Search:
    """One study: claims trials up to ``n_trials`` finished, runs them ``n_jobs`` at once."""

    def __init__(self, cfg: DictConfig, spec: SearchSpec, sweep: Path):
        import optuna

        self.optuna, self.spec, self.sweep = optuna, spec, sweep
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.create_study(
            study_name=spec.name,
            storage=f"sqlite:///{sweep / STUDY_FILE}",
            direction=spec.direction,
            pruner=spec.pruner or optuna.pruners.NopPruner(),
            load_if_exists=True,
        )
        # Seeded anew with the same seed, a continued search's sampler would replay the draws of
        # the first start and try its points again; past the trials already held, its draws are new.
        # A new search (no trials yet) samples as it always did with this seed.
        held = len(self.study.get_trials(deepcopy=False))
        self.study.sampler = optuna.samplers.TPESampler(seed=None if cfg.seed is None else cfg.seed + held)
        self.base = base_overrides()
        # A study continued with other folds, another metric or other settings would compare
        # trials that are not comparable.
        recorded = {
            "metric": spec.metric,
            "epoch": spec.epoch,
            "direction": spec.direction,
            "folds": spec.folds,
            "overrides": self.base,
        }
        for key, value in recorded.items():
            before = self.study.user_attrs.get(key)
            if before is not None and before != value:
                what = "the command's overrides" if key == "overrides" else f"hparams_search.{key}"
                raise UserError(
                    f"{what} {value} differ from the search's in {sweep}, {before}: "
                    "continue it with the same, or start a new search"
                )
            self.study.set_user_attr(key, value)
        self.dataset_folds = [int(f) for f in cfg.data.dataset.folds]
        self.script = Path(sys.argv[0]).resolve()
        self.lock = threading.Lock()
        self.children: set[subprocess.Popen] = set()
        self.stopping = False

    def finished(self) -> int:
        return sum(
            t.state.name in ("COMPLETE", "PRUNED") or (t.state.name == "FAIL" and ERROR_ATTR in t.user_attrs)
            for t in self.study.get_trials(deepcopy=False)
        )

    def requeue_interrupted(self) -> None:
        """Trials a killed search left running: failed (without an error) and asked again."""
        for t in self.study.get_trials(deepcopy=False, states=(self.optuna.trial.TrialState.RUNNING,)):
            self.study.tell(t.number, state=self.optuna.trial.TrialState.FAIL)
            self.study.enqueue_trial(t.params, skip_if_exists=False)
            log.info("trial %d was interrupted: its values are tried again", t.number)

    def run(self) -> None:
        self.requeue_interrupted()
        todo = self.spec.n_trials - self.finished()
        if todo <= 0:
            return

        def claim() -> bool:
            nonlocal todo
            with self.lock:
                if todo <= 0 or self.stopping:
                    return False
                todo -= 1
                return True

        def worker() -> None:
            while claim():
                self.one_trial()

        jobs = min(self.spec.n_jobs, todo)
        with ThreadPoolExecutor(jobs) as pool:
            futures = [pool.submit(worker) for _ in range(jobs)]
            for f in futures:
                try:
                    f.result()
                except BaseException:
                    self.stopping = True  # the others end after their trial
                    raise

    def one_trial(self) -> None:
        with self.lock:  # ask() reads the study and samples: one thread at a time
            trial = self.study.ask()
            values = {key: _suggest(trial, key, s) for key, s in self.spec.params.items()}
        log.info("trial %d: %s", trial.number, " ".join(f"{k}={v}" for k, v in values.items()))
        scores: dict[int, float] = {}
        for position, fold in enumerate(self.spec.folds):
            if self.stopping:  # another trial raised: this one is interrupted, not failed
                self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
                return
            try:
                score, error, pruned = self.one_fold(trial, position, values, fold)
            except BaseException:
                self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
                raise
            if pruned:
                trial.set_user_attr(PRUNED_ATTR, f"fold {fold}, {pruned}")
                self.study.tell(trial, state=self.optuna.trial.TrialState.PRUNED)
                log.info("trial %d: pruned at fold %d, %s", trial.number, fold, pruned)
                return
            if error:
                log.warning("trial %d failed: %s", trial.number, error)
                trial.set_user_attr(ERROR_ATTR, error)
                self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
                return
            scores[fold] = score
            trial.set_user_attr(f"fold{fold}", score)
        value = sum(scores.values()) / len(scores)
        self.study.tell(trial, value)
        per_fold = ", ".join(f"fold {f} {v:.4f}" for f, v in scores.items())
        log.info("trial %d: validation %s %.4f (%s)", trial.number, self.spec.metric, value, per_fold)

    def one_fold(
        self, trial: Any, position: int, values: dict[str, Any], fold: int
    ) -> tuple[float, str | None, str | None]:
        """Train the trial's ``position``-th fold: its score, an error, and where it was pruned."""
        run_dir = self.sweep / "trials" / f"{trial.number:03d}" / f"fold{fold}"
        overrides = [
            *self.base,
            *(f"{k}={v}" for k, v in values.items()),
            f"data.fold={fold}",
            f"hydra.run.dir={run_dir}",
        ]
        from esc50_lightning.training.search_trial import ReportToSearch  # imports Lightning

        child: subprocess.Popen | None = None
        pruned = None
        with ExitStack() as stack:
            output = None
            if self.spec.n_jobs > 1:  # parallel trials would interleave their progress on the console
                run_dir.mkdir(parents=True, exist_ok=True)
                output = stack.enter_context(open(run_dir.parent / f"fold{fold}.out", "w"))
            # with a pruner: reports from the run, verdicts to it (training/search_trial.py)
            child_ends: list[int] = []
            own_ends: list[int] = []
            if self.spec.pruner is not None:
                reports_r, reports_w = os.pipe()
                verdicts_r, verdicts_w = os.pipe()
                child_ends, own_ends = [reports_w, verdicts_r], [reports_r, verdicts_w]

                def close_left() -> None:
                    for fd in own_ends + child_ends:
                        os.close(fd)

                stack.callback(close_left)
                overrides += [
                    f"+callbacks.search_trial._target_={ReportToSearch.__module__}.{ReportToSearch.__name__}",
                    f"+callbacks.search_trial.metric=val/{self.spec.metric}",
                    f"+callbacks.search_trial.to_search={reports_w}",
                    f"+callbacks.search_trial.from_search={verdicts_r}",
                ]
            try:
                with self.lock:
                    child = subprocess.Popen(
                        [sys.executable, str(self.script), *overrides],
                        cwd=Path.cwd(),
                        stdout=output,
                        stderr=output,
                        pass_fds=child_ends,
                        preexec_fn=trial_dies_with_parent(),  # only calls prctl: safe beside threads
                    )
                    self.children.add(child)
                while child_ends:  # the child holds them now; the reports end when it does
                    os.close(child_ends.pop())
                if own_ends:
                    pruned = self.answer_reports(trial, position, *own_ends)
                returncode = child.wait()
            finally:
                with self.lock:
                    self.children.discard(child)
        metrics_file = run_dir / "metrics.json"
        if returncode != 0 or not metrics_file.is_file():
            return 0.0, f"fold {fold}: exit status {returncode}, see {run_dir}", None
        if pruned:
            return 0.0, None, pruned
        entry = json.loads(metrics_file.read_text()).get(self.spec.epoch) or {}
        if self.spec.metric not in entry:
            choices = ", ".join(sorted(k for k in entry if k != "epoch"))
            raise UserError(
                f"hparams_search.metric={self.spec.metric}: not in metrics.json's {self.spec.epoch} "
                f"entry ({choices})"
            )
        return float(entry[self.spec.metric]), None, None

    def answer_reports(self, trial: Any, position: int, reports: int, verdicts: int) -> str | None:
        """Report each of a run's validations to the study and answer whether to prune, until
        the run ends; ``"epoch E of M"`` if it was pruned."""
        from esc50_lightning.training.search_trial import GO, PRUNE

        pruned = None
        with open(reports, closefd=False) as lines:
            for line in lines:
                report = json.loads(line)
                epoch, epochs = int(report["epoch"]), max(1, int(report["max_epochs"]))
                step = position * STEPS_PER_FOLD + min(STEPS_PER_FOLD, round(STEPS_PER_FOLD * epoch / epochs))
                with self.lock:  # the study's storage: one thread at a time
                    trial.report(float(report["value"]), step)
                    prune = trial.should_prune()
                if prune and pruned is None:
                    pruned = f"epoch {epoch} of {epochs}"
                with suppress(BrokenPipeError):  # the run has ended
                    os.write(verdicts, f"{PRUNE if prune else GO}\n".encode())
        return pruned

    def stop_children(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM reaches only this process: pass it on to the running trials, then die of it."""
        self.stopping = True
        for child in list(self.children):
            child.send_signal(signum)
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


def write_best(search: Search) -> dict[str, Any]:
    """``best.yaml`` (the recipe) and ``best.sh`` (its command); the best trial's record."""
    spec, study, sweep = search.spec, search.study, search.sweep
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not complete:
        pruned = sum(t.state.name == "PRUNED" for t in study.trials)
        why = f" ({pruned} pruned: loosen hparams_search.pruner)" if pruned else ""
        raise UserError(f"hparams_search={spec.name}: no trial completed{why}; see {sweep}/trials")
    best = study.best_trial
    groups = set(HydraConfig.get().runtime.choices)
    config, extra = recipe([*search.base, *(f"{k}={v}" for k, v in best.params.items())], groups)
    folds = ", ".join(map(str, spec.folds))
    known = search.dataset_folds
    val_folds = ", ".join(str(known[known.index(f) - 1]) for f in spec.folds)  # the fold before, wrapping
    argv = ["python", search.script.name, "-cd", str(sweep), "-cn", Path(RECIPE_FILE).stem, *extra]
    command = " ".join(map(shlex.quote, argv))
    header = (
        f"# hparams_search={spec.name}: trial {best.number}, the best of {len(complete)} completed trials,\n"
        f"# validation {spec.metric} ({spec.epoch} epoch) {best.value:.4f}: holdout, the mean over "
        f"validation folds {val_folds}\n"
        f"# (test folds {folds}, not read).\n"
        f"# Report it over five folds (cv):  {command} -m data.fold=1,2,3,4,5\n"
    )
    text = header + OmegaConf.to_yaml(OmegaConf.create(config))
    (sweep / RECIPE_FILE).write_text(text)
    (sweep / "best.sh").write_text(
        "#!/bin/sh\n"
        f"# hparams_search={spec.name}: trial {best.number}; extra overrides pass on: ./best.sh data.fold=3\n"
        f'cd {shlex.quote(str(search.script.parent))} && exec {command} "$@"\n'
    )
    (sweep / "best.sh").chmod(0o755)
    print(f"best trial: {best.number} of {len(complete)} (validation {spec.metric} {best.value:.4f})")
    print(f"recipe: {sweep / RECIPE_FILE}\ncommand: {command}")
    return {
        "search": spec.name,
        "trial": best.number,
        "trials": len(complete),
        f"val_{spec.metric}": best.value,
        "folds": spec.folds,
        "params": best.params,
        "recipe": str(sweep / RECIPE_FILE),
    }


def search(cfg: DictConfig) -> dict[str, Any]:
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise UserError('hparams_search needs Optuna: pip install -e ".[search]"') from None
    spec = SearchSpec.from_config(cfg)
    sweep = Path(spec.dir or cfg.paths.output_dir).resolve()
    (sweep / "trials").mkdir(parents=True, exist_ok=True)
    try:
        with file_lock(sweep / ".search.lock", wait=False):
            runner = Search(cfg, spec, sweep)
            log.info(
                "hparams_search=%s: %d trials (%d at once, folds %s) in %s",
                spec.name,
                spec.n_trials,
                spec.n_jobs,
                ",".join(map(str, spec.folds)),
                sweep,
            )
            previous = None
            if threading.current_thread() is threading.main_thread():
                previous = signal.signal(signal.SIGTERM, runner.stop_children)
            try:
                runner.run()
            finally:
                if previous is not None:
                    signal.signal(signal.SIGTERM, previous)
            return {"headline": {}, "best_trial": write_best(runner)}
    except BlockingIOError:
        raise UserError(
            f"hparams_search: another search is running in {sweep}; wait for it or stop it"
        ) from None
