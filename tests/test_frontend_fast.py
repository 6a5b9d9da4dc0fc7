"""The batched frontend: same numbers as the plain recipe, crops that adapt, masks per sample."""

from __future__ import annotations

import pytest
import torch

from esc50_lightning.errors import UserError
from esc50_lightning.features import FeatureExtractor, LogMel, SpecAugment
from esc50_lightning.features.extractor import resolve_crop

CLIPS = 6  # `waves` (conftest): six real clips from six classes, 5 s at 44.1 kHz


def reference(logmel: torch.Tensor, crop: tuple[int, int]) -> torch.Tensor:
    """The seed's order in float64: standardise the whole spectrogram, then take the centre crop."""
    x = logmel.double()
    x = (x - x.mean(dim=(-2, -1), keepdim=True)) / (x.std(dim=(-2, -1), keepdim=True) + 1e-5)
    f0, t0 = (x.shape[1] - crop[0]) // 2, (x.shape[2] - crop[1]) // 2
    return x[:, None, f0 : f0 + crop[0], t0 : t0 + crop[1]]


def test_eval_output_matches_reference(waves: torch.Tensor) -> None:
    logmel = LogMel()
    features = FeatureExtractor(
        logmel, 220500, (100, 384), augmentations={"spec_augment": SpecAugment()}
    ).eval()
    mels = logmel(waves)
    out = features(mels)
    assert out.shape == (6, 1, 100, 384)
    assert torch.allclose(out.double(), reference(mels, (100, 384)), atol=1e-4)
    # Waveform batches and cached log-mel batches give the same model input.
    assert torch.allclose(features(waves), out, atol=1e-5)


def test_training_crop_is_a_window_of_the_normalised_spectrogram(waves: torch.Tensor) -> None:
    logmel = LogMel()
    mels = logmel(waves)
    full = reference(mels, (128, 431))[:, 0]
    features = FeatureExtractor(logmel, 220500, (100, 384)).train()  # no masks: crop only
    torch.manual_seed(0)
    out = features(mels)[:, 0].double()
    offsets = set()
    for i in range(len(out)):
        windows = full[i].unfold(0, 100, 1).unfold(1, 384, 1)  # a view: (29, 48, 100, 384)
        # the offset whose first row matches the crop's best, then the whole window there
        first_row = (windows[..., 0, :] - out[i, 0]).abs().amax(dim=-1)  # (29, 48)
        f, t = (int(v) for v in torch.nonzero(first_row == first_row.min())[0])
        err = float((windows[f, t] - out[i]).abs().amax())
        assert err < 1e-4, "training crop is not a window of the spectrogram"
        offsets.add((f, t))
    assert len(offsets) > 1, "every sample got the same random crop"


def test_crop_fractions_adapt_to_clip_length() -> None:
    assert resolve_crop((100, 0.89), (128, 431)) == (100, 384)  # ESC-50: 5 s at 44.1 kHz
    assert resolve_crop((100, 0.89), (128, 345)) == (100, 307)  # UrbanSound8K: 4 s
    assert resolve_crop((None, 1.0), (128, 345)) == (128, 345)
    assert resolve_crop(None, (128, 345)) is None
    assert FeatureExtractor(LogMel(), 4 * 44100, (100, 0.89)).output_shape == (100, 307)
    with pytest.raises(UserError, match=r"features.crop=\[100, 384\] does not fit .*128x345"):
        FeatureExtractor(LogMel(), 4 * 44100, (100, 384))
    with pytest.raises(UserError, match="fraction"):
        resolve_crop((100, 1.5), (128, 431))


def test_specaugment_masks_are_bands_drawn_per_sample() -> None:
    torch.manual_seed(0)
    ones = torch.ones(64, 1, 100, 384)
    out = SpecAugment(freq_masks=2, freq_mask_width=16, time_masks=2, time_mask_width=48).transform(ones)
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    rows = out[:, 0].amax(dim=2) == 0  # (B, F) fully masked mel rows
    cols = out[:, 0].amax(dim=1) == 0  # (B, T) fully masked frames
    # Every zero lies in a masked row or a masked column: masks are whole bands.
    assert torch.equal(out[:, 0] == 0, rows[:, :, None] | cols[:, None, :])
    assert int(rows.sum(1).max()) <= 2 * 15 and int(cols.sum(1).max()) <= 2 * 47
    assert float(cols.sum(1).float().mean()) > 20  # two bands of mean width ~23
    assert len({tuple(c.nonzero().flatten().tolist()) for c in cols}) > 32, "masks not drawn per sample"


def test_masks_only_in_training(waves: torch.Tensor) -> None:
    features = FeatureExtractor(LogMel(), 220500, (100, 384), augmentations={"spec_augment": SpecAugment()})
    torch.manual_seed(1)
    masked = features.train()(waves)[:, 0]
    assert bool(((masked == 0).all(dim=1)).any()), "training output has no masked frame"
    clean = features.eval()(waves)[:, 0]
    assert not bool(((clean == 0).all(dim=1)).any())


@pytest.mark.parametrize("eval_crops", [1, 3])
def test_eval_frontend_is_batch_size_agnostic_when_traced(waves: torch.Tensor, eval_crops: int) -> None:
    """Export traces the eval frontend at one batch size; it must serve any other (with several
    cuts per clip too: 5 clips give 15 cuts, pooled back to 5 rows)."""
    features = FeatureExtractor(
        LogMel(), 220500, (100, 384), augmentations={"spec_augment": SpecAugment()}, eval_crops=eval_crops
    ).eval()
    traced = torch.jit.trace(features, waves[:2], check_trace=False)
    torch.testing.assert_close(traced(waves[:5]), features(waves[:5]))
    assert traced(waves[:5]).shape == (5 * eval_crops, 1, 100, 384)
    logits = torch.randn(5 * eval_crops, 50)
    torch.testing.assert_close(features.pool(logits), logits.view(5, eval_crops, 50).mean(dim=1))


def test_evaluation_scores_its_own_centred_cut() -> None:
    """Training cuts ``crop`` at random; evaluation cuts ``eval_crop`` (default: the same size)."""
    logmel = LogMel(n_mels=64, hop_length=1024, f_max=14000.0)
    spec = torch.randn(3, 64, 216)
    same = FeatureExtractor(logmel, 5 * 44100, (56, 200), augmentations=None)
    assert same.eval_shape == same.output_shape == (56, 200)
    whole_clip = FeatureExtractor(logmel, 5 * 44100, (56, 200), eval_crop=(56, None))
    assert whole_clip.train()(spec).shape == (3, 1, 56, 200)
    out = whole_clip.eval()(spec)
    assert out.shape == (3, 1, 56, 216)
    # the centred 56 mels of every frame, standardised with the whole spectrogram's statistics
    mean = spec.mean(dim=(1, 2), keepdim=True)
    std = spec.std(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(out[:, 0], ((spec - mean) / (std + 1e-5))[:, 4:60], atol=1e-5, rtol=1e-5)
    whole_clip.set_eval_crop(None)
    assert whole_clip(spec).shape == (3, 1, 64, 216)
    with pytest.raises(UserError, match=r"features.eval_crop=\[80, None\] does not fit .*64x216"):
        whole_clip.set_eval_crop((80, None))
