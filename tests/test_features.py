"""The device frontend against torchaudio applied by hand, on real clips; masks and crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio

from esc50_lightning.errors import UserError
from esc50_lightning.features import FeatureExtractor, LogMel, SpecAugment

# `waves` (conftest): these clips, 5 s at 44.1 kHz.
CLIPS = ["1-100032-A-0.wav", "1-115545-A-48.wav", "2-102414-A-17.wav", "5-9032-A-0.wav"]


def test_logmel_matches_torchaudio_by_hand(waves):
    ours = LogMel()(waves)
    mel = torchaudio.transforms.MelSpectrogram(44100, n_fft=2048, hop_length=512, n_mels=128, f_max=8000.0)
    by_hand = torch.stack([torchaudio.transforms.AmplitudeToDB(top_db=80.0)(mel(w)) for w in waves])
    assert ours.shape == (4, 128, 431)
    torch.testing.assert_close(ours, by_hand, rtol=1e-4, atol=1e-3)
    # top_db clamps each clip to 80 dB below its own peak
    span = ours.amax(dim=(1, 2)) - ours.amin(dim=(1, 2))
    assert torch.all(span <= 80.0 + 1e-3)


def test_eval_features_are_standardised_centre_crops(waves):
    extractor = FeatureExtractor(
        LogMel(), 220500, crop=(100, 384), augmentations={"spec_augment": SpecAugment()}
    ).eval()
    out = extractor(waves)
    assert out.shape == (4, 1, 100, 384)
    spec = LogMel()(waves)
    std = (spec - spec.mean(dim=(1, 2), keepdim=True)) / (spec.std(dim=(1, 2), keepdim=True) + 1e-5)
    torch.testing.assert_close(out[:, 0], std[:, 14:114, 23:407])
    torch.testing.assert_close(extractor(waves), out)  # deterministic, no masks in evaluation
    # cached log-mels give the same features as waveforms
    torch.testing.assert_close(extractor(spec), out)


def test_training_masks_and_crops_differ_per_sample_and_step(waves):
    extractor = FeatureExtractor(
        LogMel(), 220500, crop=(100, 384), augmentations={"spec_augment": SpecAugment()}
    ).train()
    spec = LogMel()(waves[:1]).repeat(8, 1, 1)  # eight copies of one clip
    torch.manual_seed(0)
    first, second = extractor(spec), extractor(spec)
    assert first.shape == (8, 1, 100, 384)
    flat = first.flatten(1)
    assert len({tuple(np.round(r[:64].numpy(), 4)) for r in flat}) > 1  # samples differ
    assert not torch.equal(first, second)  # steps differ
    masked = (first == 0).flatten(1).sum(1)
    assert (masked > 0).all() and len(set(masked.tolist())) > 1  # every sample masked, widths vary


def test_crop_larger_than_spectrogram_is_refused():
    with pytest.raises(UserError, match=r"crop=\[130, 384\] does not fit the spectrogram 128x431"):
        FeatureExtractor(LogMel(), 220500, crop=(130, 384))
