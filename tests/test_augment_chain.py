"""The augmentation chain against the path it replaced, on real clips: every recipe's training
batches (features and mixed labels) are those of the old frontend and classifier for the same
seed; the chain's order, overrides and refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import compose_config

from esc50_lightning.errors import UserError
from esc50_lightning.factory import build_features, build_module
from esc50_lightning.features import Augmentation, AugmentationChain, Batch, FeatureExtractor, LogMel

CLIPS = 8  # `waves` (conftest): the first clip of eight classes, 5 s at 44.1 kHz
LABELS = torch.arange(CLIPS) * 6
MEL128 = {"crop": (100, 384), "spec": (2, 16, 2, 48)}  # features=logmel, its mask widths
MEL64 = {"crop": (56, 200), "spec": (2, 8, 2, 24)}  # features=logmel64
ROLL = "+augmentation.chain.time_roll={_target_:esc50_lightning.features.TimeRoll,max_shift:0.3}"
STRETCH = "+augmentation.chain.time_stretch={_target_:esc50_lightning.features.TimeStretch,rates:[0.8,1.25]}"
MIXSTYLE = "augmentation.chain.freq_mixstyle={_target_:esc50_lightning.features.FreqMixStyle,p:0.6,alpha:0.4}"

# The overrides, and the settings the old path (git 1493a8a) ran for them.
CASES = {
    "spec_augment": (["augmentation=specaugment"], MEL128),
    "mixup": (["augmentation=mixup"], {**MEL128, "mixup": 0.4}),
    "between_class": (
        ["augmentation=between_class", "features=logmel64"],
        {**MEL64, "mixup": 0.4, "mode": "between_class"},
    ),
    "time_roll": (["augmentation=none", "features=logmel64", ROLL], {"crop": (56, 200), "roll": 0.3}),
    "time_stretch": (
        ["augmentation=none", "features=logmel64", STRETCH],
        {"crop": (56, 200), "stretch": (0.8, 1.25)},
    ),
    "freq_mixstyle": (["features=logmel64", MIXSTYLE], {**MEL64, "mixstyle": (0.6, 0.4)}),
    "vgg8_bc_hour": (["experiment=vgg8_bc_hour"], {**MEL64, "mixup": 0.4, "mode": "between_class"}),
    "long_schedule": (
        ["experiment=long_schedule"],
        {**MEL64, "mixup": 0.5, "mode": "between_class", "roll": 0.25, "stretch": (0.8, 1.25)},
    ),
}


def _bands(batch: int, size: int, count: int, width: int) -> torch.Tensor:
    """The old SpecAugment's keep-mask along one axis, band by band."""
    keep = torch.ones(batch, size)
    if width < 1:
        return keep
    for _ in range(count):
        value = torch.rand(batch, 1) * width
        start = torch.rand(batch, 1) * (size - value)
        for i in range(batch):
            keep[i, int(start[i]) : int(start[i]) + int(value[i])] = 0
    return keep


def old_path(x, y, logmel, crop, spec=None, mixup=0.0, mode="logmel", roll=0.0, stretch=None, mixstyle=None):
    """The old training batch, written plainly with the same draws in the same order: the between-
    class draw (classifier), log-mel, the mix as sounds, statistics, roll, crop (stretched),
    standardise, Freq-MixStyle, masks; then mixup of the inputs (classifier's training_step)."""
    batch, mix = x.shape[0], None
    if mixup and mode == "between_class":
        mix = (float(torch.distributions.Beta(mixup, mixup).sample()), torch.randperm(batch))
    x = (logmel(x) if x.dim() == 2 else x).float()
    if mix is not None:
        weight, perm = mix
        power = 10.0 ** ((x - x.amax(dim=(1, 2), keepdim=True)) / 10.0)
        x = 10.0 * torch.log10((weight**2 * power + (1 - weight) ** 2 * power[perm]).clamp_min(1e-10))
    mean, std = x.mean(dim=(1, 2), keepdim=True), x.std(dim=(1, 2), keepdim=True)
    _, freq, time = x.shape
    if roll:
        most = round(roll * time)
        shift = torch.randint(-most, most + 1, (batch, 1))
        x = torch.stack([torch.roll(x[i], int(shift[i]), dims=1) for i in range(batch)])
    crop_f, crop_t = crop
    off_f = torch.randint(0, freq - crop_f + 1, (batch,))
    if stretch:
        widths = torch.empty(batch).uniform_(*stretch).mul_(crop_t).round_().clamp_(1, time).long()
        off_t = (torch.rand(batch) * (time - widths + 1)).long()
    else:
        widths, off_t = torch.full((batch,), crop_t), torch.randint(0, time - crop_t + 1, (batch,))
    windows = []
    for i in range(batch):
        f, t, width = int(off_f[i]), int(off_t[i]), int(widths[i])
        window = x[i, f : f + crop_f, t : t + width]
        if width != crop_t:
            window = F.interpolate(window[None], size=crop_t, mode="linear", align_corners=False)[0]
        windows.append(window)
    x = (torch.stack(windows) - mean) / (std + 1e-5)
    if mixstyle and float(torch.rand(())) < mixstyle[0]:
        row_mean, row_std = x.mean(dim=2, keepdim=True), (x.var(dim=2, keepdim=True) + 1e-6).sqrt()
        alpha = torch.tensor(mixstyle[1])
        share = torch.distributions.Beta(alpha, alpha).sample((batch, 1, 1))
        other = torch.randperm(batch)
        blend_mean = share * row_mean + (1 - share) * row_mean[other]
        blend_std = share * row_std + (1 - share) * row_std[other]
        x = (x - row_mean) / row_std * blend_std + blend_mean
    if spec:
        keep_f, keep_t = _bands(batch, crop_f, *spec[:2]), _bands(batch, crop_t, *spec[2:])
        x = x * keep_f[:, :, None] * keep_t[:, None, :]
    x = x[:, None]
    if mixup and mode == "logmel":
        mix = (float(torch.distributions.Beta(mixup, mixup).sample()), torch.randperm(batch))
        x = mix[0] * x + (1 - mix[0]) * x[mix[1]]
    targets = [(1.0, y)] if mix is None else [(mix[0], y), (1 - mix[0], y[mix[1]])]
    return x, targets


@pytest.mark.parametrize("case", list(CASES))
def test_the_chain_gives_the_old_batches(waves: torch.Tensor, case: str) -> None:
    overrides, settings = CASES[case]
    module = build_module(compose_config(*overrides), [f"c{i}" for i in range(50)]).train()
    logmel = module.features.logmel
    for seed, cached in ((0, False), (1, True)):  # waveforms, and log-mels from the cache
        x = logmel(waves) if cached else waves
        torch.manual_seed(seed)
        new = [module.on_after_batch_transfer({"x": x, "y": LABELS, "row": LABELS}, 0) for _ in range(2)]
        torch.manual_seed(seed)
        old = [old_path(x, LABELS, logmel, **settings) for _ in range(2)]
        for step, (ours, (x_old, targets_old)) in enumerate(zip(new, old, strict=True)):
            where = f"{case}, seed {seed}, step {step}"
            # the old frontend standardised with a fused reciprocal and cut with one gather
            torch.testing.assert_close(
                ours["x"], x_old, atol=2e-4, rtol=0, msg=lambda m, w=where: f"{w}: {m}"
            )
            assert len(ours["targets"]) == len(targets_old), where
            for (weight, labels), (weight_old, labels_old) in zip(ours["targets"], targets_old, strict=True):
                assert weight == weight_old and torch.equal(labels, labels_old), where


def _chain(*overrides: str) -> AugmentationChain:
    return build_features(compose_config(*overrides)).chain


def test_entries_run_by_stage_then_in_order_and_follow_overrides() -> None:
    assert list(_chain("experiment=long_schedule").entries) == [
        "between_class",  # whole-clip log-mels
        "time_roll",
        "time_stretch",  # the crop
        "spec_augment",  # the network's input
    ]
    assert list(_chain("augmentation=mixup").entries) == ["spec_augment", "mixup"]
    assert list(_chain("augmentation=mixup", "augmentation.order=[mixup]").entries) == [
        "mixup",
        "spec_augment",
    ]
    assert list(_chain("augmentation=mixup", "~augmentation.chain.mixup").entries) == ["spec_augment"]
    assert list(_chain("augmentation=mixup", "augmentation.chain.mixup=null").entries) == ["spec_augment"]
    assert _chain("augmentation.chain.spec_augment.freq_masks=1").entries["spec_augment"].freq_masks == 1


class Reverse(Augmentation):
    """Plays every clip backwards (a waveform entry)."""

    acts_on = "waveform"

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1)


class Learned(Augmentation):
    acts_on = "input"

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))


def test_waveform_entries_run_before_the_log_mel(waves: torch.Tensor) -> None:
    frontend = FeatureExtractor(LogMel(), 220500, (100, 384), augmentations={"reverse": Reverse()}).train()
    torch.manual_seed(0)
    ours = frontend.augment(Batch.of(waves[:2], LABELS[:2]))
    torch.manual_seed(0)
    plain = FeatureExtractor(LogMel(), 220500, (100, 384)).train()(waves[:2].flip(-1))
    torch.testing.assert_close(ours.x, plain)
    assert torch.equal(ours.targets[0][1], LABELS[:2])
    with pytest.raises(UserError, match=r"batches carry cached log-mels: set data\.cache_features=false"):
        frontend.augment(Batch.of(LogMel()(waves[:2])))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+augmentation.chain.gain=3"], "augmentation.chain.gain=3 must be null (off) or an entry such as"),
        (
            ["+augmentation.mixup_alpha=0.4"],
            "augmentation.mixup_alpha is not a setting: augmentations are entries of augmentation.chain",
        ),
        (
            ["augmentation.order=[mixup]"],
            "augmentation.order names mixup, which augmentation.chain does not have",
        ),
        (
            ["+augmentation.chain.same={_target_:torch.nn.Identity}"],
            "augmentation.chain.same: torch.nn.modules.linear.Identity is not an "
            "esc50_lightning.features.Augmentation",
        ),
        (
            ["+augmentation.chain.learned={_target_:test_augment_chain.Learned}"],
            "augmentation.chain.learned: Learned holds scale; checkpoints hold no augmentation",
        ),
        (
            ["+augmentation.chain.reverse={_target_:test_augment_chain.Reverse}"],
            "augmentation.chain.reverse acts on waveforms, but data.cache_features=true",
        ),
        (
            [STRETCH, "+augmentation.chain.again={_target_:esc50_lightning.features.TimeStretch}"],
            "augmentation.chain: time_stretch and again both cut the training crop; keep one",
        ),
        (
            [STRETCH.replace("[0.8,1.25]", "0.9")],
            "augmentation.chain.time_stretch (esc50_lightning.features.TimeStretch): rates=0.9 must be "
            "[low, high] playback rates",
        ),
    ],
)
def test_chain_mistakes_are_one_line_naming_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(UserError) as err:
        build_features(compose_config(*overrides))
    assert message in str(err.value) and "\n" not in str(err.value)
