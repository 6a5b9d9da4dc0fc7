"""Chain entries along the time axis: a circular shift of every clip, and a time stretch (a random
resized crop in time, which cuts the training window in place of the plain random crop)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from esc50_lightning.features.chain import Augmentation
from esc50_lightning.features.crop import cut_windows


class TimeRoll(Augmentation):
    """Circular shift of every whole-clip spectrogram along time by up to ``max_shift`` of its
    frames (a fraction of the clip), drawn per clip."""

    acts_on = "logmel"

    def __init__(self, max_shift: float = 0.25):
        super().__init__()
        if isinstance(max_shift, bool) or not isinstance(max_shift, int | float) or not 0 <= max_shift <= 1:
            raise ValueError(f"max_shift={max_shift} must be a fraction of the clip in [0, 1]")
        self.max_shift = float(max_shift)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        batch, freq, time = x.shape
        most = round(self.max_shift * time)
        if most < 1:
            return x
        shift = torch.randint(-most, most + 1, (batch, 1), device=x.device)
        index = (torch.arange(time, device=x.device) - shift) % time
        return x.gather(2, index[:, None, :].expand(batch, freq, time))


class TimeStretch(Augmentation):
    """Random resized crop in time: each clip's window is ``rate`` times the crop's frames (at most
    the whole clip), ``rate`` drawn per clip from ``rates`` = ``[low, high]`` playback rates, and
    resampled to the crop's frames. It is the training crop, so the stage is ``crop``."""

    acts_on = "crop"

    def __init__(self, rates: Sequence[float] = (0.8, 1.25)):
        super().__init__()
        try:
            low, high = (float(v) for v in rates)
        except (TypeError, ValueError):
            low = high = 0.0
        if not 0 < low <= high:
            shown = list(rates) if isinstance(rates, Sequence) and not isinstance(rates, str) else rates
            raise ValueError(
                f"rates={shown} must be [low, high] playback rates, e.g. [0.8, 1.08] (0 < low <= high)"
            )
        self.rates = (low, high)

    def cut(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``size`` = ``(mels, frames)`` from each spectrogram of ``x`` ``(B, F, T)``; drawn on its device."""
        batch, freq, time = x.shape
        device = x.device
        off_f = torch.randint(0, freq - size[0] + 1, (batch,), device=device)
        rates = torch.empty(batch, device=device).uniform_(*self.rates)
        widths = rates.mul_(size[1]).round_().clamp_(1, time).long()
        off_t = (torch.rand(batch, device=device) * (time - widths + 1)).long()
        return cut_windows(x, off_f, off_t, size, widths)
