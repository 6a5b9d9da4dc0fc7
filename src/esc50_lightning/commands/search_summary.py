"""The report of an ``hparams_search`` sweep: its trials, the best settings, the optimisation history.

``python -m esc50_lightning.report <sweep>`` writes ``search.md``, ``search_trials.csv`` and
``search_history.png`` to ``<sweep>/report/`` when the folder holds a study (``optuna.db``). It
shows validation figures only: the trials' test folds are left out, since choosing among trials
by them would select on the test data.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import MaxNLocator

from esc50_lightning.errors import UserError
from esc50_lightning.tasks.search import ERROR_ATTR, PRUNED_ATTR, RECIPE_FILE, STUDY_FILE


def is_search(root: Path) -> bool:
    return (root / STUDY_FILE).is_file()


def _state(trial: Any) -> str:
    name = trial.state.name
    if name == "FAIL":
        return "failed" if ERROR_ATTR in trial.user_attrs else "interrupted"
    return {"COMPLETE": "complete", "RUNNING": "running", "WAITING": "queued"}.get(name, name.lower())


def trials_table(study: Any) -> pd.DataFrame:
    """One row per trial: number, state, objective (a pruned trial's: its last report), per-fold
    validation values, the values tried, where it was pruned, why it failed."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"trial": t.number, "state": _state(t), "value": t.value}
        row.update({k: v for k, v in sorted(t.user_attrs.items()) if k.startswith("fold")})
        row.update(t.params)
        done = t.datetime_complete and t.datetime_start
        row["seconds"] = round((t.datetime_complete - t.datetime_start).total_seconds(), 1) if done else None
        row["pruned"] = t.user_attrs.get(PRUNED_ATTR, "")  # where: "fold 2, epoch 150 of 1000"
        row["error"] = t.user_attrs.get(ERROR_ATTR, "")
        rows.append(row)
    return pd.DataFrame(rows)


def history_figure(study: Any, metric: str) -> plt.Figure:
    """Each finished trial's objective and the best so far, by trial number."""
    maximize = study.direction.name == "MAXIMIZE"
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    numbers = [t.number for t in done]
    values = [t.value for t in done]
    best, best_so_far = -math.inf if maximize else math.inf, []
    for v in values:
        best = max(best, v) if maximize else min(best, v)
        best_so_far.append(best)
    ax.plot(numbers, values, "o", label="trial")
    ax.step(numbers, best_so_far, where="post", color="tab:red", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {metric} ({'max' if maximize else 'min'}imised)")
    ax.set_title(f"{study.study_name}: {len(done)} finished trials")
    ax.legend()
    fig.tight_layout()
    return fig


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _markdown_table(frame: pd.DataFrame) -> list[str]:
    columns = [c for c in frame.columns if c not in ("pruned", "error") or frame[c].astype(bool).any()]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]) for c in columns) + " |")
    return lines


def _recipe_header(root: Path) -> list[str]:
    path = root / RECIPE_FILE
    if not path.is_file():
        return ["No recipe yet: the search has not ended (`hparams_search.dir=<sweep>` continues it)."]
    comments = [line.lstrip("# ").rstrip() for line in path.read_text().splitlines() if line.startswith("#")]
    return [f"Recipe: `{path}`", "", *(f"- {c}" for c in comments)]


def search_report(root: Path, out: Path) -> tuple[str, dict[str, bytes]]:
    """The Markdown of the search in ``root`` and the files to write to ``out`` (name → content)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{root / STUDY_FILE}"
    try:
        names = optuna.study.get_all_study_names(storage)
    except Exception as err:  # a damaged or foreign file: one line, not Optuna's traceback
        raise UserError(f"{root / STUDY_FILE}: not an Optuna study ({type(err).__name__})") from None
    if not names:
        raise UserError(f"{root / STUDY_FILE}: holds no study")
    lines: list[str] = []
    files: dict[str, bytes] = {}
    frames = []
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        metric = study.user_attrs.get("metric", "objective")  # recorded by tasks/search.py
        frame = trials_table(study)
        frames.append(frame.assign(study=name))
        counts = frame["state"].value_counts().to_dict() if len(frame) else {}
        lines += [f"# hparams_search={name}", ""]
        lines.append(
            f"{len(frame)} trials ("
            + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            + f"); objective: validation {metric}, {study.direction.name.lower()}d, "
            "mean over the search's folds."
        )
        lines += [
            "",
            "Test-fold figures are left out: choosing among trials by them would select on the test data.",
            "",
        ]
        if any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
            best = study.best_trial
            lines += ["## Best", "", f"Trial {best.number}: validation {metric} {best.value:.4f}", ""]
            lines += [f"- `{k}={v}`" for k, v in best.params.items()]
            lines += ["", *_recipe_header(root), ""]
            figure = history_figure(study, metric)
            png = io.BytesIO()
            try:
                figure.savefig(png, format="png", dpi=110)
            finally:
                plt.close(figure)
            image = "search_history.png" if len(names) == 1 else f"search_history_{name}.png"
            files[image] = png.getvalue()
            lines += [f"![optimisation history]({image})", ""]
        lines += ["## Trials", "", *_markdown_table(frame), ""]
    text = "\n".join(lines)
    files["search.md"] = text.encode()
    files["search_trials.csv"] = pd.concat(frames).to_csv(index=False).encode()
    return text, files
