"""LightningDataModule over a folded dataset: decode once, cache on disk, serve batches from the cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from esc50_lightning.data.audio import AudioReadError, fit_length, read_mono
from esc50_lightning.data.cache import ArrayCache
from esc50_lightning.data.download import ensure_dataset
from esc50_lightning.data.table import DatasetSpec, FoldedTable, read_table
from esc50_lightning.errors import DataError, UserError
from esc50_lightning.features.frontend import LogMel

log = logging.getLogger(__name__)

PROTOCOLS = ("cv", "holdout")
INT16_SCALE = 32767.0


def fold_splits(folds: Sequence[int], fold: int, protocol: str = "cv") -> dict[str, list[int]]:
    """Which folds train, validate and test.

    ``cv``: the other folds train, ``fold`` is both validation and the reported evaluation fold.
    ``holdout``: ``fold`` is the test fold, the fold before it (wrapping) validates, the rest train.
    """
    folds = sorted(int(f) for f in folds)
    if protocol not in PROTOCOLS:
        raise UserError(f"data.protocol={protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if fold not in folds:
        raise UserError(f"data.fold={fold} is not one of the dataset's folds {folds[0]}-{folds[-1]}")
    if protocol == "cv":
        if len(folds) < 2:
            raise UserError("cross-validation needs at least 2 folds")
        return {"train": [f for f in folds if f != fold], "val": [fold], "test": [fold]}
    if len(folds) < 3:
        raise UserError("the holdout protocol needs at least 3 folds")
    val = folds[(folds.index(fold) - 1) % len(folds)]
    return {"train": [f for f in folds if f not in (fold, val)], "val": [val], "test": [fold]}


class ClipSet(Dataset):
    """One split's clips: ``rows`` of the whole cached array; ``__getitems__`` gathers a batch at once."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, copies: int = 1):
        self.inputs, self.labels, self.rows, self.copies = inputs, labels, rows, copies

    def __len__(self) -> int:
        return len(self.rows) * self.copies

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rows = self.rows[torch.as_tensor(indices, dtype=torch.long) % len(self.rows)]
        inputs = self.inputs.index_select(0, rows)  # ~3x faster than advanced indexing on CPU
        if inputs.dtype == torch.int16:  # waveform cache
            inputs = inputs.float() / INT16_SCALE
        return {"x": inputs, "y": self.labels[rows], "row": rows}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}


def _keep_batch(batch: Any) -> Any:
    return batch


class FoldedAudioDataModule(L.LightningDataModule):
    """Train/validation/test splits of a folded dataset, served from the memory-mapped cache.

    Every clip is decoded once with soundfile into a fixed-length mono waveform cache; with
    ``cache_features`` the deterministic log-mel of every clip is cached too, so batches carry
    log-mels and only normalisation, crop and SpecAugment run per step. Without it batches carry
    waveforms and the whole frontend runs per step on the training device.
    """

    def __init__(
        self,
        dataset: DatasetSpec | dict,
        fold: int = 1,
        protocol: str = "cv",
        batch_size: int = 32,
        eval_batch_size: int = 64,
        copies_per_epoch: int = 1,
        num_workers: int = 0,
        cache_dir: str = "~/.cache/esc50-lightning",
        cache_features: bool = True,
        frontend: LogMel | None = None,
        limit_per_class: int | None = None,
        download_sha256: str | None = None,
    ):
        super().__init__()
        self.spec = dataset if isinstance(dataset, DatasetSpec) else DatasetSpec(**dict(dataset))
        if batch_size < 1 or eval_batch_size < 1:
            raise UserError("data.batch_size and data.eval_batch_size must be positive")
        if copies_per_epoch < 1:
            raise UserError(f"data.copies_per_epoch={copies_per_epoch} must be at least 1")
        self.fold = int(fold)
        self.protocol = protocol
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.copies_per_epoch = copies_per_epoch
        self.num_workers = num_workers
        self.cache_root = Path(cache_dir).expanduser()
        self.cache_features = cache_features
        self.frontend = frontend
        self.limit_per_class = limit_per_class
        self.download_sha256 = download_sha256
        if cache_features and frontend is None:
            raise UserError("data.cache_features=true needs the log-mel frontend (features.logmel)")
        self._table: FoldedTable | None = None
        self.sets: dict[str, ClipSet] = {}

    # ---- metadata -------------------------------------------------------------------------
    @property
    def table(self) -> FoldedTable:
        if self._table is None:
            ensure_dataset(self.spec, self.download_sha256)
            table = read_table(self.spec)
            if self.limit_per_class:
                table = table.select(self._first_per_class(table, self.limit_per_class))
            self.splits = fold_splits(table.fold_ids, self.fold, self.protocol)
            self._table = table
        return self._table

    @staticmethod
    def _first_per_class(table: FoldedTable, n: int) -> np.ndarray:
        seen: Counter = Counter()
        keep = np.zeros(len(table), dtype=bool)
        for i, key in enumerate(zip(table.folds.tolist(), table.labels.tolist(), strict=True)):
            if seen[key] < n:
                seen[key] += 1
                keep[i] = True
        return keep

    @property
    def class_names(self) -> list[str]:
        return self.table.class_names

    @property
    def num_classes(self) -> int:
        return len(self.table.class_names)

    def describe(self) -> dict[str, Any]:
        """What a checkpoint records about the data it was trained on."""
        return {
            "dataset": self.spec.name,
            "fold": self.fold,
            "protocol": self.protocol,
            "splits": self.table and self.splits,
            "class_names": self.class_names,
            "sample_rate": self.spec.sample_rate,
            "clip_seconds": self.spec.clip_seconds,
        }

    # ---- caches ---------------------------------------------------------------------------
    def _file_stats(self, table: FoldedTable) -> tuple[list[tuple[str, int, int]], list[str]]:
        """(path, size, mtime) of every clip, and the clips that are missing or empty."""
        problems, stats = [], []
        for path in table.paths:
            try:
                st = path.stat()
            except FileNotFoundError:
                problems.append(f"{path}: file listed in the CSV is missing")
                continue
            if not path.is_file():
                problems.append(f"{path}: not a file")
            elif st.st_size == 0:
                problems.append(f"{path}: file is empty (0 bytes)")
            stats.append((str(path), st.st_size, st.st_mtime_ns))
        return stats, problems

    def _waveform_key(self, table: FoldedTable) -> str:
        """Fingerprint of the files (size, mtime) and decode settings; raise if any file is unusable.

        A missing or empty file is reported together with every other clip that fails to decode,
        so one run lists all the problems, not only the first kind found.
        """
        stats, problems = self._file_stats(table)
        if problems:
            bad = {p.split(": ", 1)[0] for p in problems}
            rest = [i for i, path in enumerate(table.paths) if str(path) not in bad]
            _, decode_problems = self._decode(table, rest)
            raise DataError(sorted(problems + decode_problems))
        payload = json.dumps(
            {"files": stats, "rate": self.spec.sample_rate, "samples": self.spec.clip_samples, "v": 1}
        )
        return hashlib.sha1(payload.encode()).hexdigest()[:16]

    def _feature_key(self, waveform_key: str) -> str:
        assert self.frontend is not None
        m = self.frontend.mel
        params = [
            m.sample_rate,
            m.n_fft,
            m.hop_length,
            m.n_mels,
            m.f_min,
            m.f_max,
            self.frontend.to_db.top_db,
        ]
        version = 2  # bump when the frontend's computation changes
        return hashlib.sha1(json.dumps([waveform_key, params, version]).encode()).hexdigest()[:16]

    def _cache_dir(self) -> Path:
        return self.cache_root / self.spec.name

    def _cached(self, cache: ArrayCache, build: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
        try:
            return cache.get_or_build(build)
        except OSError as err:  # full disk, read-only or misplaced cache folder: say where and why
            raise UserError(
                f"{cache.directory}: cannot write the data cache ({err.strerror or err}); free space there "
                "or point data.cache_dir (or ESC50_CACHE) somewhere writable"
            ) from err

    def _waveforms(self, table: FoldedTable) -> np.ndarray:
        key = self._waveform_key(table)
        cache = ArrayCache(self._cache_dir(), f"waveforms-{key}", key)
        array, built = self._cached(cache, lambda: self._decode_all(table))
        if built:
            log.info("Cached %d decoded clips in %s", len(table), cache.array_path)
        return array

    def _decode_all(self, table: FoldedTable) -> np.ndarray:
        out, problems = self._decode(table, range(len(table)))
        if problems:
            raise DataError(sorted(problems))
        return out

    def _decode(self, table: FoldedTable, indices: Sequence[int]) -> tuple[np.ndarray, list[str]]:
        """Decode ``indices`` into int16 clips of the configured length; list files that fail.

        Another sample rate, channel count or length is converted, with one warning per kind.
        """
        length = self.spec.clip_samples
        out = np.zeros((len(table), length), dtype=np.int16)
        problems: list[str] = []
        converted: dict[str, list[str]] = {"sample rate": [], "channels": [], "length": []}

        def decode(i: int) -> None:
            path = table.paths[i]
            try:
                clip = read_mono(path, self.spec.sample_rate)
            except AudioReadError as err:
                problems.append(f"{path}: {err}")
                return
            if clip.source_rate != self.spec.sample_rate:
                converted["sample rate"].append(f"{path} ({clip.source_rate} Hz)")
            if clip.source_channels != 1:
                converted["channels"].append(f"{path} ({clip.source_channels} channels)")
            if len(clip.samples) != length:
                seconds = len(clip.samples) / self.spec.sample_rate
                converted["length"].append(f"{path} ({seconds:.2f} s)")
            samples = fit_length(clip.samples, length)
            out[i] = np.clip(np.round(samples * INT16_SCALE), -32768, 32767).astype(np.int16)

        workers = min(8, (os.cpu_count() or 2) * 2)
        with ThreadPoolExecutor(workers) as pool:  # libsndfile releases the GIL
            list(pool.map(decode, indices))
        if problems:
            return out, problems
        notes = {
            "sample rate": f"resampled to {self.spec.sample_rate} Hz",
            "channels": "averaged to mono",
            "length": f"padded/trimmed to {self.spec.clip_seconds:g} s",
        }
        for kind, items in converted.items():
            if items:
                shown = ", ".join(sorted(items)[:3]) + (
                    f" and {len(items) - 3} more" if len(items) > 3 else ""
                )
                log.warning("%d clip(s) %s: %s", len(items), notes[kind], shown)
        return out, problems

    def _features(self, table: FoldedTable) -> np.ndarray:
        assert self.frontend is not None
        key = self._feature_key(self._waveform_key(table))
        cache = ArrayCache(self._cache_dir(), f"logmel-{key}", key)

        def build() -> np.ndarray:
            waves = self._waveforms(table)
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            frontend = self.frontend.to(device)
            frames = frontend.frames(waves.shape[1])
            out = np.empty((len(waves), frontend.n_mels, frames), dtype=np.float32)
            with torch.inference_mode():
                for start in range(0, len(waves), 64):
                    chunk = torch.from_numpy(np.asarray(waves[start : start + 64], dtype=np.float32))
                    out[start : start + len(chunk)] = frontend(chunk.to(device) / INT16_SCALE).cpu().numpy()
            self.frontend.to("cpu")
            return out

        array, built = self._cached(cache, build)
        if built:
            log.info("Cached log-mels of %d clips in %s", len(table), cache.array_path)
        return array

    def prepare_data(self) -> None:
        """Download if needed, check the CSV and files, and build the caches (rank 0 only)."""
        table = self.table
        self._features(table) if self.cache_features else self._waveforms(table)

    def setup(self, stage: str | None = None) -> None:
        if self.sets:
            return
        table = self.table
        array = self._features(table) if self.cache_features else self._waveforms(table)
        # No copy: the splits index the memory-mapped cache, whose pages load on first use and are
        # shared by every process that maps the file (sweep jobs, DDP ranks, DataLoader workers).
        inputs = torch.from_numpy(array)
        labels = torch.from_numpy(table.labels.astype(np.int64))
        for name, folds in self.splits.items():
            rows = torch.from_numpy(np.flatnonzero(np.isin(table.folds, folds)))
            copies = self.copies_per_epoch if name == "train" else 1
            self.sets[name] = ClipSet(inputs, labels, rows, copies)

    # ---- loaders --------------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.sets[split]
        distributed = self.trainer is not None and self.trainer.world_size > 1
        sampler = None
        if distributed and not shuffle:  # no padding duplicates: metrics see every clip exactly once
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            shuffle=shuffle if sampler is None else False,
            sampler=sampler,
            drop_last=False,
            num_workers=self.num_workers,
            collate_fn=_keep_batch,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def spec_dict(self) -> dict[str, Any]:
        return asdict(self.spec)
