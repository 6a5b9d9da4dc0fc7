"""Decoding audio files with soundfile into fixed-length mono clips."""

from __future__ import annotations

import math
import struct
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
    """Why a file cannot be used as audio, phrased for the user (without the path)."""


def wav_truncation(path: str | Path) -> str | None:
    """Describe how a RIFF/WAVE file is cut short, or None when it is whole (or not a WAV).

    libsndfile quietly shrinks the frame count of a WAV whose data chunk runs past the end of the
    file, so a truncated copy would otherwise decode as a short clip and be padded with silence.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = 0
        pos = 12
        while pos + 8 <= size:
            handle.seek(pos)
            chunk_id, chunk_size = struct.unpack("<4sI", handle.read(8))
            if chunk_id == b"fmt ":
                fmt = handle.read(min(chunk_size, 16))
                if len(fmt) >= 14:
                    block_align = struct.unpack("<H", fmt[12:14])[0]
            elif chunk_id == b"data":
                if chunk_size in (0, 0xFFFFFFFF):  # streaming writers leave the size unset
                    return None
                held = size - (pos + 8)
                if held >= chunk_size:
                    return None
                if block_align:
                    return (
                        f"truncated WAV: header says {chunk_size // block_align} frames, "
                        f"file holds {held // block_align}"
                    )
                return f"truncated WAV: data chunk says {chunk_size} bytes, file holds {held}"
            pos += 8 + chunk_size + (chunk_size & 1)  # chunks are word-aligned
    return None


def _reason(err: Exception) -> str:
    """libsndfile's reason without the "Error opening '<path>':" prefix the caller already shows."""
    reason = getattr(err, "error_string", None) or str(err).strip() or err.__class__.__name__
    reason = reason.strip().splitlines()[-1].rstrip(".")
    return reason[:1].lower() + reason[1:]


def non_finite(samples: np.ndarray) -> str | None:
    """Describe the NaN and infinite samples a decoded signal holds, or None when all are finite.

    Float WAV/FLAC files can store them; a single one turns every score computed from the clip
    into NaN, so such a file is refused instead of being predicted or trained on.
    """
    finite = np.isfinite(samples)
    if finite.all():
        return None
    nan = int(np.isnan(samples).sum())
    inf = int(finite.size - finite.sum()) - nan
    counts = ", ".join(f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "inf")) if n)
    return f"holds non-finite samples (NaN or inf): {counts}"


def read_mono(path: str | Path, sample_rate: int) -> Decoded:
    """Read any soundfile-readable file, average channels to mono and resample to ``sample_rate``.

    Raises ``AudioReadError`` (the reason, without the path) for a file that cannot be decoded,
    holds no frames, is cut short or holds NaN/infinite samples.
    """
    try:
        info = sf.info(str(path))
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:
        raise AudioReadError(f"not a readable audio file ({_reason(err)})") from err
    if data.shape[0] == 0:
        raise AudioReadError("holds no audio frames")
    if info.frames > 0 and data.shape[0] < info.frames:
        raise AudioReadError(f"truncated: header says {info.frames} frames, file holds {data.shape[0]}")
    cut = wav_truncation(path)
    if cut:
        raise AudioReadError(cut)
    bad = non_finite(data)
    if bad:
        raise AudioReadError(bad)
    mono = data.mean(axis=1)
    if rate != sample_rate:
        mono = AF.resample(torch.from_numpy(mono), rate, sample_rate).numpy()
    return Decoded(np.ascontiguousarray(mono, dtype=np.float32), rate, data.shape[1])


def fit_length(samples: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad at the end or trim to ``length`` samples."""
    if len(samples) >= length:
        return samples[:length]
    return np.pad(samples, (0, length - len(samples)))


def clip_samples(sample_rate: int, clip_seconds: float) -> int:
    """Samples in one clip of ``clip_seconds`` at ``sample_rate``, rounded to the nearest sample."""
    return math.floor(sample_rate * clip_seconds + 0.5)
