"""What a finished run leaves behind: metrics.json, predictions.csv and a one-screen summary (train.py
and eval.py alike)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from esc50_lightning.atomic import atomic_write
from esc50_lightning.training.metrics import METRIC_NAMES

log = logging.getLogger("esc50_lightning.tasks.train")  # the run's log names the training task


def run_metrics(
    history: list[dict[str, float]], test: dict[str, float], info: dict[str, Any], epochs: int
) -> dict:
    """The run's figures, each labelled with the protocol it comes from.

    ``epochs``: epochs trained; ``history`` has one entry per validated epoch, which is fewer when
    validation runs every n-th epoch only (``trainer.check_val_every_n_epoch``). Epochs count
    from 1, so a run's final epoch is ``epochs``.

    ``final``: last epoch on the evaluation fold (headline under ``cv``: no selection on it).
    ``best``: epoch with the lowest validation loss. Under ``cv`` that selection used the
    evaluation fold itself, so it is optimistic and labelled as such.
    ``test``: under ``holdout``, the test fold scored once with the checkpoint chosen on validation.
    """
    data = info["data"]
    out: dict[str, Any] = {
        "model": info.get("model_name"),
        "dataset": data["dataset"],
        "protocol": data["protocol"],
        "fold": data["fold"],
        "splits": data["splits"],
        "epochs": epochs,
        # trainer.precision as the run resolved it (auto: the machine's choice, tasks/checks.py)
        "precision": info.get("precision"),
    }
    if history:
        last = history[-1]
        best = min(history, key=lambda h: h["val/loss"])
        strip = lambda h: {k.split("/", 1)[1]: v for k, v in h.items() if k.startswith("val/")}  # noqa: E731
        out["final"] = {"epoch": last["epoch"], **strip(last)}
        out["best"] = {
            "epoch": best["epoch"],
            **strip(best),
            "selected_on": "evaluation fold" if data["protocol"] == "cv" else "validation fold",
        }
    if test:
        out["test"] = {k.split("/", 1)[1]: v for k, v in test.items()}
    headline = out.get("test") if data["protocol"] == "holdout" else out.get("final")
    out["headline"] = {
        "source": "test fold, checkpoint selected on validation"
        if data["protocol"] == "holdout"
        else "final epoch on the evaluation fold (fixed schedule)",
        **(headline or {}),
    }
    return out


def write_predictions(
    path: Path,
    outputs: tuple[torch.Tensor, torch.Tensor],
    files: list[str],
    labels: np.ndarray,
    names: list[str],
) -> None:
    rows, logits = outputs
    probs = torch.softmax(logits.float(), dim=1).numpy()
    rows = rows.numpy()
    frame = pd.DataFrame(
        {
            "file": [files[r] for r in rows],
            "target": labels[rows],
            "prediction": probs.argmax(1),
            "target_name": [names[t] for t in labels[rows]],
            "prediction_name": [names[p] for p in probs.argmax(1)],
            "confidence": probs.max(1).round(5),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, frame.to_csv(index=False))


def print_summary(metrics: dict[str, Any], run_dir: Path, console: Console | None = None) -> None:
    """The screen train.py and eval.py end on: the run's figures in a table, notes, then the files
    it wrote, every path whole on its own line (never wrapped, so it copies from any log).

    ``metrics`` as ``run_metrics`` makes them (train.py, ``best_checkpoint`` added) or as
    ``evaluate`` does (``task: eval``).
    """
    console = console or Console()
    evaluation = metrics.get("task") == "eval"
    scope = f"{metrics['clips']} clips" if evaluation else metrics["protocol"]
    table = Table(title=f"{metrics['model']} · {metrics['dataset']} fold {metrics['fold']} · {scope}")
    table.add_column("figure")
    table.add_column("epoch", justify="right")
    for name in ("loss", *METRIC_NAMES):
        table.add_column(name, justify="right")
    if evaluation:  # checkpoint_epoch is None for an ensemble: its members' epochs differ
        rows = [("evaluation", metrics["test"], metrics.get("checkpoint_epoch"))]
    else:
        best = metrics.get("best", {})
        rows = [
            ("final epoch", metrics.get("final"), None),
            ("lowest val loss" + ("*" if metrics["protocol"] == "cv" else ""), best, None),
            ("test (holdout)", metrics.get("test"), best.get("epoch")),  # the best epoch's checkpoint
        ]
    for label, row, epoch in rows:
        if row:
            epoch = row.get("epoch", epoch)
            figures = (f"{row[m]:.4f}" for m in ("loss", *METRIC_NAMES))
            table.add_row(label, "" if epoch is None else str(epoch), *figures)
    console.print(table)

    notes, paths = [], []
    if evaluation:
        if metrics["on_seen_fold"]:
            notes.append(f"warning: the checkpoint was trained on fold {metrics['fold']}: not an evaluation")
        epoch = metrics.get("checkpoint_epoch")
        label = "checkpoint" if epoch is None else f"checkpoint (epoch {epoch})"
        paths.append((label, metrics["checkpoint"]))
    else:
        if metrics["protocol"] == "cv" and "best" in metrics:
            notes.append("* epoch selected on the evaluation fold itself: optimistic, not a headline figure")
        paths.append(("run dir", run_dir))
        if metrics.get("best_checkpoint"):
            paths.append(("best checkpoint", metrics["best_checkpoint"]))
        if (run_dir / "checkpoints" / "last.ckpt").is_file():
            paths.append(("last checkpoint", run_dir / "checkpoints" / "last.ckpt"))
    paths.append(("metrics", run_dir / "metrics.json"))
    # soft_wrap: Rich would break lines at the console width, 80 columns when output is not a terminal
    for note in notes:
        console.print(note, soft_wrap=True, markup=False)
    for label, path in paths:
        console.print(f"{label}: {path}", soft_wrap=True, markup=False)


def save_metrics(path: Path, metrics: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(metrics, indent=2))


def write_results(trainer: Any, module: Any, datamodule: Any, run_dir: Path, best: str | None) -> dict:
    """A finished training run's metrics.json, predictions and summary (global rank zero writes)."""
    metrics = run_metrics(module.history, module.test_results, module.run_info, epochs=trainer.current_epoch)
    metrics["best_checkpoint"] = best
    class_names = list(datamodule.class_names)
    metrics["class_names"] = class_names  # the report names classes no clip of a fold has
    if trainer.is_global_zero:
        table = datamodule.table
        save_metrics(run_dir / "metrics.json", metrics)
        head = metrics["headline"]
        if "acc" in head:
            log.info("Headline, %s: acc %.4f, macro F1 %.4f", head["source"], head["acc"], head["f1"])
        for name, outputs in (("val", module.last_val_outputs), ("test", module.last_test_outputs)):
            if outputs is not None and not (name == "test" and datamodule.protocol == "cv"):
                write_predictions(
                    run_dir / f"predictions_{name}.csv", outputs, table.files, table.labels, class_names
                )
        print_summary(metrics, run_dir)
    return metrics


def read_run_config(run_dir: Path) -> DictConfig | None:
    """The composed config a run folder records (``.hydra/config.yaml``), as plain recorded values;
    ``None`` if absent or unreadable.

    A run folder may come from anyone: a recorded ``${...}`` is never resolved (it could read the
    environment or build objects), so every string holding one reads as unknown (``None``).
    """
    try:
        loaded = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    except Exception:
        return None
    if not isinstance(loaded, DictConfig):
        return None
    return OmegaConf.create(_without_interpolations(OmegaConf.to_container(loaded, resolve=False)))


def _without_interpolations(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_interpolations(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_interpolations(v) for v in value]
    return None if isinstance(value, str) and "${" in value else value
