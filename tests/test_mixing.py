"""Mixup of the network's inputs against between-class mixing of the clips as sounds."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from helpers import run_dirs

from esc50_lightning.features import FeatureExtractor, LogMel, mix_as_sounds
from esc50_lightning.models import CNN4
from esc50_lightning.training.classifier import AudioClassifier

# `waves` (conftest): a dog bark, a chainsaw, a rooster and rain, clips of very different
# loudness and spectra.
CLIPS = ["1-100032-A-0.wav", "1-19898-A-41.wav", "1-26806-A-1.wav", "1-17367-A-10.wav"]


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


def _classifier(mode: str) -> AudioClassifier:
    return AudioClassifier(
        net=CNN4(num_classes=50),
        features=FeatureExtractor(LogMel(n_mels=64, hop_length=1024), 220500, crop=(56, 200)),
        optimizer=torch.optim.AdamW,
        class_names=[f"c{i}" for i in range(50)],
        mixup_alpha=0.4,
        mixup_mode=mode,
    )


def test_between_class_training_weighs_both_labels_by_the_mix_it_drew(waves):
    module = _classifier("between_class").train()
    batch = {"x": waves, "y": torch.tensor([0, 41, 1, 10]), "row": torch.arange(4)}
    torch.manual_seed(3)
    moved = module.on_after_batch_transfer(batch, 0)
    weight, perm = moved["mix"]
    assert moved["x"].shape == (4, 1, 56, 200)
    # The network sees the features of the mixed sounds (same crop and masks: same seed).
    torch.manual_seed(3)
    module._draw_mix(4, torch.device("cpu"))
    spec = module.features.logmel(batch["x"])
    torch.testing.assert_close(moved["x"], module.features(mix_as_sounds(spec, weight, perm)))

    torch.manual_seed(0)
    loss = module.training_step(moved, 0)
    torch.manual_seed(0)  # the same dropout masks
    logits = module(moved["x"])  # training_step must not mix a second time
    y = batch["y"]
    expected = weight * F.cross_entropy(logits, y) + (1 - weight) * F.cross_entropy(logits, y[perm])
    torch.testing.assert_close(loss, expected)

    # Evaluation never mixes.
    module.eval()
    assert "mix" not in module.on_after_batch_transfer(batch, 0)


def test_logmel_mixup_interpolates_the_network_inputs(waves):
    module = _classifier("logmel").train()
    batch = {"x": waves, "y": torch.tensor([0, 41, 1, 10]), "row": torch.arange(4)}
    moved = module.on_after_batch_transfer(batch, 0)
    assert "mix" not in moved
    torch.manual_seed(5)
    loss = module.training_step(moved, 0)
    torch.manual_seed(5)
    weight, perm = module._draw_mix(4, torch.device("cpu"))
    logits = module(weight * moved["x"] + (1 - weight) * moved["x"][perm])
    y = batch["y"]
    expected = weight * F.cross_entropy(logits, y) + (1 - weight) * F.cross_entropy(logits, y[perm])
    torch.testing.assert_close(loss, expected)


def test_unknown_mixup_mode_is_one_line_and_no_run_folder(run_train, tmp_path):
    proc = run_train("augmentation=mixup", "augmentation.mixup_mode=waveform", check=False, warm=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error: augmentation.mixup_mode=waveform must be one of logmel, between_class" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert run_dirs(tmp_path / "outputs") == []
