"""Safe with odd inputs: a report over failed runs, a report that fails while writing, config
mistakes on the command line, the data.root short form, the quoted fold_dir, resumed overrides."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import REPO, TINY, command_env, run_command, run_dirs
from omegaconf import OmegaConf

from esc50_lightning.commands import report
from esc50_lightning.hydra_ext.task import expand_short_forms

# One epoch of two batches, one clip per class and fold: the report needs a finished run, not a good one.
TRAIN = [TINY, "trainer.max_epochs=1", "model=cnn4", "+trainer.limit_train_batches=2"]
ABSENT_CLASS = 33  # dropped from the predictions: no clip of the evaluated fold has it


@pytest.fixture(scope="module")
def finished(esc50_root: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished cnn4 run on fold 1 (its folder is copied, never changed, by the tests)."""
    work = tmp_path_factory.mktemp("finished")
    proc = run_command(["train.py", *TRAIN], env=command_env(esc50_root, work, cache=cache_dir), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = run_dirs(work / "outputs")
    return run


def _copy_run(run: Path, dest: Path, *, without: tuple[str, ...] = ()) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns(*without) if without else None)
    return dest


def _failed_runs(finished: Path, root: Path) -> None:
    """Run folders as failures leave them: a config error that older versions let through (the
    folder kept, its log empty), a crash its log records, a run that has not finished."""
    bad = _copy_run(finished / ".hydra", root / "bad_fold" / ".hydra")
    config = OmegaConf.load(bad / "config.yaml")
    config.data.fold = "abc"
    OmegaConf.save(config, bad / "config.yaml")
    (bad.parent / "train.log").write_text("")
    crashed = _copy_run(finished / ".hydra", root / "crashed" / ".hydra").parent
    (crashed / "train.log").write_text(
        "[2026-01-01 10:00:00,000][esc50_lightning.tasks.train][INFO] - cnn4 on esc50 ...\n"
        "[2026-01-01 10:00:09,000][esc50_lightning.hydra_ext.task][ERROR] - "
        "crashed: OutOfMemoryError: CUDA out of memory\n"
    )
    _copy_run(finished, root / "running", without=("metrics.json", "predictions_*.csv"))


def _report_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_report_lists_failed_runs_never_averages_them_and_names_every_class(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "runs"
    done = _copy_run(finished, root / "done")
    predictions = pd.read_csv(done / "predictions_val.csv")
    keep = (predictions.target != ABSENT_CLASS) & (predictions.prediction != ABSENT_CLASS)
    predictions[keep].to_csv(done / "predictions_val.csv", index=False)
    _failed_runs(finished, root)

    report.main([str(root)])  # returns: exit status 0

    out = root / "report"
    assert sorted(p.name for p in out.iterdir()) == [
        "confusion_cnn4_cv.png",
        "per_class.csv",
        "results.csv",
        "results.md",
    ]
    table = pd.read_csv(out / "results.csv")
    mean = table[table.row == "mean"]
    assert mean.runs.tolist() == [1], "only the finished run is averaged"
    metrics = json.loads((done / "metrics.json").read_text())
    assert mean.acc.item() == pytest.approx(metrics["final"]["acc"])
    notes = table[table.row == "run"].set_index("run")
    assert notes.loc["done", "status"] == "complete"
    assert notes.loc["bad_fold", "status"] == "failed"
    assert notes.loc["bad_fold", "note"].startswith(
        "config error: data.fold=abc: not an integer; choose from 1, 2, 3, 4, 5; "
        "no metrics.json: training did not finish (no checkpoint yet; last activity "
    )
    assert notes.loc["crashed", "status"] == "failed"
    assert notes.loc["crashed", "note"].startswith("crashed: OutOfMemoryError: CUDA out of memory; ")
    assert notes.loc["running", "status"] == "incomplete"
    assert "training did not finish (has checkpoints/last.ckpt; last activity" in notes.loc["running", "note"]
    markdown = (out / "results.md").read_text()
    assert "## Runs not included" in markdown and "config error: data.fold=abc" in markdown
    printed = capsys.readouterr().out  # the summary; the per-class table stays in the files
    assert "## Runs not included" in printed and "config error: data.fold=abc" in printed
    assert f"report written to {out}" in printed

    per_class = pd.read_csv(out / "per_class.csv").set_index("class_index")
    assert per_class["class"].tolist() == metrics["class_names"]
    assert per_class.loc[ABSENT_CLASS, "class"] == "door_wood_creaks"
    assert per_class.loc[ABSENT_CLASS, "clips"] == 0
    assert not per_class["class"].str.match(r"class \d+").any()
    assert f"| {metrics['class_names'][ABSENT_CLASS]} | – |" in markdown


def test_an_error_before_a_resume_is_not_the_reason(finished: Path, tmp_path: Path) -> None:
    run = _copy_run(finished, tmp_path / "run", without=("metrics.json",))
    crash = "[2026-01-01 10:00:09,000][esc50_lightning.hydra_ext.task][ERROR] - crashed: OSError: disk\n"
    (run / "train.log").write_text(crash)
    assert report.read_run(run).status == "failed"
    resumed = "[2026-01-01 11:00:00,000][esc50_lightning.tasks.train][INFO] - Resuming from x in y\n"
    (run / "train.log").write_text(crash + resumed)  # then killed: no error of its own
    assert report.read_run(run).status == "incomplete"


def test_class_names_come_from_the_runs_records(
    finished: Path, esc50_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """metrics.json first, then a checkpoint's run record; never the dataset CSV the run's config
    names (a run folder may come from anyone: its paths are never read)."""
    names = json.loads((finished / "metrics.json").read_text())["class_names"]
    assert len(names) == 50 and names[0] == "dog"
    run = _copy_run(finished, tmp_path / "run")
    assert report.recorded_class_names(run) == names
    metrics = json.loads((run / "metrics.json").read_text())
    del metrics["class_names"]  # as runs before this record have it
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert report.recorded_class_names(run) == names  # from checkpoints/last.ckpt
    shutil.rmtree(run / "checkpoints")
    monkeypatch.setenv("ESC50_ROOT", str(esc50_root))
    assert report.recorded_class_names(run) is None  # the config's ${oc.env:ESC50_ROOT,...} unresolved


def test_a_recorded_interpolation_is_never_resolved(
    finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run folder whose config asks for an environment value: the report reads it as unknown,
    never resolves it, and so never prints the value."""
    run = _copy_run(finished, tmp_path / "runs" / "run")
    config = run / ".hydra" / "config.yaml"
    text = config.read_text()
    assert "\n  fold: 1\n" in text
    config.write_text(text.replace("\n  fold: 1\n", "\n  fold: ${oc.env:ESC50_TEST_SECRET}\n"))
    monkeypatch.setenv("ESC50_TEST_SECRET", "s3cr3t-value")
    assert report.read_run_config(run).data.fold is None
    groups, others = report.collect(tmp_path / "runs")
    shown = repr(groups) + repr(others)
    assert "s3cr3t-value" not in shown


def test_a_report_that_fails_while_writing_leaves_the_previous_one(
    finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "runs"
    _copy_run(finished, root / "done")
    report.write_report(root)
    out = root / "report"
    before = _report_files(out)
    _failed_runs(finished, root)  # the next report would differ

    stage = report._stage

    def disk_full_at_per_class(folder: Path, name: str, data: bytes) -> Path:
        if name == "per_class.csv":  # staged after the PNG, results.md and results.csv
            raise OSError(28, "No space left on device")
        return stage(folder, name, data)

    monkeypatch.setattr(report, "_stage", disk_full_at_per_class)
    with pytest.raises(OSError, match="No space left"):
        report.write_report(root)
    assert _report_files(out) == before, "the previous report is untouched, no temporary file left"

    monkeypatch.setattr(report, "per_class_table", lambda groups: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        report.write_report(root, out=tmp_path / "new_report")
    assert not (tmp_path / "new_report").exists(), "a first report that fails leaves no folder"

    monkeypatch.undo()
    report.write_report(root)
    assert "bad_fold" in (out / "results.md").read_text()


# ---- config mistakes: one line, exit 2, no run folder ---------------------------------------------
MISTAKES = [
    ("train.py", ["data.fold=abc"], "error: data.fold=abc: not an integer; choose from 1, 2, 3, 4, 5"),
    (
        "train.py",
        ["model=resnet19"],
        "error: model=resnet19: no such option; choose from cnn14, cnn4, cnn8, resnet18, vgg8",
    ),
    (
        "train.py",
        ["trainer.max_epoch=3"],
        "error: trainer.max_epoch=3: no such key in trainer; did you mean trainer.max_epochs?",
    ),
    (
        "train.py",
        ["trainer.colour=blue"],
        "error: trainer.colour=blue: no such key in trainer; to add a new key, write +trainer.colour=blue",
    ),
    (
        "train.py",
        ["data=urbansound8k", "data.dataset.fold_dir=fold{fold}"],
        "error: data.dataset.fold_dir=fold{fold}: Hydra's override grammar takes braces, parentheses "
        "and spaces only inside quotes; write \"data.dataset.fold_dir='fold{fold}'\"",
    ),
    (
        "eval.py",
        [],
        "error: ckpt_path is required: python eval.py ckpt_path=PATH, a checkpoint train.py wrote "
        "(e.g. outputs/train/runs/<run>/checkpoints/last.ckpt)",
    ),
    (
        "eval.py",
        ["ckpt_path=x.ckpt", "data.fold=abc"],  # eval.py composes the data group too
        "error: data.fold=abc: not an integer; choose from 1, 2, 3, 4, 5",
    ),
    (
        "eval.py",
        ["ckpt_path=x.ckpt", "model=resnet19"],
        "error: model=resnet19: no such key or config group in this command's config",
    ),
    (
        "eval.py",
        ["ckpt_path=x.ckpt", "data.limt_per_class=1"],
        "error: data.limt_per_class=1: no such key in data; did you mean data.limit_per_class?",
    ),
]


@pytest.mark.parametrize(
    ("script", "overrides", "message"), MISTAKES, ids=[f"{s} {' '.join(o)}" for s, o, _ in MISTAKES]
)
def test_config_mistake_is_one_line(
    esc50_root: Path, tmp_path: Path, script: str, overrides: list[str], message: str
) -> None:
    proc = run_command([script, *overrides], env=command_env(esc50_root, tmp_path), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == message
    assert proc.stdout.strip() == ""
    assert run_dirs(tmp_path / "outputs") == [], "no run folder left behind"


def test_full_error_still_shows_hydras_traceback(esc50_root: Path, tmp_path: Path) -> None:
    env = {**command_env(esc50_root, tmp_path), "HYDRA_FULL_ERROR": "1"}
    proc = run_command(["train.py", "model=resnet19"], env=env, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "MissingConfigException" in proc.stderr


def test_data_root_is_short_for_data_dataset_root(esc50_root: Path, tmp_path: Path) -> None:
    assert expand_short_forms(["-m", "data.root=/a", "++data.root=b,c", "data.rooted=1", "data.root"]) == [
        "-m",
        "data.dataset.root=/a",
        "++data.dataset.root=b,c",
        "data.rooted=1",
        "data.root",
    ]
    env = command_env(esc50_root, tmp_path)
    for script in ("train.py", "eval.py"):
        show = ["--cfg", "job", "--package", "data"]
        proc = run_command([script, "data.root=/elsewhere/esc50", *show], env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert OmegaConf.create(proc.stdout).dataset.root == "/elsewhere/esc50"


def test_quoted_fold_dir_from_the_docs_parses(esc50_root: Path, tmp_path: Path) -> None:
    """The docs' command-line form, run through a shell as a user would type it."""
    docs = (REPO / "docs" / "datasets.md").read_text().splitlines()
    row = next(line for line in docs if "fold_dir" in line)
    (override,) = [part for part in re.findall(r"`([^`]+)`", row) if "=" in part]
    assert override == "\"data.dataset.fold_dir='fold{fold}'\""
    command = f"{sys.executable} train.py data=folded_csv {override} --cfg job --package data.dataset"
    proc = subprocess.run(
        command, shell=True, cwd=REPO, env=command_env(esc50_root, tmp_path), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert OmegaConf.create(proc.stdout).fold_dir == "fold{fold}"


def test_resume_records_the_overrides_it_ran_with(
    finished: Path, esc50_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    outputs = tmp_path / "outputs"
    run = _copy_run(finished, outputs / "train" / "runs" / finished.name)
    first = [str(o) for o in OmegaConf.load(run / ".hydra" / "overrides.yaml")]
    assert "trainer.max_epochs=1" in first
    more = [o for o in TRAIN if o != "trainer.max_epochs=1"] + ["trainer.max_epochs=2"]
    env = command_env(esc50_root, tmp_path, cache=cache_dir)
    proc = run_command(
        ["train.py", *more, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    assert run_dirs(outputs) == [run], "the resume continued in the original folder, no other left"
    hydra = run / ".hydra"
    now = [str(o) for o in OmegaConf.load(hydra / "overrides.yaml")]
    assert "trainer.max_epochs=2" in now and "trainer.max_epochs=1" not in now
    assert [str(o) for o in OmegaConf.load(hydra / "overrides.original.yaml")] == first
    assert OmegaConf.load(hydra / "config.yaml").trainer.max_epochs == 2
    assert OmegaConf.load(hydra / "config.original.yaml").trainer.max_epochs == 1
    assert "trainer.max_epochs=2" in report.read_run(run).variant, "the report labels it by what it ran with"
