"""What a user reads: --help, epoch numbers counted from 1, no noise lines, paths whole on one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from helpers import REPO, run_dirs
from helpers.paths import CONF_DIR

from esc50_lightning.checkpoints.record import read_checkpoint
from esc50_lightning.factory import load_classifier

SHIPPED = REPO / "src" / "esc50_lightning" / "pretrained" / "esc50_fold1.ckpt"

# Lines Lightning used to print on every run, none of which told the user anything.
NOISE = (
    "Tip:",
    "litlogger",
    "litmodels",
    "Trainer already configured with model summary",
    "FLOPs",
    "TPU available",
    "Seed set to",
    "`Trainer.fit` stopped",
    "smaller than the logging interval",
    "Restoring states from the checkpoint path",
)
# The summary's path lines, label first: each must hold one whole, existing path.
PATH_LINE = re.compile(
    r"^(run dir|best checkpoint|last checkpoint|checkpoint(?: \(epoch \d+\))?|metrics): (.+)$"
)
# Config groups that only training uses: eval.py's help must not offer them.
TRAINING_GROUPS = sorted(
    p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("hydra", "paths")
)


def _help(run_train, script: str) -> list[str]:
    proc = run_train("--help", script=script, tiny=False)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    return proc.stdout.splitlines()


def _path_lines(stdout: str) -> dict[str, Path]:
    found = {m[1]: Path(m[2]) for line in stdout.splitlines() if (m := PATH_LINE.match(line))}
    for label, path in found.items():
        assert path.exists(), f"{label}: {path} is not a whole path (wrapped?)\n{stdout}"
    return found


def test_train_help_says_what_it_does_with_examples_and_groups(run_train) -> None:
    lines = _help(run_train, "train.py")
    text = "\n".join(lines)
    assert 10 < len(lines) <= 40, text
    assert lines[0].startswith("python train.py")
    for promise in (
        "experiment=",
        "seed",
        "vgg8_mixup",
        "vgg8_bc_hour",
        "model=",
        "data.fold=",
        "data.protocol=holdout",
        "trainer=gpu",
        "-m ",
        "ckpt_path=latest",
        "debug=tiny",
        "README.md",
        "docs/recipes.md",
        "--cfg job",
    ):
        assert promise in text, promise
    # every config group, with every option it has on disk
    for group in [*TRAINING_GROUPS, "paths"]:
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        assert f"{group}: {', '.join(options)}" in lines, group
    assert "_target_" not in text, "no config dump"


def test_eval_help_says_what_it_does_and_offers_no_training_group(run_train) -> None:
    lines = _help(run_train, "eval.py")
    text = "\n".join(lines)
    assert 5 < len(lines) <= 40, text
    assert lines[0].startswith("python eval.py ckpt_path=")
    assert any("ckpt_path" in line and "required" in line for line in lines), text
    for key in ("data.fold", "evaluation fold", "test fold", "eval_crop", "allow_train_fold"):
        assert key in text, key
    assert "optim" not in text
    for group in TRAINING_GROUPS:
        assert not any(line.strip().startswith(f"{group}:") for line in lines), group


def test_eval_without_ckpt_path_fails_with_one_line_naming_it(run_train, tmp_path: Path) -> None:
    proc = run_train(script="eval.py", tiny=False, check=False)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ckpt_path is required"), line
    assert run_dirs(tmp_path / "outputs") == [], "the failed command leaves no run folder"


def test_two_epoch_run_counts_epochs_from_1_prints_no_noise_and_whole_paths(run_train, tmp_path: Path):
    # The quick run with the default callbacks (model summary, progress bar), stdout a pipe, and
    # Rich's width when it is not a terminal: 80 columns, narrower than the paths. Two training
    # batches an epoch: the numbering is the point, not the training.
    # debug=tiny without its callbacks lines: the default progress bar and summary stay on
    quick = [
        "data.limit_per_class=1",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "data.batch_size=25",
    ]
    overrides = ["trainer.max_epochs=2", "+trainer.limit_train_batches=2"]
    proc = run_train(*quick, *overrides, tiny=False, env={"COLUMNS": "80"})
    out = proc.stdout + proc.stderr
    (run,) = run_dirs(tmp_path / "outputs")

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == metrics["final"]["epoch"] == 2
    best = metrics["best"]["epoch"]
    assert best in (1, 2)
    log = (run / "train.log").read_text()
    assert "epoch 1/2 |" in log and "epoch 2/2 |" in log and "epoch 0/" not in log
    assert re.search(r"final epoch\s+[│|]\s+2\s+[│|]", proc.stdout), proc.stdout
    assert re.search(rf"lowest val loss\*\s+[│|]\s+{best}\s+[│|]", proc.stdout), proc.stdout

    names = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    (best_name,) = [n for n in names if n != "last.ckpt"]
    assert "last.ckpt" in names and best_name.startswith(f"epoch{best:03d}-val_loss"), names
    record = read_checkpoint(run / "checkpoints" / "last.ckpt")["esc50"]
    assert [h["epoch"] for h in record["history"]] == [1, 2]

    for noise in NOISE:
        assert noise not in out, noise
    assert "Epoch " not in proc.stdout, "no progress bar frame in a log"
    assert "Parameters:" in proc.stdout, "the model summary still prints"

    paths = _path_lines(proc.stdout)
    assert paths["run dir"] == run
    assert paths["best checkpoint"].name == best_name
    assert paths["last checkpoint"] == run / "checkpoints" / "last.ckpt"
    assert paths["metrics"] == run / "metrics.json"
    assert len(f"best checkpoint: {paths['best checkpoint']}") > 80, "the path must outgrow the console"


def test_eval_of_the_shipped_checkpoint_shows_the_epochs_it_trained(run_train, tmp_path: Path) -> None:
    trained = json.loads(SHIPPED.with_suffix(".json").read_text())["epochs_trained"]
    raw = torch.load(SHIPPED, map_location="cpu", weights_only=True)

    proc = run_train(f"ckpt_path={SHIPPED}", "data.limit_per_class=1", script="eval.py", tiny=False)
    assert f"checkpoint (epoch {trained}): {SHIPPED}" in proc.stdout.splitlines(), proc.stdout
    assert re.search(rf"evaluation\s+[│|]\s+{trained}\s+[│|]", proc.stdout), proc.stdout
    (run,) = run_dirs(tmp_path / "outputs")
    assert json.loads((run / "metrics.json").read_text())["checkpoint_epoch"] == trained
    assert _path_lines(proc.stdout)["metrics"] == run / "metrics.json"
    for noise in NOISE:
        assert noise not in proc.stdout + proc.stderr, noise

    # Resuming it (Lightning hands the raw checkpoint to the module) numbers it the same.
    module, _ = load_classifier(SHIPPED)
    module.on_load_checkpoint(raw)
    assert module.history[-1]["epoch"] == trained
