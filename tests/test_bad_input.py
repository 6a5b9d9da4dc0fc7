"""Bad data and bad config: one line per problem naming the file, exit 2, no traceback, nothing left."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import command_env, hydra_args, make_subset, run_command, run_dirs, snapshot

from esc50_lightning.data import FoldedAudioDataModule
from esc50_lightning.data.table import DatasetSpec


def _problem_lines(stderr: str) -> list[str]:
    lines = stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("error: dataset check failed"))
    return [line.strip() for line in lines[start + 1 :] if line.startswith("  ")]


def test_every_broken_audio_file_is_listed(esc50_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "esc50"
    names = list(make_subset(esc50_root, root).filename)  # 10 real clips
    audio = root / "audio"
    (audio / names[0]).unlink()
    (audio / names[1]).write_bytes(b"")
    whole = (audio / names[2]).read_bytes()
    (audio / names[2]).write_bytes(whole[: len(whole) // 3])  # header still says 5 s
    held = (len(whole) // 3 - 44) // 2  # 44-byte header, 16-bit mono frames
    (audio / names[3]).write_text("this is a text file, not audio\n" * 20)
    before = snapshot(root)

    proc = run_command(hydra_args("train.py"), env=command_env(root, tmp_path))

    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error: dataset check failed (4 problems):" in proc.stderr
    assert sorted(_problem_lines(proc.stderr)) == sorted(
        [
            f"{audio / names[0]}: file listed in the CSV is missing",
            f"{audio / names[1]}: file is empty (0 bytes)",
            f"{audio / names[2]}: truncated WAV: header says 220500 frames, file holds {held}",
            f"{audio / names[3]}: not a readable audio file (format not recognised)",
        ]
    )
    assert "Traceback" not in proc.stderr + proc.stdout
    assert run_dirs(tmp_path / "outputs") == [], "a failed check leaves no run folder"
    assert not list((tmp_path / "cache").rglob("*.npy")), "nothing half-built is cached"
    assert snapshot(root) == before, "the dataset folder must only be read"


def test_every_csv_problem_is_listed(esc50_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "esc50"
    frame = make_subset(esc50_root, root).astype(object)
    frame.loc[0, "fold"] = 6
    frame.loc[1, "target"] = 50
    frame.loc[2, "filename"] = frame.loc[3, "filename"]
    dog = int(frame.index[(frame.target == 0) & (frame.index > 3)][0])
    frame.loc[dog, "category"] = "rooster"  # target 0 is 'dog' (rooster is 1)
    frame.to_csv(root / "meta" / "esc50.csv", index=False)
    csv = root / "meta" / "esc50.csv"

    proc = run_command(hydra_args("train.py"), env=command_env(root, tmp_path))

    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert sorted(_problem_lines(proc.stderr)) == sorted(
        [
            f"{csv}:2: fold 6 outside 1-5",
            f"{csv}:3: label 50 outside 0-49",
            f"{csv}: duplicate file name {frame.loc[3, 'filename']!r} (lines 4, 5)",
            f"{csv}:{dog + 2}: class 'rooster' disagrees with label 0 (which is 'dog' elsewhere)",
        ]
    )
    assert run_dirs(tmp_path / "outputs") == []


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda f: f.drop(columns=["target"]), ": missing column(s) 'target'; has ["),
        (
            lambda f: f.assign(fold=f.fold.astype(object).where(f.index != 0, "two")),
            ":2: fold 'two' is not an integer",
        ),
        (lambda f: f.assign(target=f.target.astype(object).where(f.index != 1, "")), ":3: target is empty"),
    ],
)
def test_csv_column_problems(esc50_root: Path, tmp_path: Path, edit, expected: str) -> None:
    from esc50_lightning.data.table import read_table
    from esc50_lightning.errors import DataError

    root = tmp_path / "esc50"
    frame = make_subset(esc50_root, root)
    edit(frame).to_csv(root / "meta" / "esc50.csv", index=False)
    spec = DatasetSpec(name="esc50", root=str(root), folds=[1, 2, 3, 4, 5], num_classes=50)
    with pytest.raises(DataError) as info:
        read_table(spec)
    assert f"{root / 'meta' / 'esc50.csv'}{expected}" in str(info.value)


def test_other_rate_channels_and_length_are_converted_with_a_warning(
    esc50_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "esc50"
    names = list(make_subset(esc50_root, root).filename)
    audio = root / "audio"
    original, rate = sf.read(audio / names[0], dtype="float32")
    sf.write(audio / names[0], np.stack([original, original], axis=1), rate)  # stereo
    sf.write(audio / names[1], sf.read(audio / names[1], dtype="float32")[0][::2], rate // 2)  # 22.05 kHz
    short, _ = sf.read(audio / names[2], dtype="float32")
    sf.write(audio / names[2], short[: 3 * rate], rate)  # 3 s

    spec = DatasetSpec(name="esc50", root=str(root), folds=[1, 2, 3, 4, 5], num_classes=50)
    dm = FoldedAudioDataModule(spec, cache_dir=str(tmp_path / "cache"), cache_features=False)
    with caplog.at_level(logging.WARNING):
        waves = np.asarray(dm.store.waveforms(dm.table))

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"1 clip(s) averaged to mono: {audio / names[0]} (2 channels)" in warnings
    assert f"1 clip(s) resampled to 44100 Hz: {audio / names[1]} (22050 Hz)" in warnings
    assert f"1 clip(s) padded/trimmed to 5 s: {audio / names[2]} (3.00 s)" in warnings
    assert waves.shape == (10, 220500)
    # stereo of two equal channels averages back to the original clip
    expected = np.round(original * 32767).astype(np.int16)
    assert np.abs(waves[0].astype(int) - expected).max() <= 1
    assert not waves[2, 3 * rate :].any() and waves[2, : 3 * rate].any()  # padded with silence
    assert np.abs(waves[1]).max() > 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.fold=7"], "error: data.fold=7 is not one of the dataset's folds 1-5"),
        (["features.crop=[200,384]"], "error: features.crop=[200, 384] does not fit the spectrogram 128x431"),
        (["trainer.max_epochs=-1"], "error: trainer.max_epochs=-1 must be 0 or more"),
        (
            ["trainer.max_epochs=7", "trainer.check_val_every_n_epoch=5"],
            "error: trainer.max_epochs=7 is not a multiple of trainer.check_val_every_n_epoch=5: "
            "under data.protocol=cv the final epoch is the result, and it would not be validated",
        ),
        (
            ["model=transformer"],
            "error: model=transformer: no such option; choose from cnn14, cnn4, cnn8, resnet18, vgg8",
        ),
        (["data.fold=abc"], "error: data.fold=abc: not an integer; choose from 1, 2, 3, 4, 5"),
        (
            ["experiment=vgg8_mixup", "model.net.input_bn=64"],
            "error: model.net.input_bn=64, but features.crop gives the network 56 mel rows: "
            "set model.net.input_bn=56",
        ),
        (
            ["experiment=vgg8_mixup", "model.net.input_bn=56", "features.eval_crop=[64,null]"],
            "error: model.net.input_bn=56 matches the training crop, but features.eval_crop gives "
            "the network 64 mel rows",
        ),
        (
            ["experiment=long_schedule", "augmentation.chain.time_stretch.rates=0.9"],
            "error: augmentation.chain.time_stretch (esc50_lightning.features.TimeStretch): rates=0.9 must "
            "be [low, high] playback rates, e.g. [0.8, 1.08]",
        ),
        (
            ["augmentation.chain.freq_mixstyle=0.4"],
            "error: augmentation.chain.freq_mixstyle=0.4 must be null (off) or an entry such as {_target_:",
        ),
        (
            ["model.net.dropout=1.5"],
            "error: model.net (esc50_lightning.models.CNN8): dropout probability has to be between 0 and 1, "
            "but got 1.5",
        ),
        (["optim.optimizer.lr=-1"], "error: optim.optimizer (torch.optim.Adam): Invalid learning rate: -1"),
        (
            ["experiment=vgg8_mixup", "model=resnet18"],  # the recipe's vgg8 widths
            "error: model.net (esc50_lightning.models.ResNet18): ResNet18.__init__() got an unexpected "
            "keyword argument 'channels'; remove it with '~model.net.channels'",
        ),
        (
            ["model.net._target_=esc50_lightning.models.VGG9"],
            "error: model.net._target_=esc50_lightning.models.VGG9 cannot be imported: check its spelling",
        ),
        (
            ["experiment=long_schedule", "callbacks=default"],
            "error: callbacks.ema: settings for a callback callbacks=default does not have (a recipe set "
            "callbacks.ema.*): choose callbacks=ema, or drop them with '~callbacks.ema'",
        ),
    ],
)
def test_config_mistakes(esc50_root: Path, tmp_path: Path, overrides: list[str], message: str) -> None:
    proc = run_command(hydra_args("train.py", *overrides), env=command_env(esc50_root, tmp_path))
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert run_dirs(tmp_path / "outputs") == []
    assert not list((tmp_path / "cache").rglob("*.npy")), "a config mistake is caught before decoding"


def test_full_error_shows_the_traceback(esc50_root: Path, tmp_path: Path) -> None:
    env = command_env(esc50_root, tmp_path, HYDRA_FULL_ERROR="1")
    proc = run_command(hydra_args("train.py", "trainer.max_epochs=-1"), env=env)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "UserError: trainer.max_epochs=-1 must be 0 or more" in proc.stderr


def test_datamodule_rejects_bad_fold_before_reading_audio(esc50_root: Path, tmp_path: Path) -> None:
    spec = DatasetSpec(name="esc50", root=str(esc50_root), folds=[1, 2, 3, 4, 5], num_classes=50)
    dm = FoldedAudioDataModule(spec, fold=0, cache_dir=str(tmp_path / "cache"), cache_features=False)
    from esc50_lightning.errors import UserError

    with pytest.raises(UserError, match=r"data.fold=0 is not one of the dataset's folds 1-5"):
        dm.prepare_data()
    assert not (tmp_path / "cache").exists()
