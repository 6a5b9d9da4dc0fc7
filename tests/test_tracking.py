"""Debug modes (debug=fast|overfit|limit|profile), experiment trackers (logger=csv|mlflow|wandb|many),
early stopping and trainer=mps: each on real clips, read back through what it writes."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from helpers import run_dirs

# Small and quick on a CPU: cnn4, 8 clips a batch, one clip per class and fold (a debug mode replaces
# debug=tiny, which would give that).
SMALL = ["model=cnn4", "data.batch_size=8", "data.eval_batch_size=8", "data.limit_per_class=1"]
EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+) \| train loss [\d.]+ acc ([\d.]+)")


def _debug_run(tmp_path: Path) -> Path:
    """The one run folder, which a debug mode puts under outputs/debug/runs/."""
    (run,) = run_dirs(tmp_path / "outputs")
    assert run.parent == tmp_path / "outputs" / "debug" / "runs", run
    return run


def _epochs(run: Path) -> list[tuple[int, int, float]]:
    """(epoch, of, train acc) from the run's log lines."""
    text = (run / "debug.log").read_text()
    return [(int(a), int(b), float(c)) for a, b, c in EPOCH_LINE.findall(text)]


# ---- debug modes ----------------------------------------------------------------------------------
def test_debug_fast_one_batch_each(run_train, tmp_path):
    run_train("debug=fast", *SMALL)
    run = _debug_run(tmp_path)
    assert _epochs(run) == [(1, 1, _epochs(run)[0][2])]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 1
    cfg = (run / ".hydra" / "config.yaml").read_text()
    assert "limit_train_batches: 1" in cfg and "limit_val_batches: 1" in cfg


def test_debug_limit_two_short_epochs(run_train, tmp_path):
    # The quick settings say max_epochs=1; the mode's two epochs are given back on the command line.
    run_train("debug=limit", *SMALL, "trainer.max_epochs=2")
    run = _debug_run(tmp_path)
    assert [(e, n) for e, n, _ in _epochs(run)] == [(1, 2), (2, 2)]
    assert "limit_train_batches: 3" in (run / ".hydra" / "config.yaml").read_text()


def test_debug_overfit_reaches_full_train_accuracy(run_train, tmp_path):
    # Two batches of 4 clips: memorised in about 8 epochs of about 0.6 s on a CPU.
    batches_of_4 = ["model=cnn4", "data.batch_size=4", "data.eval_batch_size=4", "data.limit_per_class=1"]
    run_train("debug=overfit", *batches_of_4, "trainer.max_epochs=60")
    run = _debug_run(tmp_path)
    epochs = _epochs(run)
    assert epochs, "no epoch lines"
    # The run stops at the first epoch with train accuracy 1.0 (callbacks.overfit_stop), within 60.
    assert epochs[-1][2] == 1.0, epochs
    assert all(acc < 1.0 for _, _, acc in epochs[:-1]), epochs
    assert len(epochs) < 60


def test_debug_profile_trace_and_table(run_train, tmp_path):
    proc = run_train("debug=profile", *SMALL)
    run = _debug_run(tmp_path)
    traces = list((run / "profiler").glob("*.pt.trace.json"))
    assert traces, sorted((run / "profiler").iterdir())
    for trace in traces:
        assert "traceEvents" in json.loads(trace.read_text())  # what Chrome / TensorBoard read
    out = proc.stdout + proc.stderr
    assert "Profiler Report" in out and "Self CPU" in out and "CPU total" in out


# ---- loggers --------------------------------------------------------------------------------------
def _wandb_records(path: Path):
    """The protobuf records of an offline run's .wandb file (wandb's LevelDB-style log: a 7-byte
    file header, then 32 KiB blocks of records with 7-byte headers, split into FULL or
    FIRST/MIDDLE/LAST chunks). wandb has no public reader of offline runs; `wandb sync` is the
    reader, and it needs the network."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, chunk, block = path.read_bytes(), 7, b"", 32768
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block  # a block's tail too short for a header is padding
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            break
        chunk += data[pos : pos + length]
        pos += length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def _key(item) -> str:
    """A wandb record item's key: ``key``, or ``nested_key`` joined (names with a slash)."""
    return item.key or "/".join(item.nested_key)


def test_logger_many_writes_csv_mlflow_and_tensorboard(run_train, tmp_path):
    """logger=many: one two-epoch run read back through each tracker it writes (CSV metrics and
    hyperparameters, MLflow metrics and params, TensorBoard events)."""
    import pandas as pd
    import yaml
    from mlflow.tracking import MlflowClient

    run_train("debug=limit", *SMALL, "trainer.max_epochs=2", "logger=many")
    run = _debug_run(tmp_path)
    # CSV
    table = pd.read_csv(run / "metrics.csv")
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "epoch"} <= set(table.columns)
    assert table["val/loss"].dropna().size == 2  # one row per epoch
    assert table["train/acc"].dropna().between(0, 1).all()
    hparams = yaml.safe_load((run / "hparams.yaml").read_text())
    assert hparams["model.name"] == "cnn4" and hparams["trainer.max_epochs"] == 2
    assert hparams["paths.output_dir"] == str(run)
    # MLflow
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("esc50-lightning-esc50")
    (mlrun,) = client.search_runs([experiment.experiment_id])
    assert mlrun.info.run_name == "debug_esc50_cnn4_fold1"
    assert mlrun.data.params["model.name"] == "cnn4"
    assert mlrun.data.params["paths.output_dir"] == str(run)
    val_loss = client.get_metric_history(mlrun.info.run_id, "val/loss")
    assert len(val_loss) == 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert val_loss[-1].value == metrics["final"]["loss"]  # the same number, read back from MLflow
    # TensorBoard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("val/loss")] == pytest.approx([v.value for v in val_loss])


def test_logger_wandb_offline_run(run_train, tmp_path):
    proc = run_train("debug=fast", *SMALL, "logger=wandb", env={"WANDB_SILENT": "true"})
    run = _debug_run(tmp_path)
    (offline,) = (run / "wandb").glob("offline-run-*")
    (log_file,) = offline.glob("*.wandb")
    history, config = [], {}
    for record in _wandb_records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({_key(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "config":
            config.update({_key(item): json.loads(item.value_json) for item in record.config.update})
    assert any("val/loss" in step and "val/acc" in step for step in history), history
    assert any("train/acc" in step for step in history), history
    assert config["model.name"] == "cnn4" and config["paths.output_dir"] == str(run)
    assert "wandb: ERROR" not in proc.stderr


def test_logger_missing_tracker_is_one_line(run_train, tmp_path):
    # This install has MLflow: a package of that name first on PYTHONPATH makes `import mlflow`
    # fail as where it is absent (no sitecustomize, so the command need not start cold).
    blocker = tmp_path / "block"
    (blocker / "mlflow").mkdir(parents=True)
    (blocker / "mlflow" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'mlflow'\", name='mlflow')\n"
    )
    path = os.pathsep.join(p for p in (str(blocker), os.environ.get("PYTHONPATH", "")) if p)
    for choice in ("mlflow", "many"):
        proc = run_train("debug=fast", f"logger={choice}", check=False, env={"PYTHONPATH": path})
        assert proc.returncode == 2, proc.stdout + proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert lines == [f'error: logger={choice} needs MLflow: pip install -e ".[mlflow]"'], lines
    assert run_dirs(tmp_path / "outputs") == []


# ---- early stopping -------------------------------------------------------------------------------
def test_early_stopping_refused_under_cv(run_train, tmp_path):
    proc = run_train("callbacks.early_stopping.patience=2", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: callbacks.early_stopping needs data.protocol=holdout")
    assert "reported fold" in lines[0]
    assert run_dirs(tmp_path / "outputs") == []


def test_early_stopping_stops_a_holdout_run(run_train, tmp_path):
    # min_delta=100: no epoch after the first improves enough, so patience 1 stops after epoch 2 of 5.
    run_train(
        "debug=limit",
        *SMALL,
        "trainer.max_epochs=5",
        "data.protocol=holdout",
        "data.fold=2",
        "callbacks.early_stopping.patience=1",
        "callbacks.early_stopping.min_delta=100",
    )
    run = _debug_run(tmp_path)
    assert [(e, n) for e, n, _ in _epochs(run)] == [(1, 5), (2, 5)]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["protocol"] == "holdout"


# ---- trainer=mps ----------------------------------------------------------------------------------
def test_trainer_mps_refused_without_apple_gpu(run_train, tmp_path):
    import torch

    if torch.backends.mps.is_available():
        import pytest

        pytest.skip("this machine has an Apple GPU")
    # The quick settings say trainer.accelerator=cpu: the override after them says mps again.
    for overrides, name in (
        (["trainer=mps", "trainer.accelerator=mps"], "trainer=mps"),
        (["trainer.accelerator=mps"], "trainer.accelerator=mps"),
    ):
        proc = run_train("debug=fast", *overrides, check=False)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.strip().splitlines() == [f"error: {name}: no Apple GPU (MPS) on this machine"]
    assert run_dirs(tmp_path / "outputs") == []


def test_gpu_options_refused_without_cuda(run_train, tmp_path):
    """speed=gpu_fast, trainer=gpu or trainer.accelerator=cuda where torch sees no CUDA GPU (hidden
    here, so a GPU machine answers the same): one line, exit 2, no run folder."""
    no_gpu = "torch sees no CUDA GPU on this machine; use trainer=cpu or trainer.accelerator=auto"
    fast = "speed=gpu_fast needs a CUDA GPU and torch sees none here: leave it out on a CPU"
    hidden = {"CUDA_VISIBLE_DEVICES": ""}
    for option, line in (
        ("speed=gpu_fast", f"error: {fast}"),
        ("trainer=gpu", f"error: trainer=gpu: {no_gpu}"),
        ("trainer.accelerator=cuda", f"error: trainer.accelerator=cuda: {no_gpu}"),
    ):
        proc = run_train(option, "data.limit_per_class=1", tiny=False, check=False, env=hidden)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.strip().splitlines() == [line]
    assert run_dirs(tmp_path / "outputs") == []
