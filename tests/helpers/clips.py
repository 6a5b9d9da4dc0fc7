"""Real ESC-50 clips as a batch of waveforms, for the frontend, augmentation and mixing tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from esc50_lightning.data.audio import fit_length, read_mono


def clip_names(esc50_root: Path, classes: int) -> list[str]:
    """The first take of each of the first ``classes`` classes to appear in the metadata."""
    meta = pd.read_csv(esc50_root / "meta" / "esc50.csv")
    return meta.drop_duplicates("target").head(classes).filename.tolist()


def load_clips(
    esc50_root: Path, clips: Sequence[str] | int, rate: int = 44100, seconds: float = 5.0
) -> torch.Tensor:
    """``(clips, rate * seconds)`` float32 waveforms: each file of ``clips`` (names under audio/, or
    a number: :func:`clip_names` of that many classes) read as mono at ``rate``, cut or padded to
    ``seconds``. At 44.1 kHz an ESC-50 clip comes back sample for sample as soundfile reads it."""
    names = clip_names(esc50_root, clips) if isinstance(clips, int) else list(clips)
    length = int(rate * seconds)
    waves = [fit_length(read_mono(esc50_root / "audio" / name, rate).samples, length) for name in names]
    return torch.stack([torch.from_numpy(w) for w in waves])
