"""Debug modes (debug=fast|overfit|limit|profile), experiment trackers (logger=csv|mlflow|wandb|many),
early stopping and trainer=mps: each on real clips, read back through what it writes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import run_dirs

# Small and quick on a CPU: cnn4, 8 clips a batch (the quick settings give 1 clip per class and fold).
SMALL = ["model=cnn4", "data.batch_size=8", "data.eval_batch_size=8"]
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
    run_train("debug=overfit", *SMALL, "trainer.max_epochs=60")
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
