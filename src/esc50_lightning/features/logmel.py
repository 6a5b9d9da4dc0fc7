"""Where audio becomes features: waveforms ``(B, T)`` to dB log-mel spectrograms ``(B, n_mels, frames)``."""

from __future__ import annotations

import torch
import torchaudio
from torch import nn


class LogMel(nn.Module):
    """Waveform ``(B, T)`` → log-mel ``(B, n_mels, frames)`` in dB."""

    def __init__(
        self,
        sample_rate: int = 44100,
        n_fft: int = 2048,
        hop_length: int = 512,
        n_mels: int = 128,
        f_min: float = 0.0,
        f_max: float | None = 8000.0,
        top_db: float | None = 80.0,
        mel_norm: str | None = None,
        mel_scale: str = "htk",
    ):
        super().__init__()
        self.sample_rate = sample_rate
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=n_fft,
            hop_length=hop_length,
            n_mels=n_mels,
            f_min=f_min,
            f_max=f_max,
            power=2.0,
            # norm="slaney", mel_scale="slaney": librosa's default filterbank (PANNs' frontend).
            norm=mel_norm,
            mel_scale=mel_scale,
        )
        self.mel_norm = mel_norm
        self.mel_scale = mel_scale
        self.to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=top_db)

    def cache_params(self) -> list[float | int | None]:
        """The settings a cached log-mel depends on: part of its cache key."""
        m = self.mel
        params = [m.sample_rate, m.n_fft, m.hop_length, m.n_mels, m.f_min, m.f_max, self.to_db.top_db]
        # Appended only when not the defaults, so the keys of existing caches do not change.
        if (self.mel_norm, self.mel_scale) != (None, "htk"):
            params += [self.mel_norm, self.mel_scale]
        return params

    def frames(self, num_samples: int) -> int:
        """Number of frames for a clip of ``num_samples`` (centred STFT)."""
        return num_samples // self.hop_length + 1

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        # AmplitudeToDB clamps to top_db below the peak of each item of a 4-D (B, C, F, T) input;
        # a 3-D input would be read as (C, F, T) and clamped against the whole batch's peak.
        return self.to_db(self.mel(waveform.float()).unsqueeze(1)).squeeze(1)


# PANNs' frontend (features=logmel_panns): the settings their AudioSet checkpoints were trained on.
PANNS = {
    "sample_rate": 32000,
    "n_fft": 1024,
    "hop_length": 320,
    "n_mels": 64,
    "f_min": 50.0,
    "f_max": 14000.0,
}


def panns_filterbank() -> torch.Tensor:
    """PANNs' mel filterbank, ``(n_fft // 2 + 1, 64)``: librosa's (slaney scale and norm)."""
    return torchaudio.functional.melscale_fbanks(
        PANNS["n_fft"] // 2 + 1,
        PANNS["f_min"],
        PANNS["f_max"],
        PANNS["n_mels"],
        PANNS["sample_rate"],
        norm="slaney",
        mel_scale="slaney",
    )
