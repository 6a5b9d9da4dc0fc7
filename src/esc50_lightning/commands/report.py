"""Cross-validation report over a folder of runs: per-fold tables, mean ± std, confusion, per-class accuracy.

``python -m esc50_lightning.report DIR`` reads every run under DIR (a Hydra multirun, an outputs
folder, any folder of run folders) and writes ``DIR/report/`` (``results.md``, ``results.csv``,
``per_class.csv``, ``confusion_<model>_<protocol>.png``), printing the Markdown on stdout (for an
``hparams_search`` sweep: its trials, best settings and history, see search_summary.py). The
files are built in memory and renamed into place together: a report that fails leaves the
previous one as it was.

Failed and unfinished runs are listed with the reason (a config error their recorded config
shows, the error their log ends with, or how far they got), never averaged. Class names come from
the runs' own records (predictions, metrics.json, a checkpoint's run record, the dataset CSV their
config names), also for a class no clip of the evaluated folds has.

Runs are grouped by model, protocol and any other command-line override (so a learning-rate
sweep is not averaged into one figure). Protocols are never mixed: under ``cv`` the figure is the
final epoch on the evaluation fold, the best epoch (selected on that same fold) shown beside it;
under ``holdout`` the figure is the test fold scored once with the checkpoint chosen on validation.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf
from torchmetrics.functional.classification import multiclass_confusion_matrix

from esc50_lightning.checkpoints.record import read_checkpoint
from esc50_lightning.commands.arguments import report_parser
from esc50_lightning.commands.search_summary import is_search, search_report
from esc50_lightning.errors import UserError, run_guarded
from esc50_lightning.hydra_ext.task import check_value_types
from esc50_lightning.tasks.results import read_run_config
from esc50_lightning.training.metrics import confusion_figure

# Overrides that identify the fold, the model or the launcher, not a different experiment.
NON_VARIANT_KEYS = ("data.fold", "model", "data.protocol", "ckpt_path")
PREDICTIONS = {"cv": "predictions_val.csv", "holdout": "predictions_test.csv"}
HEADLINE = {
    "cv": "final epoch on the evaluation fold (fixed schedule)",
    "holdout": "test fold, scored once with the checkpoint selected on the validation fold",
}
SIDE = {
    "cv": ("best-epoch", "epoch chosen by lowest loss on the evaluation fold itself: optimistic"),
    "holdout": ("validation", "the validation fold the checkpoint was selected on"),
}
STD_NOTE = "std = sample standard deviation over runs (ddof=1)"


@dataclass
class Run:
    path: Path
    status: str  # complete | incomplete (no result yet) | failed (a known error) | skipped
    note: str = ""
    model: str | None = None
    protocol: str | None = None
    fold: int | None = None
    variant: str = ""
    epochs: int | None = None
    acc: float | None = None
    f1: float | None = None
    side_acc: float | None = None
    side_f1: float | None = None
    all_folds: list[int] = field(default_factory=list)


@dataclass
class Group:
    model: str
    protocol: str
    variant: str
    runs: list[Run]
    confusion: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    confusion_runs: int = 0
    show_variant_id: bool = False  # several variants share this model and protocol

    @property
    def variant_id(self) -> str:
        return hashlib.sha1(self.variant.encode()).hexdigest()[:8] if self.variant else ""

    @property
    def label(self) -> str:
        suffix = f" · variant {self.variant_id}" if self.show_variant_id else ""
        return f"{self.model} · {self.protocol}{suffix}"

    @property
    def slug(self) -> str:
        base = f"{self.model}_{self.protocol}" + (f"_{self.variant_id}" if self.show_variant_id else "")
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", base)


# ---- reading runs -------------------------------------------------------------------------------
def find_run_dirs(root: Path, exclude: Path | None = None) -> list[Path]:
    """Folders holding a Hydra record (``.hydra/``) or a ``metrics.json``."""
    found = {p.parent for p in root.rglob(".hydra") if p.is_dir()}
    found |= {p.parent for p in root.rglob("metrics.json")}
    if exclude is not None:
        found = {p for p in found if exclude not in (p, *p.parents)}
    return sorted(found)


def _variant(run_dir: Path) -> str:
    """The run's overrides that make it a different experiment. A resumed run's ``overrides.yaml``
    holds the resuming command's (``tasks/resume.record_resume``): what it ran with last."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return ""
    kept = []
    for item in OmegaConf.to_container(OmegaConf.load(path)) or []:
        key = str(item).split("=", 1)[0].lstrip("+~")
        if key in NON_VARIANT_KEYS or key.startswith("hydra"):
            continue
        kept.append(str(item))
    return " ".join(sorted(kept))


def _hydra_config(run_dir: Path) -> dict[str, Any]:
    cfg = read_run_config(run_dir)
    return OmegaConf.to_container(cfg, resolve=False) if cfg is not None else {}  # type: ignore[return-value]


def _last_activity(run_dir: Path) -> str:
    times = [p.stat().st_mtime for p in run_dir.rglob("*") if p.is_file()]
    return datetime.fromtimestamp(max(times)).strftime("%Y-%m-%d %H:%M") if times else "never"


def _as_int(value: Any) -> int | None:
    """A fold number as recorded, or ``None`` for anything that is not a whole number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def _config_error(run_dir: Path) -> str | None:
    """The mistake in a run's recorded config that the command would refuse today (e.g. a run
    started with ``data.fold=abc`` before that was checked), if any."""
    cfg = read_run_config(run_dir)
    if cfg is None:
        return None
    try:
        check_value_types(cfg)
    except UserError as err:
        return str(err)
    return None


_LOGGED_ERROR = re.compile(r"\]\[(?:ERROR|CRITICAL)\] - (.+)$")


def _logged_error(run_dir: Path) -> str | None:
    """The last error line of the run's log (``hydra_ext.task`` notes why a run stopped there),
    unless a later session resumed the run after it."""
    found = None
    for log_file in sorted(run_dir.glob("*.log")):
        with contextlib.suppress(OSError):
            for line in log_file.read_text(errors="replace").splitlines():
                if match := _LOGGED_ERROR.search(line):
                    found = match.group(1).strip()
                elif "Resuming from" in line:  # tasks/train.py: a new session, the error is past
                    found = None
    return found


def _unfinished(run: Run, run_dir: Path) -> Run:
    """A run without metrics.json: failed (with the reason, when known) or not finished yet."""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    has = "has checkpoints/last.ckpt" if ckpt.is_file() else "no checkpoint yet"
    progress = f"no metrics.json: training did not finish ({has}; last activity {_last_activity(run_dir)})"
    if reason := _config_error(run_dir):
        run.status, run.note = "failed", f"config error: {reason}; {progress}"
    elif reason := _logged_error(run_dir):
        run.status, run.note = "failed", f"{reason}; {progress}"
    else:
        run.status, run.note = "incomplete", f"{progress}: interrupted, crashed or still running"
    return run


def read_run(run_dir: Path) -> Run:
    """What a run folder holds; a folder whose records cannot be read is listed as failed."""
    try:
        return _read_run(run_dir)
    except Exception as err:  # a damaged or foreign folder must not stop the report
        detail = next(iter(str(err).splitlines()), "")
        return Run(
            path=run_dir, status="failed", note=f"unreadable run record ({err.__class__.__name__}: {detail})"
        )


def _read_run(run_dir: Path) -> Run:
    cfg = _hydra_config(run_dir)
    data_cfg = cfg.get("data") or {}
    run = Run(
        path=run_dir,
        status="complete",
        model=(cfg.get("model") or {}).get("name"),
        protocol=data_cfg.get("protocol"),
        fold=_as_int(data_cfg.get("fold")),
        variant=_variant(run_dir),
    )
    task = cfg.get("task_name", "train")
    metrics_path = run_dir / "metrics.json"
    metrics: dict[str, Any] | None = None
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            run.status, run.note = "incomplete", f"metrics.json unreadable ({err.__class__.__name__})"
            return run
        task = metrics.get("task", task)
    if task != "train":
        if metrics:
            run.model, run.fold = metrics.get("model"), _as_int(metrics.get("fold"))
        run.status, run.note = "skipped", f"not a training run (task {task})"
        return run
    if metrics is None:
        return _unfinished(run, run_dir)
    run.model = metrics.get("model", run.model)
    run.protocol = metrics.get("protocol", run.protocol)
    run.fold = _as_int(metrics.get("fold", run.fold))
    run.epochs = metrics.get("epochs")
    splits = metrics.get("splits") or {}
    run.all_folds = sorted({int(f) for part in splits.values() for f in part})
    headline = metrics.get("test" if run.protocol == "holdout" else "final") or {}
    if run.protocol not in HEADLINE or "acc" not in headline or "f1" not in headline:
        run.status = "incomplete"
        run.note = f"metrics.json has no {'test' if run.protocol == 'holdout' else 'final'} figures"
        return run
    run.acc, run.f1 = float(headline["acc"]), float(headline["f1"])
    side = metrics.get("best") or {}
    run.side_acc, run.side_f1 = side.get("acc"), side.get("f1")
    return run


def _confusion(group: Group) -> None:
    """Sum the confusion matrices of the group's runs from their prediction files."""
    frames = []
    for run in group.runs:
        path = run.path / PREDICTIONS[group.protocol]
        if path.is_file():
            frames.append(pd.read_csv(path))
        else:
            missing = f"no {path.name}: left out of the confusion matrix"
            run.note = f"{run.note}; {missing}" if run.note else missing
    if not frames:
        return
    table = pd.concat(frames, ignore_index=True)
    names: dict[int, str] = {}
    for idx, name in (("target", "target_name"), ("prediction", "prediction_name")):
        names.update(zip(table[idx].astype(int), table[name].astype(str), strict=True))
    configured = [
        (_hydra_config(r.path).get("data") or {}).get("dataset", {}).get("num_classes") for r in group.runs
    ]
    n = max([max(names) + 1, *[c for c in configured if isinstance(c, int)]])
    group.class_names = _class_names(group.runs, names, n)
    n = len(group.class_names)
    group.confusion = multiclass_confusion_matrix(
        torch.tensor(table["prediction"].to_numpy()), torch.tensor(table["target"].to_numpy()), n
    ).numpy()
    group.confusion_runs = len(frames)


def _class_names(runs: list[Run], seen: dict[int, str], n: int) -> list[str]:
    """Names for classes 0..n-1 (or more, if a record has more): those the predictions show, the
    rest from the runs' records. metrics.json is read for every run (it also tells how many
    classes there are); checkpoints and the dataset CSV only while a class has no name yet."""
    names = dict(seen)

    def add(recorded: list[str] | None) -> None:
        nonlocal n
        n = max(n, len(recorded or []))
        for i, name in enumerate(recorded or []):
            names.setdefault(i, str(name))

    for run in runs:
        with contextlib.suppress(Exception):
            add(_names_in_metrics(run.path))
    for run in runs:
        if all(i in names for i in range(n)):
            break
        add(recorded_class_names(run.path))
    return [names.get(i, f"{i} (name not recorded)") for i in range(n)]


def recorded_class_names(run_dir: Path) -> list[str] | None:
    """The class names a run recorded: in metrics.json, else in a checkpoint's run record;
    ``None`` when neither can be read. A path the run's config names is never read: the folder
    may come from anyone."""
    for source in (_names_in_metrics, _names_in_checkpoint):
        try:
            names = source(run_dir)
        except Exception:  # a missing, damaged or foreign record: try the next one
            names = None
        if names:
            return [str(name) for name in names]
    return None


def _names_in_metrics(run_dir: Path) -> list[str] | None:
    return json.loads((run_dir / "metrics.json").read_text()).get("class_names")


def _names_in_checkpoint(run_dir: Path) -> list[str] | None:
    folder = run_dir / "checkpoints"
    for path in [folder / "last.ckpt", *sorted(folder.glob("*.ckpt"))]:
        if path.is_file():  # the project's safe reader: weights only, the run record checked
            return read_checkpoint(path)["esc50"]["data"]["class_names"]
    return None


def collect(root: Path, exclude: Path | None = None) -> tuple[list[Group], list[Run]]:
    """Complete runs grouped by (model, protocol, variant), and the runs left out."""
    runs = [read_run(d) for d in find_run_dirs(root, exclude)]
    grouped: dict[tuple[str, str, str], list[Run]] = {}
    others = []
    for run in runs:
        if run.status == "complete":
            grouped.setdefault((str(run.model), str(run.protocol), run.variant), []).append(run)
        else:
            others.append(run)
    groups = []
    for (model, protocol, variant), members in sorted(grouped.items()):
        group = Group(model, protocol, variant, sorted(members, key=lambda r: (r.fold or 0, str(r.path))))
        _confusion(group)
        groups.append(group)
    per_setting = Counter((g.model, g.protocol) for g in groups)
    for g in groups:
        g.show_variant_id = per_setting[(g.model, g.protocol)] > 1
    return groups, others


# ---- tables -------------------------------------------------------------------------------------
def _stats(values: list[float | None]) -> tuple[float, float]:
    series = pd.Series([v for v in values if v is not None], dtype=float)
    return float(series.mean()), float(series.std(ddof=1))  # NaN std for a single run


def _pct(value: float | None) -> str:
    return "–" if value is None or np.isnan(value) else f"{100 * value:.2f}"


def _pm(values: list[float | None]) -> str:
    mean, std = _stats(values)
    return f"{_pct(mean)} ± {_pct(std)}"


def _relative(path: Path, root: Path) -> str:
    """A run's folder as the report names it: relative to the report's folder, or, for the
    report of one run (the folder itself), its own name."""
    try:
        relative = path.relative_to(root)
    except ValueError:
        return str(path)
    return str(relative) if relative.parts else path.name


def per_class_table(groups: list[Group]) -> pd.DataFrame:
    rows = []
    for group in groups:
        if group.confusion is None:
            continue
        clips = group.confusion.sum(axis=1)
        correct = np.diag(group.confusion)
        for i, name in enumerate(group.class_names):
            rows.append(
                {
                    "model": group.model,
                    "protocol": group.protocol,
                    "variant": group.variant,
                    "class_index": i,
                    "class": name,
                    "clips": int(clips[i]),
                    "correct": int(correct[i]),
                    "accuracy": correct[i] / clips[i] if clips[i] else np.nan,
                }
            )
    return pd.DataFrame(rows)


def results_table(groups: list[Group], others: list[Run], root: Path) -> pd.DataFrame:
    """One row per run, then ``mean`` and ``std`` rows per group; runs left out at the end."""
    rows = []
    for group in groups:
        for run in group.runs:
            rows.append(
                {
                    "model": group.model,
                    "protocol": group.protocol,
                    "variant": group.variant,
                    "row": "run",
                    "fold": run.fold,
                    "epochs": run.epochs,
                    "acc": run.acc,
                    "f1": run.f1,
                    f"{SIDE[group.protocol][0]}_acc": run.side_acc,
                    f"{SIDE[group.protocol][0]}_f1": run.side_f1,
                    "status": run.status,
                    "run": _relative(run.path, root),
                    "note": run.note,
                }
            )
        for stat in ("mean", "std"):
            values = {}
            for key, attr in (("acc", "acc"), ("f1", "f1"), ("side_acc", "side_acc"), ("side_f1", "side_f1")):
                mean, std = _stats([getattr(r, attr) for r in group.runs])
                name = key if not key.startswith("side") else key.replace("side", SIDE[group.protocol][0])
                values[name] = mean if stat == "mean" else std
            rows.append(
                {
                    "model": group.model,
                    "protocol": group.protocol,
                    "variant": group.variant,
                    "row": stat,
                    "runs": len(group.runs),
                    **values,
                    "note": STD_NOTE if stat == "std" else HEADLINE[group.protocol],
                }
            )
    for run in others:
        rows.append(
            {
                "model": run.model,
                "protocol": run.protocol,
                "variant": run.variant,
                "row": "run",
                "fold": run.fold,
                "status": run.status,
                "run": _relative(run.path, root),
                "note": run.note,
            }
        )
    columns = ["model", "protocol", "variant", "row", "fold", "runs", "epochs", "acc", "f1"]
    columns += ["best-epoch_acc", "best-epoch_f1", "validation_acc", "validation_f1", "status", "run", "note"]
    frame = pd.DataFrame(rows)
    frame = frame.reindex(columns=[c for c in columns if c in frame.columns])
    for name in ("fold", "runs", "epochs"):
        if name in frame.columns:
            frame[name] = frame[name].astype("Int64")
    return frame


def markdown(
    groups: list[Group], others: list[Run], root: Path, figures: dict[str, Path], per_class: bool = True
) -> str:
    """The report in Markdown (results.md); with ``per_class=False`` the summary printed on stdout,
    which names the files holding the per-class table instead of printing its 50-odd rows."""
    lines = [f"# Results for {root}", ""]
    if groups:
        lines += [
            "Figures in %; " + STD_NOTE + ". Protocols are never averaged together.",
            "",
            "| model | protocol | variant | runs | folds | acc mean ± std | macro F1 mean ± std | figure |",
            "|---|---|---|---:|---|---:|---:|---|",
        ]
        for g in groups:
            folds = ",".join(str(r.fold) for r in g.runs)
            variant = f"`{g.variant}`" if g.variant else "–"
            lines.append(
                f"| {g.model} | {g.protocol} | {variant} | {len(g.runs)} | {folds} | "
                f"{_pm([r.acc for r in g.runs])} | {_pm([r.f1 for r in g.runs])} | {HEADLINE[g.protocol]} |"
            )
        lines.append("")
    for g in groups:
        side, side_note = SIDE[g.protocol]
        lines += [f"## {g.label}", ""]
        if g.variant:
            lines += [f"Overrides: `{g.variant}`", ""]
        lines += [f"Figure: {HEADLINE[g.protocol]}. {side.capitalize()} columns: {side_note}."]
        lines += _coverage_warnings(g)
        lines += [
            "",
            f"| fold | epochs | acc | macro F1 | {side} acc | {side} macro F1 | run |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in g.runs:
            lines.append(
                f"| {r.fold} | {r.epochs} | {_pct(r.acc)} | {_pct(r.f1)} | {_pct(r.side_acc)} | "
                f"{_pct(r.side_f1)} | {_relative(r.path, root)} |"
            )
        lines.append(
            f"| **mean ± std** | | {_pm([r.acc for r in g.runs])} | {_pm([r.f1 for r in g.runs])} | "
            f"{_pm([r.side_acc for r in g.runs])} | {_pm([r.side_f1 for r in g.runs])} | "
            f"{len(g.runs)} run(s) |"
        )
        if g.confusion is not None:
            lines += [
                "",
                f"Confusion matrix summed over {g.confusion_runs} run(s): {figures[g.slug].name}",
            ]
        lines.append("")
    table = _per_class_markdown(groups)
    if per_class or not table:
        lines += table
    else:
        lines += ["Per-class accuracy: results.md and per_class.csv in the report folder.", ""]
    if others:
        lines += ["## Runs not included", "", "| status | model | protocol | fold | run | why |"]
        lines += ["|---|---|---|---|---|---|"]
        for r in others:
            lines.append(
                f"| {r.status} | {r.model or '?'} | {r.protocol or '?'} "
                f"| {r.fold if r.fold is not None else '?'} "
                f"| {_relative(r.path, root)} | {r.note} |"
            )
        lines.append("")
    if not groups:
        lines += ["No complete runs.", ""]
    return "\n".join(lines)


def _coverage_warnings(group: Group) -> list[str]:
    out = []
    counts = Counter(r.fold for r in group.runs)
    repeated = sorted(str(f) for f, c in counts.items() if c > 1)
    if repeated:
        out.append(f"Warning: fold(s) {', '.join(repeated)} appear more than once; the mean is over runs.")
    expected = sorted({f for r in group.runs for f in r.all_folds})
    missing = [f for f in expected if f not in counts]
    if missing:
        out.append(f"Warning: fold(s) {', '.join(map(str, missing))} missing; not a full cross-validation.")
    return out


def _per_class_markdown(groups: list[Group]) -> list[str]:
    with_matrix = [g for g in groups if g.confusion is not None]
    if not with_matrix:
        return []
    lines = ["## Per-class accuracy (%, summed over runs)", ""]
    lines.append("| class | " + " | ".join(g.label for g in with_matrix) + " |")
    lines.append("|---|" + "---:|" * len(with_matrix))
    names = max((g.class_names for g in with_matrix), key=len)
    for i, name in enumerate(names):
        cells = []
        for g in with_matrix:
            if i >= len(g.class_names):
                cells.append("–")
                continue
            clips, correct = int(g.confusion[i].sum()), int(g.confusion[i, i])
            cells.append(f"{_pct(correct / clips)} ({correct}/{clips})" if clips else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


# ---- entry point --------------------------------------------------------------------------------
def write_report(root: Path, out: Path | None = None) -> tuple[str, Path]:
    """Write the report files under ``out`` (default ``root/report``); return the summary to print
    (results.md less its per-class table) and out."""
    root = root.expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"{root}: not a folder")
    out = (out or root / "report").expanduser().resolve()
    if is_search(root):  # an hparams_search sweep: its trials by validation figures only
        text, files = search_report(root, out)
        publish(out, files, stale="search_history*.png")
        return text, out
    groups, others = collect(root, exclude=out)
    if not groups and not others:
        raise UserError(f"{root}: no runs found (no folder with .hydra/ or metrics.json)")
    files: dict[str, bytes] = {}  # everything is built before anything is written
    figures: dict[str, Path] = {}
    for g in groups:
        if g.confusion is None:
            continue
        accuracy = np.trace(g.confusion) / max(1, g.confusion.sum())
        title = f"{g.label}: {g.confusion_runs} run(s), {int(g.confusion.sum())} clips, acc {accuracy:.3f}"
        fig = confusion_figure(g.confusion, g.class_names, title)
        figures[g.slug] = out / f"confusion_{g.slug}.png"
        png = io.BytesIO()
        try:
            fig.savefig(png, format="png", dpi=110)
        finally:
            plt.close(fig)
        files[figures[g.slug].name] = png.getvalue()
    files["results.md"] = markdown(groups, others, root, figures).encode()
    text = markdown(groups, others, root, figures, per_class=False)
    files["results.csv"] = results_table(groups, others, root).to_csv(index=False).encode()
    files["per_class.csv"] = per_class_table(groups).to_csv(index=False).encode()
    publish(out, files, stale="confusion_*.png")
    return text, out


def publish(out: Path, files: dict[str, bytes], stale: str = "") -> None:
    """Put ``files`` (name → content) into ``out`` all together, or none of them.

    Each is first written and synced under a hidden temporary name in ``out``; only when every
    one is, they are renamed over the old ones (a rename within a folder cannot half-happen), and
    files of the earlier report matching ``stale`` that this one does not have are removed. A
    failure before the renames removes the temporary files and leaves ``out`` as it was.
    """
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staged: dict[Path, Path] = {}
    try:
        for name, data in files.items():
            staged[out / name] = _stage(out, name, data)
    except BaseException:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if empty: nothing else was there
        raise
    for final, tmp in staged.items():
        os.replace(tmp, final)
    for old in out.glob(stale) if stale else []:
        if old not in staged:  # e.g. the confusion matrix of a group this report no longer has
            old.unlink(missing_ok=True)


def _stage(out: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to a synced temporary file beside ``out/name``; return its path."""
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; reports are meant to be shared
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def main(argv: list[str] | None = None) -> None:
    args = report_parser().parse_args(argv)

    def run() -> None:
        text, out = write_report(args.dir, args.out)
        print(text)
        print(f"report written to {out}")

    run_guarded(run)


if __name__ == "__main__":
    main()
