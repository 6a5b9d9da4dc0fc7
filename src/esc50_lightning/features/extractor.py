"""The batched frontend that runs on the training device: log-mel (unless cached), per-clip
standardisation, a crop (random per sample in training, centred in evaluation) and, in training
only, the augmentation chain drawn afresh for every sample at every step. Input may be raw
waveforms ``(B, T)`` or cached log-mels ``(B, F, T)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from esc50_lightning.errors import UserError
from esc50_lightning.features.chain import Augmentation, AugmentationChain, Batch
from esc50_lightning.features.crop import CropSize, random_crop, resolve_crop
from esc50_lightning.features.logmel import LogMel

__all__ = ["SAME_AS_CROP", "CropSize", "FeatureExtractor", "resolve_crop"]

# ``eval_crop`` value meaning "the training crop's size" (also what configs without the key get).
SAME_AS_CROP = "crop"


class FeatureExtractor(nn.Module):
    """Log-mel → standardise → crop, batched, on any device; in training the augmentation chain runs
    at the stages its entries declare (``features/chain.py``):

        waveform entries → log-mel → logmel entries → standardisation statistics
        → crop (a crop entry, else random) → standardise → input entries

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
        augmentations: AugmentationChain | Mapping[str, Augmentation] | None = None,
        eval_crop: Sequence[CropSize] | str | None = SAME_AS_CROP,
        eval_crops: int = 1,
    ):
        super().__init__()
        self.logmel = logmel
        self.normalize = normalize
        if not isinstance(augmentations, AugmentationChain):
            augmentations = AugmentationChain(augmentations)
        self.chain = augmentations
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Network input for waveforms or cached log-mels; in training, with the chain's
        augmentations (``augment`` also mixes labels)."""
        if self.training:
            return self.augment(Batch.of(x)).x
        x = self._logmel(x)
        stats = self._stats(x) if self.normalize else None
        x = self._standardise(self._centre_cut(x), stats)
        if self.eval_crops > 1:  # (B, F', N * T') -> (B * N, F', T')
            batch, freq, frames = x.shape
            cut = frames // self.eval_crops
            x = x.reshape(batch, freq, self.eval_crops, cut).transpose(1, 2).reshape(-1, freq, cut)
        return x.unsqueeze(1)

    def augment(self, batch: Batch) -> Batch:
        """The training path: ``batch`` (clips and labels) through the frontend and the chain's stages."""
        chain = self.chain
        if batch.x.dim() == 2:  # raw waveforms
            batch = chain.run("waveform", batch)
        elif chain.at("waveform"):
            raise UserError(
                "augmentation.chain has entries acting on waveforms, but batches carry cached log-mels: "
                "set data.cache_features=false"
            )
        batch = chain.run("logmel", batch.replace(self._logmel(batch.x)))
        x = batch.x
        # the whole clip's statistics, after the logmel entries: a mixture is standardised as one clip
        stats = self._stats(x) if self.normalize else None
        size = self.crop or (x.shape[1], x.shape[2])
        crops = chain.at("crop")
        x = crops[0].cut(x, size) if crops else random_crop(x, size)
        batch = chain.run("input", batch.replace(self._standardise(x, stats)))
        return batch.replace(batch.x.unsqueeze(1))

    def _logmel(self, x: torch.Tensor) -> torch.Tensor:
        return (self.logmel(x) if x.dim() == 2 else x).float()

    @staticmethod
    def _standardise(x: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """``x`` standardised with its whole spectrogram's ``(mean, std)`` (None: as it is)."""
        if stats is None:
            return x
        mean, std = stats
        return (x - mean).mul_(1.0 / (std + 1e-5))  # x - mean is a new tensor: ours to scale in place

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

    def _centre_cut(self, x: torch.Tensor) -> torch.Tensor:
        """The evaluation cut(s), centred; the input itself when there is nothing to cut."""
        _, freq, time = x.shape
        # centred slices, batch-size agnostic (traces and exports)
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
