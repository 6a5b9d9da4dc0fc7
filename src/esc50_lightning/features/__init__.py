"""Where audio becomes features: the log-mel frontend (``logmel``), the crops (``crop``), the
training-only augmentation chain (``chain``) with its entries (``mixing``, ``time_axis``,
``SpecAugment``), and the extractor that runs them on the training device (``extractor``)."""

from esc50_lightning.features.chain import STAGES, Augmentation, AugmentationChain, Batch
from esc50_lightning.features.extractor import FeatureExtractor
from esc50_lightning.features.logmel import LogMel, SpecAugment
from esc50_lightning.features.mixing import BetweenClass, FreqMixStyle, Mixup, mix_as_sounds
from esc50_lightning.features.time_axis import TimeRoll, TimeStretch

__all__ = [
    "STAGES",
    "Augmentation",
    "AugmentationChain",
    "Batch",
    "BetweenClass",
    "FeatureExtractor",
    "FreqMixStyle",
    "LogMel",
    "Mixup",
    "SpecAugment",
    "TimeRoll",
    "TimeStretch",
    "mix_as_sounds",
]
