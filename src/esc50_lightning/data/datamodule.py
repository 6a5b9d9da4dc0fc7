"""LightningDataModule over a folded dataset: decode once, cache on disk, serve batches from the cache."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
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
from esc50_lightning.downloads import default_cache_dir
from esc50_lightning.errors import UserError

log = logging.getLogger(__name__)


def gather(
    inputs: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, indices: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The batch of split indices ``indices`` (``copies`` of ``rows`` counted in turn) from the
    whole cached array, on the array's device: the one gather of ``ClipSet`` and ``DeviceBatches``."""
    rows = rows[indices % len(rows)]
    batch = inputs.index_select(0, rows)  # ~3x faster than advanced indexing on CPU
    if batch.dtype == torch.int16:  # waveform cache
        batch = batch.float() / INT16_SCALE
    return {"x": batch, "y": labels[rows], "row": rows}


class ClipSet(Dataset):
    """One split's clips: ``rows`` of the whole cached array; ``__getitems__`` gathers a batch at once."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, copies: int = 1):
        self.inputs, self.labels, self.rows, self.copies = inputs, labels, rows, copies

    def __len__(self) -> int:
        return len(self.rows) * self.copies

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return gather(self.inputs, self.labels, self.rows, torch.as_tensor(indices, dtype=torch.long))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}


def _keep_batch(batch: Any) -> Any:
    return batch


class DeviceBatches:
    """One split's batches gathered from a copy of the cache on the training device: no DataLoader,
    no host round trip per step. Yields ``{"x", "y", "row"}`` as ``ClipSet.__getitems__`` does,
    already on the device, in the order a ``DataLoader`` with the same ``batch_size``, ``shuffle``
    and ``drop_last=False`` would draw (the last, shorter batch is kept).

    A shuffled epoch draws its order (a permutation of ``len(rows) * copies`` indices, one copy
    index per clip per copy, as ``ClipSet`` counts them) from a CPU generator seeded with
    ``seed + epoch``, so epoch ``k`` has the same order in a resumed run as in an uninterrupted one.
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        rows: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        copies: int = 1,
        seed: int = 0,
        epoch: Any = None,
    ):
        self.inputs, self.labels = inputs, labels
        self.rows = rows.to(inputs.device)
        self.batch_size, self.shuffle, self.copies, self.seed = batch_size, shuffle, copies, seed
        self._epoch = epoch  # () -> the epoch under way (the trainer's); else count calls of iter()
        self._iters = 0

    def __len__(self) -> int:
        return -(-len(self.rows) * self.copies // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """The indices (into ``ClipSet``'s ``len(rows) * copies``) of epoch ``epoch``, in order."""
        n = len(self.rows) * self.copies
        if not self.shuffle:
            return torch.arange(n)
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(n, generator=generator)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch = self._epoch() if self._epoch is not None else self._iters
        self._iters += 1
        order = self.order(epoch).to(self.inputs.device)  # one small copy per epoch
        for start in range(0, len(order), self.batch_size):
            yield gather(self.inputs, self.labels, self.rows, order[start : start + self.batch_size])


class FoldedAudioDataModule(L.LightningDataModule):
    """Train/validation/test splits of a folded dataset, served from the memory-mapped cache.

    Every clip is decoded once with soundfile into a fixed-length mono waveform cache; with
    ``cache_features`` the deterministic log-mel of every clip is cached too, so batches carry
    log-mels and only normalisation, crop and SpecAugment run per step. Without it batches carry
    waveforms and the whole frontend runs per step on the training device.

    With ``device_resident`` the whole cache is copied once to the training device and batches are
    gathered there (``DeviceBatches``): no DataLoader, no host-to-device copy per step. One process
    per device: refused under DDP.

    ``load_splits`` names the splits whose clips are read (all by default): eval.py reads only
    ``test``, so on a cold cache it decodes the fold it scores, not the whole dataset.
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
        cache_dir: str | None = None,
        cache_features: bool = True,
        frontend: Frontend | None = None,
        limit_per_class: int | None = None,
        download_sha256: str | None = None,
        device_resident: bool = False,
        load_splits: Sequence[str] | None = None,
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
        self.cache_root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.cache_features = cache_features
        self.frontend = frontend
        self.limit_per_class = limit_per_class
        self.download_sha256 = download_sha256
        self.device_resident = device_resident
        self.load_splits = None if load_splits is None else list(load_splits)
        self._resident: tuple[torch.Tensor, torch.Tensor] | None = None
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
            if self.load_splits is not None and not self.store.is_cached(table, self.cache_features):
                # Decode only the folds these splits read (eval: the one it scores); a cache of
                # every clip, where there is one, serves as it is.
                folds = sorted({f for split in self.load_splits for f in self.splits[split]})
                table = table.select(np.isin(table.folds, folds))
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
    def resident_arrays(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached inputs and the labels of every clip on ``device``, copied there once (on the
        CPU: the mapped cache itself, no copy)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:  # "cuda" is the current device, cuda:N
            device = torch.device("cuda", torch.cuda.current_device())
        if self._resident is None or self._resident[0].device != device:
            dataset = next(iter(self.sets.values()))
            inputs = dataset.inputs.to(device)
            self._resident = (inputs, dataset.labels.to(device))
            kind = "waveforms" if inputs.dtype == torch.int16 else "log-mels"
            held = "copied to" if device.type != "cpu" else "mapped from the cache file on"
            gb = inputs.numel() * inputs.element_size() / 1e9
            log.info(
                "data.device_resident: %.2f GB of cached %s (%d clips) %s %s",
                gb,
                kind,
                len(inputs),
                held,
                device,
            )
        return self._resident

    def device_loader(
        self, split: str, device: torch.device | str, shuffle: bool | None = None
    ) -> DeviceBatches:
        """``split``'s batches gathered on ``device`` (``data.device_resident``); ``shuffle``
        defaults to training order for ``train`` and file order for the others."""
        dataset = self.sets[split]
        shuffle = split == "train" if shuffle is None else shuffle
        inputs, labels = self.resident_arrays(device)
        trainer = self.trainer
        return DeviceBatches(
            inputs,
            labels,
            dataset.rows,
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            shuffle=shuffle,
            copies=dataset.copies,
            seed=torch.initial_seed() % 2**62,  # the run's seed after seed_everything
            epoch=(lambda: trainer.current_epoch) if trainer is not None else None,
        )

    def _loader(self, split: str, shuffle: bool) -> DataLoader | DeviceBatches:
        dataset = self.sets[split]
        distributed = self.trainer is not None and self.trainer.world_size > 1
        if self.device_resident:
            if distributed:
                raise UserError(
                    "data.device_resident=true runs one process per device and is refused under DDP "
                    f"(world size {self.trainer.world_size}): set data.device_resident=false"
                )
            device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
            return self.device_loader(split, device, shuffle)
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

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader("test", shuffle=False)
