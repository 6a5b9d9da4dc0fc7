"""The frontend's crops: the size ``features.crop`` asks for, and the batched cut of one window per
spectrogram (random in training; a resized window for a time stretch)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from esc50_lightning.errors import UserError

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


def random_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A window of ``size`` at a random place in each spectrogram of ``x`` ``(B, F, T)`` (``x`` itself
    when it is that size). The offsets are drawn on ``x``'s device: drawn on the CPU, they would
    need a copy per step, and a blocking copy makes the CPU wait for the GPU's queue."""
    batch, freq, time = x.shape
    if size == (freq, time):
        return x
    off_f = torch.randint(0, freq - size[0] + 1, (batch,), device=x.device)
    off_t = torch.randint(0, time - size[1] + 1, (batch,), device=x.device)
    return cut_windows(x, off_f, off_t, size)
