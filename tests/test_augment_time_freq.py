"""Training-only augmentations beyond SpecAugment: time roll, time stretch, Freq-MixStyle."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from esc50_lightning.features import FeatureExtractor, FreqMixStyle, LogMel, TimeRoll, TimeStretch
from esc50_lightning.features.crop import cut_windows

CLIP = 5 * 22050  # 22.05 kHz keeps the spectrograms small: 64 mels x 216 frames with hop 512
# `waves` (conftest): eight real clips from eight classes, 5 s at 22.05 kHz.
CLIPS = 8
CLIP_RATE = 22050


def small_logmel() -> LogMel:
    return LogMel(sample_rate=22050, n_fft=1024, n_mels=64)


@pytest.fixture(scope="module")
def mels(waves: torch.Tensor) -> torch.Tensor:
    return small_logmel()(waves)


def extractor(crop=None, **entries) -> FeatureExtractor:
    """A frontend without standardisation whose chain holds ``entries`` (name: module)."""
    return FeatureExtractor(small_logmel(), CLIP, crop=crop, normalize=False, augmentations=entries)


def test_time_roll_is_a_circular_shift_per_clip(mels: torch.Tensor) -> None:
    torch.manual_seed(0)
    out = extractor(time_roll=TimeRoll(0.5)).train()(mels)[:, 0]
    shifts = set()
    for i in range(len(mels)):
        matches = [k for k in range(-108, 109) if torch.equal(out[i], torch.roll(mels[i], k, dims=1))]
        assert matches, f"clip {i}: output is not a circular time shift of its spectrogram"
        shifts.add(matches[0])
    assert len(shifts) > 1, "every clip got the same shift"
    assert torch.equal(extractor(time_roll=TimeRoll(0.5)).eval()(mels)[:, 0], mels), (
        "evaluation must not roll"
    )


def test_time_stretch_resamples_a_window_at_the_drawn_rate() -> None:
    ramp = torch.arange(216.0).expand(4, 64, 216).contiguous()  # value = frame index
    torch.manual_seed(0)
    out = extractor(crop=(64, 100), time_stretch=TimeStretch((0.5, 1.5))).train()(ramp)[:, 0]
    assert out.shape == (4, 64, 100)
    # A window of rate * 100 frames squeezed into 100: the ramp's slope is the rate.
    slopes = (out[:, 0, 60] - out[:, 0, 40]) / 20
    assert ((slopes > 0.49) & (slopes < 1.51)).all(), slopes
    assert len({round(float(s), 2) for s in slopes}) > 1, "every clip got the same rate"
    same = extractor(crop=(64, 100), time_stretch=TimeStretch((1.0, 1.0))).train()(ramp)[:, 0]
    assert ((same[:, :, 1:] - same[:, :, :-1]) == 1).all(), "rate 1 must be a plain crop"
    # Without a crop the whole clip is the output size: rates below 1 still stretch a window.
    whole = extractor(time_stretch=TimeStretch((0.5, 0.5))).train()(ramp)[:, 0]
    assert whole.shape == (4, 64, 216)
    assert torch.allclose(whole[:, 0, 101] - whole[:, 0, 100], torch.full((4,), 0.5), atol=1e-4)


@pytest.mark.parametrize("rates", [None, (0.5, 1.5), (0.8, 1.08), (1.0, 1.0)])
def test_batched_cut_matches_a_slice_and_interpolate_per_clip(mels: torch.Tensor, rates) -> None:
    """The one-gather cut (what the training crop runs, on any device) against the obvious
    per-clip reference: a slice, and F.interpolate for a stretched window."""
    generator = torch.Generator().manual_seed(1)
    batch, freq, time = mels.shape
    crop_f, crop_t = 56, 150
    off_f = torch.randint(0, freq - crop_f + 1, (batch,), generator=generator)
    widths = None
    if rates is None:
        off_t = torch.randint(0, time - crop_t + 1, (batch,), generator=generator)
    else:
        rate = torch.empty(batch).uniform_(*rates, generator=generator)
        widths = rate.mul(crop_t).round().clamp(1, time).long()
        off_t = (torch.rand(batch, generator=generator) * (time - widths + 1)).long()
    out = cut_windows(mels, off_f, off_t, (crop_f, crop_t), widths)
    for i in range(batch):
        f, t = int(off_f[i]), int(off_t[i])
        width = crop_t if widths is None else int(widths[i])
        window = mels[i, f : f + crop_f, t : t + width]
        if width != crop_t:
            window = F.interpolate(window[None], size=crop_t, mode="linear", align_corners=False)[0]
        # float32 source positions near frame 200 carry ~1e-5 of rounding: allow that much.
        assert torch.allclose(out[i], window, rtol=0, atol=1e-4), (
            f"clip {i} (offsets {f}, {t}, width {width})"
        )


def test_freq_mixstyle_keeps_content_and_swaps_row_statistics(mels: torch.Tensor) -> None:
    pair = mels[:2]
    torch.manual_seed(0)
    out = FreqMixStyle(p=1.0, alpha=0.4).transform(pair)

    def standardised(x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(dim=2, keepdim=True)) / (x.var(dim=2, keepdim=True) + 1e-6).sqrt()

    assert torch.allclose(standardised(out), standardised(pair), atol=1e-3), "content along time changed"
    low = pair.mean(dim=2).amin(dim=0) - 1e-3
    high = pair.mean(dim=2).amax(dim=0) + 1e-3
    row_means = out.mean(dim=2)
    assert ((row_means >= low) & (row_means <= high)).all(), "row means are not a blend of the batch's"
    assert torch.equal(FreqMixStyle(p=0.0).transform(pair), pair)
    # Through the extractor: training only.
    features = extractor(freq_mixstyle=FreqMixStyle(p=1.0))
    assert torch.equal(features.eval()(mels)[:, 0], mels)
    assert not torch.allclose(features.train()(mels)[:, 0], mels)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: TimeRoll(1.5), "max_shift=1.5 must be a fraction of the clip in [0, 1]"),
        (lambda: TimeStretch((1.2, 0.8)), "rates=[1.2, 0.8] must be [low, high] playback rates"),
        (lambda: TimeStretch(0.9), "rates=0.9 must be [low, high] playback rates"),
        (lambda: FreqMixStyle(p=2), "p=2 must be in [0, 1]"),
    ],
)
def test_bad_augmentation_settings_are_refused(build, message: str) -> None:
    """ValueError: the factory turns it into one line naming the chain's key (test_augment_chain)."""
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build()


def test_gain_is_a_no_op_for_standardised_log_mels(waves: torch.Tensor) -> None:
    """Why there is no gain augmentation: a gain adds a constant in dB, which per-clip
    standardisation removes (and top_db clamps relative to each clip's own peak)."""
    features = FeatureExtractor(small_logmel(), CLIP, crop=None).eval()
    reference = features(waves[:4])
    for gain in (0.05, 0.5, 2.0):
        assert torch.allclose(features(waves[:4] * gain), reference, atol=1e-3), (
            f"gain {gain} changed the features"
        )
