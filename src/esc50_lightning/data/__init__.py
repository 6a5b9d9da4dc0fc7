"""Where files become cached tensors: CSV checks, decoding, the disk cache and the DataModule."""

from esc50_lightning.data.datamodule import FoldedAudioDataModule
from esc50_lightning.data.splits import fold_splits
from esc50_lightning.data.table import DatasetSpec, FoldedTable, read_table

__all__ = ["DatasetSpec", "FoldedAudioDataModule", "FoldedTable", "fold_splits", "read_table"]
