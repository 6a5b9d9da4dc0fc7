"""Augmentations of spectrogram batches on the training device: SpecAugment masks, Freq-MixStyle and
between-class mixing of two clips as sounds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from esc50_lightning.errors import UserError


class SpecAugment(nn.Module):
    """Time and frequency masks, independent for every sample.

    Draws masks like torchaudio's ``FrequencyMasking``/``TimeMasking`` with ``iid_masks=True``
    (width ~ U[0, max width), start ~ U[0, size - width)) and fills them with 0, but builds
    one small 1-D mask per axis and applies them in a single multiply: about 20x less work
    per batch than masking the whole spectrogram once per mask.
    """

    def __init__(
        self,
        freq_masks: int = 2,
        freq_mask_width: int = 16,
        time_masks: int = 2,
        time_mask_width: int = 48,
    ):
        super().__init__()
        self.freq_masks, self.freq_mask_width = freq_masks, freq_mask_width
        self.time_masks, self.time_mask_width = time_masks, time_mask_width

    @staticmethod
    def _keep(batch: int, size: int, count: int, width: int, device: torch.device) -> torch.Tensor:
        """``(batch, size)`` float mask: 0 inside any of ``count`` random bands, 1 elsewhere."""
        keep = torch.ones(batch, size, device=device)
        if width < 1:
            return keep
        positions = torch.arange(size, device=device)
        for _ in range(count):
            value = torch.rand(batch, 1, device=device) * width
            start = torch.rand(batch, 1, device=device) * (size - value)
            lo = start.long()
            keep.masked_fill_((positions >= lo) & (positions < lo + value.long()), 0.0)
        return keep

    def masks(
        self, batch: int, freq: int, time: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(batch, freq)`` and ``(batch, time)`` float masks: 0 inside a band, 1 elsewhere."""
        keep_f = self._keep(batch, freq, self.freq_masks, self.freq_mask_width, device)
        keep_t = self._keep(batch, time, self.time_masks, self.time_mask_width, device)
        return keep_f, keep_t

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """``spec``: ``(B, ..., F, T)``; every sample (all its channels) gets its own masks."""
        batch, freq, time = spec.shape[0], spec.shape[-2], spec.shape[-1]
        keep_f, keep_t = self.masks(batch, freq, time, spec.device)
        middle = (1,) * (spec.dim() - 3)
        keep_f = keep_f.view(batch, *middle, freq, 1).to(spec.dtype)
        keep_t = keep_t.view(batch, *middle, 1, time).to(spec.dtype)
        return spec * keep_f * keep_t


class FreqMixStyle(nn.Module):
    """Freq-MixStyle (Schmid et al., DCASE 2022): mix per-frequency statistics between clips.

    With probability ``p`` per batch, every spectrogram is standardised along time per mel row
    and rescaled with a Beta(alpha, alpha) blend of its own row statistics and those of another
    clip in the batch: the content stays, the spectral colouring (microphone, distance, room)
    is swapped. Labels are untouched.
    """

    def __init__(self, p: float = 0.4, alpha: float = 0.4, eps: float = 1e-6):
        super().__init__()
        if not 0 <= p <= 1 or alpha <= 0:
            raise UserError(f"freq_mixstyle: p={p} must be in [0, 1] and alpha={alpha} above 0")
        self.p, self.alpha, self.eps = p, alpha, eps

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """``spec``: ``(B, F, T)``."""
        if spec.shape[0] < 2 or float(torch.rand(())) >= self.p:
            return spec
        mean = spec.mean(dim=2, keepdim=True)
        std = (spec.var(dim=2, keepdim=True) + self.eps).sqrt()
        # drawn on the device (a CPU draw would need a blocking copy, a sync per step on a GPU)
        alpha = torch.full((), self.alpha, device=spec.device)
        beta = torch.distributions.Beta(alpha, alpha, validate_args=False)  # checks read on the host
        weight = beta.sample((spec.shape[0], 1, 1)).to(spec.dtype)
        perm = torch.randperm(spec.shape[0], device=spec.device)
        mixed_mean = weight * mean + (1 - weight) * mean[perm]
        mixed_std = weight * std + (1 - weight) * std[perm]
        return (spec - mean) / std * mixed_std + mixed_mean


def mix_as_sounds(spec_db: torch.Tensor, weight: float, perm: torch.Tensor) -> torch.Tensor:
    """Between-class mixing (Tokozume et al., ICLR 2018) of dB spectrograms ``(B, F, T)``.

    Every clip is mixed with clip ``perm[i]`` as if their waveforms had been added: both are
    brought to the same peak, weighted ``weight : 1 - weight`` in amplitude, summed in power and
    turned back into dB. Interpolating dB values (plain mixup) instead keeps a blend of two
    spectral envelopes that no recording has; a sum of sounds is what a microphone hears.
    """
    level = spec_db - spec_db.amax(dim=(1, 2), keepdim=True)  # 0 dB peak per clip
    power = torch.pow(10.0, level / 10.0)
    mixed = weight**2 * power + (1.0 - weight) ** 2 * power[perm]
    return 10.0 * torch.log10(mixed.clamp_min(1e-10))


def _rate_range(value: Any) -> tuple[float, float]:
    """``augmentation.time_stretch`` as ``(low, high)`` playback rates, 0 < low <= high."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        low = high = 0.0
    if not 0 < low <= high:
        shown = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value
        raise UserError(
            f"augmentation.time_stretch={shown} must be [low, high] playback rates, e.g. [0.8, 1.08] "
            "(0 < low <= high)"
        )
    return low, high
