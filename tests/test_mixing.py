"""Mixing in the augmentation chain: mixup of the network's inputs and between-class mixing of
the clips as sounds, their labels weighted by the draw, and the classifier's loss over them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import run_dirs

from esc50_lightning.features import Batch, BetweenClass, FeatureExtractor, LogMel, Mixup, mix_as_sounds
from esc50_lightning.features.chain import dominant_labels
from esc50_lightning.features.mixing import draw_mix
from esc50_lightning.models import CNN4
from esc50_lightning.training.classifier import AudioClassifier

# `waves` (conftest): a dog bark, a chainsaw, a rooster and rain, clips of very different
# loudness and spectra.
CLIPS = ["1-100032-A-0.wav", "1-19898-A-41.wav", "1-26806-A-1.wav", "1-17367-A-10.wav"]
LABELS = torch.tensor([0, 41, 1, 10])


def test_between_class_mix_is_the_log_mel_of_the_peak_equalised_clips_added(waves):
    logmel = LogMel(n_fft=2048, hop_length=1024, n_mels=64, f_max=14000.0)
    spec = logmel(waves)
    perm = torch.tensor([1, 2, 3, 0])
    weight = 0.7
    # By hand: scale every waveform to a 0 dB log-mel peak, add them at amplitudes 0.7 : 0.3.
    gain = 10.0 ** (-spec.amax(dim=(1, 2)) / 20.0)
    heard = logmel(weight * gain[:, None] * waves + (1 - weight) * (gain[:, None] * waves)[perm])

    mixed = mix_as_sounds(spec, weight, perm)
    interpolated = weight * spec + (1 - weight) * spec[perm]  # plain mixup of dB values
    for i in range(len(CLIPS)):
        ref = heard[i] - heard[i].amax()
        audible = ref > -60.0  # below that, the clips' own noise floors decide
        ours = (mixed[i] - mixed[i].amax() - ref)[audible].abs()
        plain = (interpolated[i] - interpolated[i].amax() - ref)[audible].abs()
        # Mel power adds like waveforms up to the two clips' cross terms: a fraction of a dB.
        assert ours.median() < 0.1 and ours.mean() < 0.5, (CLIPS[i], ours.median(), ours.mean())
        assert plain.mean() > 3.0, (CLIPS[i], plain.mean())


def _frontend(**entries) -> FeatureExtractor:
    return FeatureExtractor(LogMel(n_mels=64, hop_length=1024), 220500, crop=(56, 200), augmentations=entries)


def _classifier(**entries) -> AudioClassifier:
    return AudioClassifier(
        net=CNN4(num_classes=50),
        features=_frontend(**entries),
        optimizer=torch.optim.AdamW,
        class_names=[f"c{i}" for i in range(50)],
    )


def _partner(targets) -> tuple[float, torch.Tensor]:
    """The weight and the partner of every clip, read back from a mix's two label terms."""
    (weight, own), (rest, other) = targets
    assert torch.equal(own, LABELS) and rest == 1 - weight
    return weight, torch.tensor([int((label == LABELS).nonzero()) for label in other])


def test_between_class_training_weighs_both_labels_by_the_mix_it_drew(waves):
    module = _classifier(between_class=BetweenClass(alpha=0.4)).train()
    batch = {"x": waves, "y": LABELS, "row": torch.arange(4)}
    torch.manual_seed(3)
    moved = module.on_after_batch_transfer(batch, 0)
    weight, perm = _partner(moved["targets"])
    assert moved["x"].shape == (4, 1, 56, 200)
    # The network sees the features of the mixed sounds (same crop and masks: same seed).
    torch.manual_seed(3)
    assert draw_mix(0.4, 4, torch.device("cpu"))[0] == weight
    spec = module.features.logmel(batch["x"])
    torch.testing.assert_close(moved["x"], _frontend().train()(mix_as_sounds(spec, weight, perm)))

    torch.manual_seed(0)
    loss = module.training_step(moved, 0)
    torch.manual_seed(0)  # the same dropout masks
    logits = module(moved["x"])  # training_step must not mix a second time
    expected = weight * F.cross_entropy(logits, LABELS) + (1 - weight) * F.cross_entropy(logits, LABELS[perm])
    torch.testing.assert_close(loss, expected)
    dominant = LABELS if weight >= 0.5 else LABELS[perm]
    assert torch.equal(module._train_steps[-1][3], dominant)  # metrics count the dominant clip

    # Evaluation never mixes.
    module.eval()
    assert "targets" not in module.on_after_batch_transfer(batch, 0)


def test_mixup_interpolates_the_network_inputs(waves):
    module = _classifier(mixup=Mixup(alpha=0.4)).train()
    batch = {"x": waves, "y": LABELS, "row": torch.arange(4)}
    torch.manual_seed(5)
    moved = module.on_after_batch_transfer(batch, 0)
    weight, perm = _partner(moved["targets"])
    torch.manual_seed(5)
    plain = _frontend().train()(waves)  # the same crop, then the draw
    assert draw_mix(0.4, 4, torch.device("cpu"))[0] == weight
    torch.testing.assert_close(moved["x"], weight * plain + (1 - weight) * plain[perm])
    torch.manual_seed(0)
    loss = module.training_step(moved, 0)
    torch.manual_seed(0)  # the same dropout masks
    logits = module(moved["x"])
    expected = weight * F.cross_entropy(logits, LABELS) + (1 - weight) * F.cross_entropy(logits, LABELS[perm])
    torch.testing.assert_close(loss, expected)


def test_two_mixes_multiply_weights_and_per_clip_weights_weigh_each_clip() -> None:
    x = torch.zeros(4, 3)
    batch = Batch.of(x, LABELS).mixed(x, 0.75, torch.tensor([1, 0, 3, 2]))
    twice = batch.mixed(x, 0.5, torch.tensor([2, 3, 0, 1]))
    assert [w for w, _ in twice.targets] == [0.375, 0.125, 0.375, 0.125]
    assert torch.equal(dominant_labels(twice.targets), LABELS)  # a tie keeps the first term
    # One weight per clip (e.g. the area of a pasted patch): each clip's larger share wins.
    share = torch.tensor([0.9, 0.2, 0.5, 0.6])
    cut = Batch.of(x, LABELS).mixed(x, share, torch.tensor([1, 0, 3, 2]))
    assert torch.equal(dominant_labels(cut.targets), torch.tensor([0, 0, 1, 10]))
    module = _classifier()
    logits = torch.randn(4, 50)
    each = [F.cross_entropy(logits, y, reduction="none") for _, y in cut.targets]
    expected = (share * each[0] + (1 - share) * each[1]).mean()
    torch.testing.assert_close(module._loss(logits, cut.targets), expected)


def test_mixing_weight_must_be_positive() -> None:
    with pytest.raises(ValueError, match="alpha=0 must be above 0"):
        Mixup(alpha=0)


def test_a_mixup_alpha_of_zero_is_one_line_and_no_run_folder(run_train, tmp_path):
    proc = run_train("augmentation=mixup", "augmentation.chain.mixup.alpha=0", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (
        "error: augmentation.chain.mixup (esc50_lightning.features.Mixup): alpha=0 must be above 0 "
        "(to turn mixing off, remove the entry)"
    ) in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert run_dirs(tmp_path / "outputs") == []
