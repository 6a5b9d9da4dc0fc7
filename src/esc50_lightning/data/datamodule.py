"""LightningDataModule over a folded dataset: decode once, cache on disk, serve batches from the cache."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from esc50_lightning.data.download import ensure_dataset
from esc50_lightning.data.splits import fold_splits
from esc50_lightning.data.store import INT16_SCALE, ClipStore, Frontend
from esc50_lightning.data.table import DatasetSpec, FoldedTable, read_table
from esc50_lightning.errors import UserError

log = logging.getLogger(__name__)


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
        frontend: Frontend | None = None,
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
        self.store = ClipStore(self.spec, self.cache_root / self.spec.name, frontend)
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

    def prepare_data(self) -> None:
        """Download if needed, check the CSV and files, and build the caches (rank 0 only)."""
        table = self.table
        self.store.features(table) if self.cache_features else self.store.waveforms(table)

    def setup(self, stage: str | None = None) -> None:
        if self.sets:
            return
        table = self.table
        array = self.store.features(table) if self.cache_features else self.store.waveforms(table)
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
