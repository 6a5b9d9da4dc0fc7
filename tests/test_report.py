"""Cross-validation report on real runs: a two-fold joblib sweep, a holdout run and unfinished runs."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import matplotlib.image as mpimg
import pandas as pd
import pytest
from helpers import command_env, compose_config, run_command, run_dirs

# One epoch of two batches: the report only needs finished runs, not good ones.
FAST = ["+trainer.limit_train_batches=2", "model=cnn4"]


@pytest.fixture(scope="module")
def outputs(
    esc50_root: Path,
    cache_dir: Path,
    trained_run,
    holdout_run: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict:
    """outputs/train with a cv sweep over folds 1-2 (joblib launcher), a holdout run, two unfinished runs."""
    out = tmp_path_factory.mktemp("report") / "outputs"
    env = command_env(esc50_root, out.parent, cache=cache_dir, outputs=out)
    sweep = trained_run("-m", "hydra/launcher=local_parallel", "data.fold=1,2", *FAST)
    shutil.copytree(sweep.outputs / "train", out / "train")  # the report is written beside the runs
    shutil.copytree(holdout_run, out / "train" / "runs" / holdout_run.name)
    runs = run_dirs(out / "train")
    assert len(runs) == 3
    cv_runs = [r for r in runs if "multiruns" in r.parts]
    holdout_run = next(r for r in runs if "multiruns" not in r.parts)
    # A run still going (checkpoint, no metrics.json yet) and one that died before its first epoch.
    running = out / "train" / "runs" / "still_running"
    shutil.copytree(cv_runs[0], running)
    (running / "metrics.json").unlink()
    crashed = out / "train" / "runs" / "crashed"
    shutil.copytree(cv_runs[0] / ".hydra", crashed / ".hydra")
    proc = run_command(["-m", "esc50_lightning.report", out / "train"], env=env)
    assert proc.returncode == 0, f"report failed:\n{proc.stdout}\n{proc.stderr}"
    return {
        "root": out / "train",
        "report": out / "train" / "report",
        "stdout": proc.stdout,
        "cv": sorted(cv_runs),
        "holdout": holdout_run,
        "running": running,
        "crashed": crashed,
    }


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _rows(report: Path, protocol: str) -> pd.DataFrame:
    table = pd.read_csv(report / "results.csv")
    return table[(table.protocol == protocol) & (table.status.isna() | (table.status == "complete"))]


def test_cv_table_equals_run_metrics_with_sample_std(outputs: dict) -> None:
    rows = _rows(outputs["report"], "cv")
    runs = rows[rows.row == "run"].sort_values("fold")
    expected = [_metrics(r)["final"] for r in outputs["cv"]]
    assert runs.fold.tolist() == [1, 2]
    assert runs.acc.tolist() == pytest.approx([e["acc"] for e in expected], abs=1e-12)
    assert runs.f1.tolist() == pytest.approx([e["f1"] for e in expected], abs=1e-12)
    assert runs["best-epoch_acc"].tolist() == pytest.approx(
        [_metrics(r)["best"]["acc"] for r in outputs["cv"]], abs=1e-12
    )
    for metric in ("acc", "f1"):
        values = [e[metric] for e in expected]
        mean = rows[rows.row == "mean"][metric].item()
        std = rows[rows.row == "std"][metric].item()
        assert mean == pytest.approx(statistics.mean(values), abs=1e-12)
        assert std == pytest.approx(statistics.stdev(values), abs=1e-12)  # sample std, ddof=1
    # The Markdown (stdout and results.md) shows the same figures, in %, and says which std.
    accs = [e["acc"] for e in expected]
    cell = f"{100 * statistics.mean(accs):.2f} ± {100 * statistics.stdev(accs):.2f}"
    assert cell in outputs["stdout"]
    assert "sample standard deviation" in outputs["stdout"]
    # stdout is results.md less its per-class table, which stays in the files
    full = (outputs["report"] / "results.md").read_text()
    summary, _, _ = full.partition("## Per-class accuracy")
    assert summary.strip() in outputs["stdout"] and "| dog |" not in outputs["stdout"]
    assert "Per-class accuracy: results.md and per_class.csv in the report folder." in outputs["stdout"]


def test_protocols_are_never_averaged_together(outputs: dict) -> None:
    table = pd.read_csv(outputs["report"] / "results.csv")
    means = table[table.row == "mean"].set_index("protocol")
    assert sorted(means.index) == ["cv", "holdout"]
    assert means.loc["cv", "runs"] == 2 and means.loc["holdout", "runs"] == 1
    cv_accs = [_metrics(r)["final"]["acc"] for r in outputs["cv"]]
    assert means.loc["cv", "acc"] == pytest.approx(statistics.mean(cv_accs), abs=1e-12)
    # Holdout's figure is the test fold scored once, not the last epoch on its validation fold.
    holdout = _metrics(outputs["holdout"])
    assert holdout["protocol"] == "holdout"
    assert means.loc["holdout", "acc"] == pytest.approx(holdout["test"]["acc"], abs=1e-12)
    assert means.loc["holdout", "validation_acc"] == pytest.approx(holdout["best"]["acc"], abs=1e-12)
    assert "selected on the validation fold" in outputs["stdout"]
    assert "evaluation fold itself" in outputs["stdout"]


def test_confusion_matrix_and_per_class_accuracy_from_predictions(outputs: dict) -> None:
    per_class = pd.read_csv(outputs["report"] / "per_class.csv")
    cv = per_class[per_class.protocol == "cv"].set_index("class")
    predictions = pd.concat(pd.read_csv(r / "predictions_val.csv") for r in outputs["cv"])
    assert len(cv) == 50 and cv.clips.sum() == len(predictions) == 100  # 50 classes x 2 folds
    hits = (predictions.target == predictions.prediction).groupby(predictions.target_name).mean()
    assert cv.accuracy.sort_index().tolist() == pytest.approx(hits.sort_index().tolist())
    holdout = per_class[per_class.protocol == "holdout"]
    test_predictions = pd.read_csv(outputs["holdout"] / "predictions_test.csv")
    assert holdout.clips.sum() == len(test_predictions)
    assert holdout.correct.sum() == (test_predictions.target == test_predictions.prediction).sum()
    for name in ("confusion_cnn4_cv.png", "confusion_cnn4_holdout.png"):
        image = mpimg.imread(outputs["report"] / name)
        assert min(image.shape[:2]) > 1000  # 50 class names stay legible
    assert "| dog |" in (outputs["report"] / "results.md").read_text()  # per-class accuracy, by name


def test_unfinished_runs_are_listed_not_averaged(outputs: dict) -> None:
    table = pd.read_csv(outputs["report"] / "results.csv")
    left_out = table[table.status == "incomplete"].set_index("run")
    assert set(left_out.index) == {"runs/still_running", "runs/crashed"}
    assert "has checkpoints/last.ckpt" in left_out.loc["runs/still_running", "note"]
    assert "no checkpoint" in left_out.loc["runs/crashed", "note"]
    assert "## Runs not included" in outputs["stdout"]
    assert "runs/still_running" in outputs["stdout"] and "runs/crashed" in outputs["stdout"]


def test_report_on_a_folder_without_runs_fails_clearly(tmp_path: Path) -> None:
    proc = run_command(["-m", "esc50_lightning.report", tmp_path])
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {tmp_path}: no runs found (no folder with .hydra/ or metrics.json)"


@pytest.mark.parametrize(
    ("launcher", "target", "field", "value"),
    [
        ("local_parallel", "joblib_launcher.JoblibLauncher", "n_jobs", 2),
        ("slurm", "submitit_launcher.SlurmLauncher", "gpus_per_node", 1),
    ],
)
def test_launcher_configs_compose(launcher: str, target: str, field: str, value: int) -> None:
    cfg = compose_config(f"hydra/launcher={launcher}", "model=cnn4", hydra=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    assert cfg.hydra.launcher[field] == value
