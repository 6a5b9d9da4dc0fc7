"""Batched spectrogram pipeline that runs on the training device.

``LogMel`` turns waveforms into dB log-mel spectrograms. ``FeatureExtractor`` wraps it with
per-clip standardisation, a crop (random per sample in training, centred in evaluation) and
SpecAugment masks drawn afresh for every sample at every step, in training mode only.
Input may be raw waveforms ``(B, T)`` or cached log-mels ``(B, F, T)``.
"""

from __future__ import annotations

import math

import torch
import torchaudio
from torch import nn

from esc50_lightning.errors import UserError


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
        )
        self.to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=top_db)

    def frames(self, num_samples: int) -> int:
        """Number of frames for a clip of ``num_samples`` (centred STFT)."""
        return num_samples // self.hop_length + 1

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        # AmplitudeToDB clamps to top_db below the peak of each item of a 4-D (B, C, F, T) input;
        # a 3-D input would be read as (C, F, T) and clamped against the whole batch's peak.
        return self.to_db(self.mel(waveform.float()).unsqueeze(1)).squeeze(1)


class SpecAugment(nn.Module):
    """Time and frequency masks, independent for every sample (``iid_masks``)."""

    def __init__(
        self,
        freq_masks: int = 2,
        freq_mask_width: int = 16,
        time_masks: int = 2,
        time_mask_width: int = 48,
    ):
        super().__init__()
        self.freq = nn.ModuleList(
            torchaudio.transforms.FrequencyMasking(freq_mask_width, iid_masks=True) for _ in range(freq_masks)
        )
        self.time = nn.ModuleList(
            torchaudio.transforms.TimeMasking(time_mask_width, iid_masks=True) for _ in range(time_masks)
        )

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        for mask in [*self.freq, *self.time]:
            spec = mask(spec)
        return spec


class FeatureExtractor(nn.Module):
    """Log-mel → standardise → crop → SpecAugment (training only), batched, on any device.

    Output is ``(B, 1, F', T')`` ready for a 2-D CNN.
    """

    def __init__(
        self,
        logmel: LogMel,
        clip_samples: int,
        crop: tuple[int, int] | list[int] | None = (100, 384),
        normalize: bool = True,
        augment: SpecAugment | None = None,
    ):
        super().__init__()
        self.logmel = logmel
        self.normalize = normalize
        self.augment = augment
        self.input_shape = (logmel.n_mels, logmel.frames(clip_samples))
        if crop is not None:
            crop = (int(crop[0]), int(crop[1]))
            if crop[0] > self.input_shape[0] or crop[1] > self.input_shape[1] or min(crop) < 1:
                raise UserError(
                    f"features.crop={list(crop)} does not fit the spectrogram "
                    f"{self.input_shape[0]}x{self.input_shape[1]} (mels x frames); "
                    "choose a crop no larger than that, or crop=null"
                )
        self.crop = crop

    @property
    def output_shape(self) -> tuple[int, int]:
        return self.crop if self.crop is not None else self.input_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # raw waveforms
            x = self.logmel(x)
        x = x.float()
        if self.normalize:
            mean = x.mean(dim=(-2, -1), keepdim=True)
            std = x.std(dim=(-2, -1), keepdim=True)
            x = (x - mean) / (std + 1e-5)
        if self.crop is not None:
            x = self._crop(x)
        x = x.unsqueeze(1)
        if self.training and self.augment is not None:
            x = self.augment(x)
        return x

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        batch, freq, time = x.shape
        crop_f, crop_t = self.crop
        if (crop_f, crop_t) == (freq, time):
            return x
        if self.training:
            off_f = torch.randint(0, freq - crop_f + 1, (batch,), device=x.device)
            off_t = torch.randint(0, time - crop_t + 1, (batch,), device=x.device)
        else:
            off_f = torch.full((batch,), (freq - crop_f) // 2, device=x.device)
            off_t = torch.full((batch,), (time - crop_t) // 2, device=x.device)
        rows = off_f[:, None] + torch.arange(crop_f, device=x.device)[None, :]
        cols = off_t[:, None] + torch.arange(crop_t, device=x.device)[None, :]
        b = torch.arange(batch, device=x.device)[:, None, None]
        return x[b, rows[:, :, None], cols[:, None, :]]


def clip_samples(sample_rate: int, clip_seconds: float) -> int:
    return int(math.floor(sample_rate * clip_seconds + 0.5))
