"""Reading and checking a folded audio-classification CSV (ESC-50, ESC-10, UrbanSound8K, your own)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from esc50_lightning.data.audio import clip_samples
from esc50_lightning.errors import DataError, UserError


@dataclass(frozen=True)
class DatasetSpec:
    """Where a folded dataset lives and which CSV columns say what (``conf/data/*.yaml``)."""

    name: str
    root: str
    csv: str = "meta/esc50.csv"
    audio_dir: str = "audio"
    fold_dir: str | None = None  # e.g. "fold{fold}" for UrbanSound8K
    file_column: str = "filename"
    fold_column: str = "fold"
    label_column: str = "target"
    class_column: str | None = "category"
    group_column: str | None = None  # source recording id, kept inside one fold
    filter_column: str | None = None  # keep rows where this column is true (ESC-10)
    folds: Sequence[int] | None = None  # expected folds; None = whatever the CSV holds
    num_classes: int | None = None  # expected class count; None = from the data
    sample_rate: int = 44100
    clip_seconds: float = 5.0
    download_url: str | None = None

    @property
    def root_path(self) -> Path:
        return Path(self.root).expanduser()

    @property
    def csv_path(self) -> Path:
        return self.root_path / self.csv

    @property
    def clip_samples(self) -> int:
        return clip_samples(self.sample_rate, self.clip_seconds)


@dataclass
class FoldedTable:
    """The checked rows of a dataset: one entry per clip."""

    files: list[str]  # as written in the CSV
    paths: list[Path]
    folds: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    groups: np.ndarray | None = None
    fold_ids: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.files)

    def select(self, keep: np.ndarray) -> FoldedTable:
        idx = np.flatnonzero(keep) if keep.dtype == bool else keep
        return FoldedTable(
            files=[self.files[i] for i in idx],
            paths=[self.paths[i] for i in idx],
            folds=self.folds[idx],
            labels=self.labels[idx],
            class_names=self.class_names,
            groups=None if self.groups is None else self.groups[idx],
            fold_ids=self.fold_ids,
        )


def _truthy(column: pd.Series) -> np.ndarray:
    if column.dtype == bool:
        return column.to_numpy()
    return column.astype(str).str.strip().str.lower().isin({"true", "1", "yes", "y"}).to_numpy()


def read_table(spec: DatasetSpec) -> FoldedTable:
    """Read the CSV and check every row; raise ``DataError`` listing all problems found."""
    csv_path = spec.csv_path
    try:
        frame = pd.read_csv(csv_path)
    except FileNotFoundError:
        raise UserError(f"{csv_path}: metadata CSV not found") from None
    except Exception as err:
        raise UserError(f"{csv_path}: cannot parse CSV ({err})") from None

    problems: list[str] = []
    required = [spec.file_column, spec.fold_column, spec.label_column]
    optional = [c for c in (spec.class_column, spec.group_column, spec.filter_column) if c]
    missing = [c for c in required + optional if c not in frame.columns]
    if missing:
        raise DataError(
            [f"{csv_path}: missing column(s) {', '.join(map(repr, missing))}; has {list(frame.columns)}"]
        )
    if spec.filter_column:
        frame = frame[_truthy(frame[spec.filter_column])].reset_index(drop=True)
    if frame.empty:
        raise DataError([f"{csv_path}: no rows to use"])

    def line(i: int) -> str:  # CSV line number (header is line 1) where the row came from
        return f"{csv_path}:{int(frame.index[i]) + 2}"

    files = frame[spec.file_column].astype(str).tolist()
    dupes = frame[spec.file_column].duplicated(keep=False).to_numpy()
    for name in sorted({files[i] for i in np.flatnonzero(dupes)}):
        lines = ", ".join(line(i).rsplit(":", 1)[1] for i in np.flatnonzero(dupes) if files[i] == name)
        problems.append(f"{csv_path}: duplicate file name {name!r} (lines {lines})")

    folds = pd.to_numeric(frame[spec.fold_column], errors="coerce").to_numpy()
    for i in np.flatnonzero(np.isnan(folds) | (np.round(folds) != folds)):
        raw = frame[spec.fold_column].iloc[i]
        problems.append(
            f"{line(i)}: fold is empty" if pd.isna(raw) else f"{line(i)}: fold {raw!r} is not an integer"
        )
    if spec.folds is not None:
        allowed = {int(f) for f in spec.folds}
        lo, hi = min(allowed), max(allowed)
        for i in np.flatnonzero(~np.isnan(folds)):
            if folds[i] == np.round(folds[i]) and int(folds[i]) not in allowed:
                problems.append(f"{line(i)}: fold {int(folds[i])} outside {lo}-{hi}")

    raw_labels = frame[spec.label_column]
    numeric = pd.to_numeric(raw_labels, errors="coerce")
    class_names: list[str]
    if numeric.notna().all() and (numeric == numeric.round()).all():
        labels = numeric.astype(int).to_numpy()
        if spec.filter_column:  # a subset (ESC-10): remap its labels onto 0..K-1 in order
            present = sorted(set(labels.tolist()))
            labels = np.searchsorted(np.array(present), labels)
            source_ids = present
        else:
            source_ids = None
        n_classes = spec.num_classes or int(labels.max()) + 1
        for i in np.flatnonzero((labels < 0) | (labels >= n_classes)):
            problems.append(f"{line(i)}: label {int(raw_labels.iloc[i])} outside 0-{n_classes - 1}")
        names: dict[int, str] = {}
        if spec.class_column:
            for i, (lab, cat) in enumerate(zip(labels, frame[spec.class_column].astype(str), strict=True)):
                if names.setdefault(int(lab), cat) != cat:
                    problems.append(
                        f"{line(i)}: class {cat!r} disagrees with label {int(raw_labels.iloc[i])} "
                        f"(which is {names[int(lab)]!r} elsewhere)"
                    )
        class_names = [names.get(k, str(source_ids[k] if source_ids else k)) for k in range(n_classes)]
        if spec.num_classes is None:
            absent = sorted(set(range(n_classes)) - set(labels.tolist()))
            if absent:
                problems.append(f"{csv_path}: labels must cover 0-{n_classes - 1}; none has {absent[:5]}")
    else:  # class names as labels
        if spec.class_column and spec.class_column != spec.label_column:
            bad = np.flatnonzero(numeric.isna().to_numpy() | (numeric != numeric.round()).to_numpy())
            for i in bad:
                raw = raw_labels.iloc[i]
                problems.append(
                    f"{line(i)}: {spec.label_column} is empty"
                    if pd.isna(raw)
                    else f"{line(i)}: {spec.label_column} {raw!r} is not an integer label"
                )
            raise DataError(problems)
        class_names = sorted(raw_labels.astype(str).unique().tolist())
        labels = np.searchsorted(np.array(class_names), raw_labels.astype(str).to_numpy())
        n_classes = len(class_names)
        if spec.num_classes is not None and n_classes != spec.num_classes:
            problems.append(f"{csv_path}: {n_classes} classes found, config says {spec.num_classes}")

    if problems:
        raise DataError(problems)

    folds = folds.astype(int)
    root = spec.root_path / spec.audio_dir
    paths = [
        (root / spec.fold_dir.format(fold=int(f)) / name) if spec.fold_dir else root / name
        for name, f in zip(files, folds, strict=True)
    ]
    groups = frame[spec.group_column].astype(str).to_numpy() if spec.group_column else None
    fold_ids = sorted(int(f) for f in (spec.folds if spec.folds is not None else set(folds.tolist())))
    return FoldedTable(files, paths, folds, labels.astype(int), class_names, groups, fold_ids)
