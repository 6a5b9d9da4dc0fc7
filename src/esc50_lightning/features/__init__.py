"""Where audio becomes features: log-mel frontend, crop, normalisation and SpecAugment."""

from esc50_lightning.features.frontend import (
    FeatureExtractor,
    FreqMixStyle,
    LogMel,
    SpecAugment,
    mix_as_sounds,
)

__all__ = ["FeatureExtractor", "FreqMixStyle", "LogMel", "SpecAugment", "mix_as_sounds"]
