"""hparams_search=<name>: an Optuna search whose trials are holdout training runs on real clips,
killed and resumed, run in parallel over two folds, written as a recipe, summarised by the report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from contextlib import suppress
from pathlib import Path

from helpers import command_env, hydra_args, run_command, run_dirs, start_command

# Small and quick on a CPU: cnn4, 8 clips a batch, one clip per class and fold (a debug mode replaces
# debug=tiny, which would give that), one batch of training and validation a run.
SMALL = ["model=cnn4", "data.batch_size=8", "data.eval_batch_size=8", "data.limit_per_class=1"]


def test_hparams_search_refused_under_cv(run_train, tmp_path):
    proc = run_train("hparams_search=lr_wd", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: hparams_search=lr_wd needs data.protocol=holdout: under cv the validation fold is the "
        "reported fold, and the search would select on the test data"
    ]
    assert run_dirs(tmp_path / "outputs") == []

    proc = run_train(
        "data.protocol=holdout", "hparams_search=lr_wd", "hparams_search.folds=[2,9]", check=False
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: hparams_search.folds=[2, 9]: give distinct test folds of data.dataset.folds [1, 2, 3, 4, 5] "
        "(each trial trains once per fold, validating on the fold before it)"
    )

    for setting, line in (
        (
            "hparams_search.epoch=middle",
            "error: hparams_search.epoch=middle must be best (the epoch with the lowest validation loss) "
            "or final",
        ),
        (
            "hparams_search.pruner={_target_:collections.Counter}",
            "error: hparams_search.pruner: Counter is not an Optuna pruner "
            "(_target_: optuna.pruners.MedianPruner, say)",
        ),
        (
            "hparams_search.pruner={_target_:optuna.pruners.MedianPruner,n_warmup_steps:-1}",
            # Optuna's own words follow the key and the target
            "error: hparams_search.pruner (optuna.pruners.MedianPruner): Number of warmup steps cannot be",
        ),
    ):
        proc = run_train("data.protocol=holdout", "hparams_search=lr_wd", setting, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(line), proc.stderr
    assert run_dirs(tmp_path / "outputs") == []


def test_a_run_whose_search_is_gone_trains_on():
    """A trial's run reports to its search over a pipe; once the search is gone (killed), the run
    is told nothing and trains on instead of failing."""
    import os

    from esc50_lightning.training.search_trial import GO, PRUNE, ReportToSearch

    reports_r, reports_w = os.pipe()
    verdicts_r, verdicts_w = os.pipe()
    link = ReportToSearch("val/loss", reports_w, verdicts_r)
    os.write(verdicts_w, f"{PRUNE}\n".encode())
    assert link._ask({"epoch": 1, "max_epochs": 4, "value": 3.5}) == PRUNE
    assert json.loads(os.read(reports_r, 1024)) == {"epoch": 1, "max_epochs": 4, "value": 3.5}
    os.close(verdicts_w)  # the search is gone: no verdict comes
    assert link._ask({"epoch": 2, "max_epochs": 4, "value": 3.1}) == GO and not link.connected
    for fd in (reports_r, reports_w, verdicts_r):
        os.close(fd)


def _study(sweep: Path, name: str = "lr_wd"):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep / 'optuna.db'}")


def _states(sweep: Path) -> list[str]:
    """The trials' states; none before the search has asked its first trial. Until then it may
    still be setting up its database, and opening it at the same moment races that set-up
    (alembic's version row: "UNIQUE constraint failed")."""
    if not (sweep / "trials" / "000").exists():
        return []
    try:
        return [t.state.name for t in _study(sweep).trials]
    except KeyError:  # optuna: "Record does not exist."
        return []


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux: every thread's ``children`` list)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie (an orphan's zombie waits for a reaper, not for us)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_hparams_search_killed_then_resumed(run_train, esc50_root, cache_dir, tmp_path):
    """Killed (SIGKILL to the search process alone) while its second trial runs, the search takes
    its trial with it: the trial's training process is gone within seconds, not left to train on
    as an orphan. The search resumes: the interrupted trial's values are tried again, no finished
    trial repeats another's point (a sampler seeded anew would replay the first start's draws),
    and it ends with three finished trials and a recipe that composes to the best trial's values;
    the report summarises it."""
    from hydra import compose, initialize_config_dir

    common = ["debug=fast", *SMALL, "data.protocol=holdout", "data.fold=2", "hparams_search=lr_wd"]
    env = command_env(esc50_root, tmp_path, cache=cache_dir)
    log = (tmp_path / "search.out").open("w")
    proc = start_command(
        hydra_args("train.py", *common, "hparams_search.n_trials=3", tiny=False),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    sweep = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            dbs = list((tmp_path / "outputs").rglob("optuna.db"))
            sweep = dbs[0].parent if dbs else None
            if sweep and _states(sweep) == ["COMPLETE", "RUNNING"] and (sweep / "trials" / "001").exists():
                break
            time.sleep(0.5)
        trials = _children(proc.pid)
        proc.kill()  # the search alone: its trial is not signalled
        proc.wait()
        assert trials, "the search had no trial process running"
        gone = time.monotonic() + 10
        while time.monotonic() < gone and any(_alive(pid) for pid in trials):
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in trials), "the trial outlived its search"
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the search's session
    assert sweep is not None and _states(sweep) == ["COMPLETE", "RUNNING"], (
        tmp_path / "search.out"
    ).read_text()
    interrupted = _study(sweep).trials[1].params
    assert not (sweep / "best.yaml").exists()

    proc = run_train(*common, "hparams_search.n_trials=3", f"hparams_search.dir={sweep}", tiny=False)
    study = _study(sweep)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert study.trials[2].params == interrupted  # asked again first
    finished = [tuple(sorted(t.params.items())) for t in study.trials if t.state.name == "COMPLETE"]
    assert len(set(finished)) == len(finished) == 3, "a resumed search tried a point again"
    for t in study.trials[::2] + study.trials[3:]:
        assert set(t.params) == {"optim.optimizer.lr", "optim.optimizer.weight_decay"}
        assert 1e-4 <= t.params["optim.optimizer.lr"] <= 3e-3
        metrics = json.loads((sweep / "trials" / f"{t.number:03d}" / "fold2" / "metrics.json").read_text())
        assert t.value == metrics["best"]["loss"] and metrics["protocol"] == "holdout"
    assert f"best trial: {study.best_trial.number} of 3" in proc.stdout

    # The recipe composes (as `python train.py -cd <sweep> -cn best` does) to the best values,
    # with the command's other settings and without the search, protocol or debug mode.
    with initialize_config_dir(str(sweep), version_base="1.3"):
        cfg = compose("best")
    best = study.best_trial.params
    assert cfg.optim.optimizer.lr == best["optim.optimizer.lr"]
    assert cfg.optim.optimizer.weight_decay == best["optim.optimizer.weight_decay"]
    assert cfg.model.name == "cnn4" and cfg.data.batch_size == 8
    assert cfg.data.protocol == "cv" and cfg.get("hparams_search") is None and cfg.get("debug") is None
    command = (sweep / "best.sh").read_text().splitlines()[-1]
    assert f"exec python train.py -cd {sweep} -cn best" in command

    report = run_command(["-m", "esc50_lightning.report", str(sweep)], env=env, check=True)
    assert "4 trials (3 complete, 1 interrupted)" in report.stdout
    assert f"Trial {study.best_trial.number}: validation loss {study.best_value:.4f}" in report.stdout
    assert sorted(p.name for p in (sweep / "report").iterdir()) == [
        "search.md",
        "search_history.png",
        "search_trials.csv",
    ]
    rows = (sweep / "report" / "search_trials.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("trial,state,value,fold2,")

    # Continued with other folds, the objective would change meaning: refused in one line.
    again = [*common, "hparams_search.folds=[2,3]", f"hparams_search.dir={sweep}"]
    proc = run_train(*again, tiny=False, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
        "error: hparams_search.folds [2, 3] differ from the search's in"
    ), proc.stderr


def test_hparams_search_parallel_trials_over_two_folds_one_pruned(run_train, tmp_path):
    """Two trials at once (asked the way a sweep asks: hydra/launcher=local_parallel, joblib with
    n_jobs 2), each to train on test folds 2 and 3 and be scored at its final epoch. The first
    completes: its objective is the mean of the two validation folds' (1 and 2) final losses. The
    pruner prunes the second at its first report: its run stops after epoch 1 of 2 and fold 3 is
    never trained. The two trials overlapped in time."""
    from esc50_lightning.commands.search_summary import trials_table

    tests = Path(__file__).parent
    proc = run_train(
        "debug=fast", *SMALL, "trainer.max_epochs=2", "data.protocol=holdout", "hparams_search=lr_wd",
        "hparams_search.n_trials=2", "hydra/launcher=local_parallel", "hparams_search.folds=[2,3]",
        "hparams_search.epoch=final", "hparams_search.pruner={_target_:helpers.pruners.PruneAllButFirst}",
        tiny=False, env={"PYTHONPATH": str(tests)},
    )  # fmt: skip
    (sweep,) = [d for d in run_dirs(tmp_path / "outputs") if (d / "optuna.db").is_file()]
    study = _study(sweep)
    first, second = study.trials
    assert [first.state.name, second.state.name] == ["COMPLETE", "PRUNED"]
    losses = {}
    for fold, val_fold in ((2, 1), (3, 2)):
        metrics = json.loads((sweep / "trials" / "000" / f"fold{fold}" / "metrics.json").read_text())
        assert metrics["fold"] == fold and metrics["splits"]["val"] == [val_fold], metrics["splits"]
        assert metrics["final"]["epoch"] == 2
        losses[fold] = metrics["final"]["loss"]
        assert first.user_attrs[f"fold{fold}"] == losses[fold]
    assert abs(first.value - (losses[2] + losses[3]) / 2) < 1e-12
    # reported at 500 and 1000 of each fold's 1000 steps, fold 3 after fold 2's
    assert sorted(first.intermediate_values) == [500, 1000, 1500, 2000]
    assert first.intermediate_values[2000] == losses[3]

    pruned = json.loads((sweep / "trials" / "001" / "fold2" / "metrics.json").read_text())
    assert pruned["final"]["epoch"] == 1 and second.intermediate_values == {500: pruned["final"]["loss"]}
    assert not (sweep / "trials" / "001" / "fold3").exists()
    row = trials_table(study).set_index("trial").loc[1]
    assert row["state"] == "pruned" and row["pruned"] == "fold 2, epoch 1 of 2"

    assert second.datetime_start < first.datetime_complete and first.datetime_start < second.datetime_complete
    assert "(2 at once, folds 2,3)" in proc.stdout + proc.stderr
    assert f"best trial: 0 of 1 (validation loss {first.value:.4f})" in proc.stdout
    recipe = (sweep / "best.yaml").read_text()
    assert "(final epoch)" in recipe and "holdout, the mean over validation folds 1, 2" in recipe
    assert "launcher" not in recipe and "search_trial" not in recipe  # how the search ran is not the recipe


def test_every_search_space_names_keys_the_config_has():
    """Each space in conf/hparams_search searches keys that exist in the composed config (a typo
    would train every trial with the default), over the recipe it names if it names one; each
    categorical choice composes, and a choice written as a list reaches the config as that list."""
    import yaml
    from helpers import compose_config
    from helpers.paths import CONF_DIR
    from omegaconf import ListConfig, OmegaConf

    spaces = sorted(p.stem for p in (Path(CONF_DIR) / "hparams_search").glob("*.yaml"))
    assert {"lr_wd", "recipe", "augment", "long_schedule"} <= set(spaces)
    for space in spaces:
        cfg = compose_config("data.protocol=holdout", f"hparams_search={space}", hydra=True)
        recipe = (
            [f"experiment={cfg.hparams_search.experiment}"] if cfg.hparams_search.get("experiment") else []
        )
        cfg = compose_config(*recipe, "data.protocol=holdout", f"hparams_search={space}", hydra=True)
        groups = set(cfg.hydra.runtime.choices)
        for key, spec in cfg.hparams_search.params.items():
            if key in groups:
                assert spec.type == "categorical", (space, key)
                for choice in spec.choices:
                    assert compose_config(f"{key}={choice}")[key], (space, key, choice)
                continue
            value = OmegaConf.select(cfg, key, default="<missing>")
            assert value != "<missing>", f"hparams_search={space}: {key} is not a config key"
            if spec.type == "categorical":
                for choice in spec.choices:
                    chosen = OmegaConf.select(compose_config(*recipe, f"{key}={choice}"), key)
                    if isinstance(chosen, ListConfig):
                        chosen = OmegaConf.to_object(chosen)
                    # "[32,64]" is the list [32, 64] on the command line, as in YAML
                    assert chosen == (yaml.safe_load(choice) if isinstance(choice, str) else choice), (
                        space,
                        key,
                    )
            else:
                assert spec.type in ("float", "int") and spec.low < spec.high, (space, key)


def test_a_space_around_a_recipe_refuses_another(run_train, tmp_path):
    proc = run_train("data.protocol=holdout", "hparams_search=long_schedule", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        "error: hparams_search=long_schedule searches the settings of experiment=long_schedule, but this "
        "command chose no experiment: add experiment=long_schedule" in proc.stderr
    )
