"""Where audio becomes features: the log-mel frontend, its augmentations and the extractor that
runs them on the training device."""

from esc50_lightning.features.augment import FreqMixStyle, SpecAugment, mix_as_sounds
from esc50_lightning.features.extractor import FeatureExtractor
from esc50_lightning.features.logmel import LogMel

__all__ = ["FeatureExtractor", "FreqMixStyle", "LogMel", "SpecAugment", "mix_as_sounds"]
