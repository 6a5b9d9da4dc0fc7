"""Chain entries that mix clips of a batch: mixup of the network's inputs, between-class mixing of
the clips as sounds (both mix the labels too), and Freq-MixStyle (mixes only spectral statistics)."""

from __future__ import annotations

import torch

from esc50_lightning.features.chain import Augmentation, Batch


def draw_mix(alpha: float, batch: int, device: torch.device) -> tuple[float, torch.Tensor]:
    """One Beta(alpha, alpha) weight for the batch and a random partner for every clip. The weight
    is drawn on the host (a number the loss and the metrics read without waiting for a GPU), the
    partners on the device (a copy from the host would be a sync per step)."""
    weight = float(torch.distributions.Beta(alpha, alpha).sample())
    return weight, torch.randperm(batch, device=device)


def _check_alpha(alpha: float) -> None:
    if not alpha > 0:
        raise ValueError(f"alpha={alpha} must be above 0 (to turn mixing off, remove the entry)")


class Mixup(Augmentation):
    """Mixup (Zhang et al., ICLR 2018) of the network's inputs: ``w x_i + (1 - w) x_partner``, one
    Beta(alpha, alpha) weight per batch, the two labels weighted ``w : 1 - w``."""

    acts_on = "input"

    def __init__(self, alpha: float = 0.4):
        super().__init__()
        _check_alpha(alpha)
        self.alpha = alpha

    def forward(self, batch: Batch) -> Batch:
        x = batch.x
        weight, partner = draw_mix(self.alpha, x.shape[0], x.device)
        return batch.mixed(weight * x + (1 - weight) * x[partner], weight, partner)


class BetweenClass(Augmentation):
    """Between-class mixing (Tokozume et al., ICLR 2018): mixup's weight, but the two clips are
    mixed as sounds (``mix_as_sounds``) before standardisation, so crop and masks see the mixture."""

    acts_on = "logmel"

    def __init__(self, alpha: float = 0.4):
        super().__init__()
        _check_alpha(alpha)
        self.alpha = alpha

    def forward(self, batch: Batch) -> Batch:
        weight, partner = draw_mix(self.alpha, batch.x.shape[0], batch.x.device)
        return batch.mixed(mix_as_sounds(batch.x, weight, partner), weight, partner)


def mix_as_sounds(spec_db: torch.Tensor, weight: float, perm: torch.Tensor) -> torch.Tensor:
    """Between-class mixing of dB spectrograms ``(B, F, T)``: every clip with clip ``perm[i]``.

    Both are brought to the same peak, weighted ``weight : 1 - weight`` in amplitude, summed in
    power and turned back into dB, as if their waveforms had been added. Interpolating dB values
    (plain mixup) instead keeps a blend of two spectral envelopes that no recording has.
    """
    level = spec_db - spec_db.amax(dim=(1, 2), keepdim=True)  # 0 dB peak per clip
    power = torch.pow(10.0, level / 10.0)
    mixed = weight**2 * power + (1.0 - weight) ** 2 * power[perm]
    return 10.0 * torch.log10(mixed.clamp_min(1e-10))


class FreqMixStyle(Augmentation):
    """Freq-MixStyle (Schmid et al., DCASE 2022): mix per-frequency statistics between clips.

    With probability ``p`` per batch, every (standardised) spectrogram is standardised along time
    per mel row and rescaled with a Beta(alpha, alpha) blend of its own row statistics and those of
    another clip: the content stays, the spectral colouring (microphone, distance, room) is
    swapped. Labels are untouched.
    """

    acts_on = "input"

    def __init__(self, p: float = 0.4, alpha: float = 0.4, eps: float = 1e-6):
        super().__init__()
        if not 0 <= p <= 1 or alpha <= 0:
            raise ValueError(f"p={p} must be in [0, 1] and alpha={alpha} above 0")
        self.p, self.alpha, self.eps = p, alpha, eps

    def transform(self, spec: torch.Tensor) -> torch.Tensor:
        """``spec``: ``(B, F, T)``."""
        if spec.shape[0] < 2 or float(torch.rand(())) >= self.p:  # a host draw: no sync
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
