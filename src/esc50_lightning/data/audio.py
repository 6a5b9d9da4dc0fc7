"""Decoding audio files with soundfile into fixed-length mono clips."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF


@dataclass
class Decoded:
    samples: np.ndarray  # float32 mono at the target rate
    source_rate: int
    source_channels: int


class AudioReadError(Exception):
    pass


def read_mono(path: str | Path, sample_rate: int) -> Decoded:
    """Read any soundfile-readable file, average channels to mono and resample to ``sample_rate``."""
    try:
        info = sf.info(str(path))
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:
        msg = str(err).strip().splitlines()[-1] if str(err).strip() else err.__class__.__name__
        raise AudioReadError(msg) from err
    if data.shape[0] == 0:
        raise AudioReadError("holds no audio frames")
    if info.frames > 0 and data.shape[0] < info.frames:
        raise AudioReadError(f"truncated: header says {info.frames} frames, file holds {data.shape[0]}")
    mono = data.mean(axis=1)
    if rate != sample_rate:
        mono = AF.resample(torch.from_numpy(mono), rate, sample_rate).numpy()
    return Decoded(np.ascontiguousarray(mono, dtype=np.float32), rate, data.shape[1])


def fit_length(samples: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad at the end or trim to ``length`` samples."""
    if len(samples) >= length:
        return samples[:length]
    return np.pad(samples, (0, length - len(samples)))
