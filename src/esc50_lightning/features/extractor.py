"""The batched frontend that runs on the training device: log-mel (unless cached), per-clip
standardisation, a crop (random per sample in training, centred in evaluation) and, in training
only, the augmentations drawn afresh for every sample at every step. Input may be raw waveforms
``(B, T)`` or cached log-mels ``(B, F, T)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from esc50_lightning.errors import UserError
from esc50_lightning.features.augment import FreqMixStyle, SpecAugment, _rate_range, mix_as_sounds
from esc50_lightning.features.logmel import LogMel

CropSize = int | float | None


def resolve_crop(
    crop: Sequence[CropSize] | None, input_shape: tuple[int, int], key: str = "features.crop"
) -> tuple[int, int] | None:
    """Turn ``features.crop`` into ``(mels, frames)`` for a spectrogram of ``input_shape``.

    Each entry is a size in bins (an int), a fraction of that axis (a float in (0, 1], so one
    config fits clips of any length: 0.89 of 431 frames is 384), or null for the whole axis.
    """
    if crop is None:
        return None
    if len(crop) != 2:
        raise UserError(f"{key}={list(crop)} must be [mels, frames]")
    sizes = []
    for axis, (value, full) in enumerate(zip(crop, input_shape, strict=True)):
        name = ("mels", "frames")[axis]
        if value is None:
            sizes.append(full)
        elif isinstance(value, float) and 0 < value <= 1:  # a fraction of the axis
            sizes.append(max(1, round(value * full)))
        elif float(value).is_integer():
            sizes.append(int(value))
        else:
            raise UserError(f"{key} {name}={value}: give a number of bins or a fraction in (0, 1]")
    if sizes[0] > input_shape[0] or sizes[1] > input_shape[1] or min(sizes) < 1:
        raise UserError(
            f"{key}={list(crop)} does not fit the spectrogram "
            f"{input_shape[0]}x{input_shape[1]} (mels x frames) of "
            "data.dataset.clip_seconds at data.dataset.sample_rate: choose a crop no larger than that, "
            f"a fraction of each axis (e.g. {key}=[100,0.89]), or {key}=null"
        )
    return sizes[0], sizes[1]


def cut_windows(
    x: torch.Tensor,
    off_f: torch.Tensor,
    off_t: torch.Tensor,
    size: tuple[int, int],
    widths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cut ``size`` = ``(mels, frames)`` from each spectrogram of ``x`` ``(B, F, T)`` at its offsets.

    With ``widths``, sample ``i``'s window is ``widths[i]`` frames long and is resampled to
    ``frames`` as ``F.interpolate(mode="linear", align_corners=False)`` would: a time stretch.
    The windows become flat indices into each spectrogram and one gather cuts them all (two and
    a blend for a stretch): a few kernels whatever the batch size. A slice and an interpolate
    per sample cost a GPU one launch each (256 per step at batch 256); on a CPU the two ways
    take about the same time.
    """
    batch, freq, time = x.shape
    crop_f, crop_t = size
    device = x.device  # the draws are on it too (a copy per step would make a GPU wait)
    rows = (off_f[:, None] + torch.arange(crop_f, device=device)) * time  # (B, crop_f)
    flat = x.reshape(batch, freq * time)
    frames = torch.arange(crop_t, device=device)
    if widths is None:
        index = rows[:, :, None] + (off_t[:, None] + frames)[:, None, :]
        return flat.gather(1, index.reshape(batch, -1)).view(batch, crop_f, crop_t)
    # F.interpolate(linear, align_corners=False): source = (j + 0.5) * width / frames - 0.5,
    # clamped at 0; blend of floor(source) and the next frame (the last one repeats).
    scale = widths.to(torch.float32)[:, None] / crop_t
    source = ((frames + 0.5) * scale - 0.5).clamp_min(0.0)  # (B, crop_t)
    first = source.long()
    second = torch.minimum(first + 1, widths[:, None] - 1)
    weight = (source - first).to(x.dtype)[:, None, :]
    left = flat.gather(1, (rows[:, :, None] + (off_t[:, None] + first)[:, None, :]).reshape(batch, -1))
    right = flat.gather(1, (rows[:, :, None] + (off_t[:, None] + second)[:, None, :]).reshape(batch, -1))
    left, right = left.view(batch, crop_f, crop_t), right.view(batch, crop_f, crop_t)
    return torch.lerp(left, right, weight)


# ``eval_crop`` value meaning "the training crop's size" (also what configs without the key get).
SAME_AS_CROP = "crop"


class FeatureExtractor(nn.Module):
    """Log-mel → standardise → crop → SpecAugment (training only), batched, on any device.

    Optional training-only augmentations: ``time_roll`` (circular time shift, up to that fraction
    of the clip), ``time_stretch`` (``[low, high]`` playback rates, a random resized crop in
    time) and ``mixstyle`` (``FreqMixStyle``, after standardisation, before the masks).

    Output is ``(B, 1, F', T')`` ready for a 2-D CNN. Standardisation uses the statistics of the
    whole spectrogram but is applied to the crop only (the same numbers, less work). Training
    cuts ``crop`` at random; evaluation cuts ``eval_crop`` (by default the same size) from the
    centre. The models end in global pooling, so evaluation may see more than one training crop:
    ``eval_crop=(56, None)`` scores the trained mel window over every frame of the clip.
    ``eval_crops=N`` (N > 1) instead scores N cuts of ``eval_crop``'s size, evenly spaced in
    time from the clip's start to its end: evaluation returns ``(B * N, 1, F', T')``, clip by
    clip, and ``pool`` averages the network's logits back to one row per clip.
    """

    def __init__(
        self,
        logmel: LogMel,
        clip_samples: int,
        crop: Sequence[CropSize] | None = (100, 384),
        normalize: bool = True,
        augment: SpecAugment | None = None,
        eval_crop: Sequence[CropSize] | str | None = SAME_AS_CROP,
        time_roll: float = 0.0,
        time_stretch: Sequence[float] | None = None,
        mixstyle: FreqMixStyle | None = None,
        eval_crops: int = 1,
    ):
        super().__init__()
        self.logmel = logmel
        self.normalize = normalize
        self.augment = augment
        self.mixstyle = mixstyle
        if not isinstance(time_roll, int | float) or not 0 <= time_roll <= 1:
            raise UserError(f"augmentation.time_roll={time_roll} must be a fraction of the clip in [0, 1]")
        self.time_roll = float(time_roll)
        self.time_stretch = None if time_stretch is None else _rate_range(time_stretch)
        self.input_shape = (logmel.n_mels, logmel.frames(clip_samples))
        self.crop = resolve_crop(crop, self.input_shape)
        self.set_eval_crop(crop if eval_crop == SAME_AS_CROP else eval_crop, eval_crops)

    def set_eval_crop(self, eval_crop: Sequence[CropSize] | None, crops: int | None = None) -> None:
        """The centred ``[mels, frames]`` cut scored in evaluation (``resolve_crop``'s rules) and,
        unless ``crops`` is None (keep the current count), how many such cuts per clip, evenly
        spaced in time, their logits averaged; the two are checked together."""
        eval_crop = resolve_crop(eval_crop, self.input_shape, key="features.eval_crop")
        count = self.eval_crops if crops is None else crops
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise UserError(f"features.eval_crops={count} must be a whole number of cuts, 1 or more")
        mels, frames = self.input_shape if eval_crop is None else eval_crop
        if count > 1 and frames == self.input_shape[1]:
            raise UserError(
                f"features.eval_crops={count} needs features.eval_crop shorter than the clip in time "
                f"(it is all {frames} frames, so every cut would be the same): set e.g. "
                f"features.eval_crop=[{mels},{self.output_shape[1]}], or features.eval_crops=1"
            )
        self.eval_crop, self.eval_crops = eval_crop, count

    def pool(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits of the ``eval_crops`` cuts of each clip averaged to one row per clip (in
        evaluation; training and single cuts pass through)."""
        if self.training or self.eval_crops == 1:
            return logits
        return logits.reshape(-1, self.eval_crops, logits.shape[-1]).mean(dim=1)

    @property
    def output_shape(self) -> tuple[int, int]:
        """Training input size (``(mels, frames)``)."""
        return self.crop if self.crop is not None else self.input_shape

    @property
    def eval_shape(self) -> tuple[int, int]:
        """Evaluation input size (``(mels, frames)``)."""
        return self.eval_crop if self.eval_crop is not None else self.input_shape

    def forward(self, x: torch.Tensor, mix: tuple[float, torch.Tensor] | None = None) -> torch.Tensor:
        """``mix=(weight, perm)``: mix every clip with clip ``perm[i]`` as sounds first
        (``mix_as_sounds``), so standardisation, crop and masks see the mixture."""
        if x.dim() == 2:  # raw waveforms
            x = self.logmel(x)
        x = x.float()
        if mix is not None:
            x = mix_as_sounds(x, *mix)
        if self.normalize:
            mean, std = self._stats(x)
        if self.training and self.time_roll > 0:
            x = self._roll(x)
        x = self._crop(x)
        # Normalisation and masks are per-sample scalings of rows and columns: fold them into
        # one subtraction and two broadcast multiplies over the (smaller) crop.
        row_scale: torch.Tensor | None = None
        col_scale: torch.Tensor | None = None
        if self.normalize:
            x = x - mean
            row_scale = 1.0 / (std + 1e-5)  # (B, 1, 1)
        if self.training and self.mixstyle is not None:  # mixes statistics of standardised input
            if row_scale is not None:
                x, row_scale = x.mul_(row_scale), None
            x = self.mixstyle(x)
        if self.training and self.augment is not None:
            keep_f, keep_t = self.augment.masks(x.shape[0], x.shape[1], x.shape[2], x.device)
            row_scale = keep_f[:, :, None] if row_scale is None else row_scale * keep_f[:, :, None]
            col_scale = keep_t[:, None, :]
        if row_scale is not None:
            x = x.mul_(row_scale) if self.normalize else x * row_scale  # x - mean is ours to modify
        if col_scale is not None:
            x = x.mul_(col_scale)
        if not self.training and self.eval_crops > 1:  # (B, F', N * T') -> (B * N, F', T')
            batch, freq, frames = x.shape
            cut = frames // self.eval_crops
            x = x.reshape(batch, freq, self.eval_crops, cut).transpose(1, 2).reshape(-1, freq, cut)
        return x.unsqueeze(1)

    @staticmethod
    def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-spectrogram mean and unbiased std, ``(B, 1, 1)`` each.

        Centred two-pass over a flat view: as exact as ``Tensor.std`` and, on CPU, ~20x faster
        than its Welford reduction over two dimensions. (A one-pass sum of squares loses several
        digits on quiet clips; float32 ``vector_norm`` loses about four.)
        """
        flat = x.reshape(x.shape[0], -1)
        mean = flat.mean(dim=1, keepdim=True)
        centred = flat - mean
        std = ((centred * centred).sum(dim=1, keepdim=True) / max(flat.shape[1] - 1, 1)).sqrt()
        return mean[:, :, None], std[:, :, None]

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        """The evaluation cut (centred), or the training cut (random, stretched if asked); the
        input itself when there is nothing to cut."""
        batch, freq, time = x.shape
        if not self.training:  # centred slices, batch-size agnostic (traces and exports)
            crop_f, crop_t = self.eval_crop or (freq, time)
            if (crop_f, crop_t) == (freq, time):
                return x
            f = (freq - crop_f) // 2
            if self.eval_crops == 1:
                t = (time - crop_t) // 2
                return x[:, f : f + crop_f, t : t + crop_t]
            # Several cuts side by side along time, so the per-clip scalings that follow still
            # broadcast; forward splits them into clips at the end.
            last = self.eval_crops - 1
            # k/last of the way, rounded half up; integer arithmetic, as traces see tensor shapes
            starts = [(2 * k * (time - crop_t) + last) // (2 * last) for k in range(self.eval_crops)]
            return torch.cat([x[:, f : f + crop_f, t : t + crop_t] for t in starts], dim=2)
        crop_f, crop_t = self.crop or (freq, time)
        if (crop_f, crop_t) == (freq, time) and self.time_stretch is None:
            return x
        # Offsets and widths are drawn on the device, as the masks are: drawn on the CPU, they
        # would need a copy per step, and a blocking copy makes the CPU wait for the GPU's queue.
        device = x.device
        off_f = torch.randint(0, freq - crop_f + 1, (batch,), device=device)
        if self.time_stretch is None:
            widths = None
            off_t = torch.randint(0, time - crop_t + 1, (batch,), device=device)
        else:  # a window of rate * crop_t frames (at most the whole clip), resampled to crop_t
            rates = torch.empty(batch, device=device).uniform_(*self.time_stretch)
            widths = rates.mul_(crop_t).round_().clamp_(1, time).long()
            off_t = (torch.rand(batch, device=device) * (time - widths + 1)).long()
        return cut_windows(x, off_f, off_t, (crop_f, crop_t), widths)

    def _roll(self, x: torch.Tensor) -> torch.Tensor:
        """Circular shift of every spectrogram along time by up to ``time_roll`` of its frames."""
        batch, freq, time = x.shape
        most = round(self.time_roll * time)
        if most < 1:
            return x
        shift = torch.randint(-most, most + 1, (batch, 1), device=x.device)
        index = (torch.arange(time, device=x.device) - shift) % time
        return x.gather(2, index[:, None, :].expand(batch, freq, time))
