"""Odd inputs to predict and export, on real ESC-50 clips and the shipped model: one line naming
the file and the problem, the other files still handled, nothing written where it must not be."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from helpers import make_subset

from esc50_lightning.commands import export, predict
from esc50_lightning.data import FoldedAudioDataModule
from esc50_lightning.data.audio import AudioReadError, read_mono
from esc50_lightning.data.table import DatasetSpec
from esc50_lightning.errors import DataError
from esc50_lightning.factory import load_classifier

SHIPPED = predict.PRETRAINED
PACKAGE = SHIPPED.parent.parent  # the installed package's folder
# The shipped model's record, written by hand: an export must never replace it.
RECORD_BYTES = SHIPPED.with_suffix(".json").read_bytes()
BIRDS = "1-100038-A-14.wav"  # fold 1 (never trained on), chirping_birds
DOG = "1-110389-A-0.wav"  # fold 1, dog


def _package_files() -> dict[str, bytes]:
    return {str(p.relative_to(PACKAGE)): p.read_bytes() for p in (PACKAGE / "pretrained").iterdir()}


PACKAGE_BEFORE = _package_files()


def _assert_package_untouched() -> None:
    assert SHIPPED.with_suffix(".json").read_bytes() == RECORD_BYTES
    assert _package_files() == PACKAGE_BEFORE


def _call(main, argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Run a command's ``main`` as the shell would; return (exit status, stdout, stderr)."""
    capsys.readouterr()
    code = 0
    try:
        main(argv)
    except SystemExit as done:
        code = done.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def _corrupt(clip: Path, dest: Path, value: float, at: list[int], subtype: str) -> Path:
    samples, rate = sf.read(clip, dtype="float32")
    samples[at] = value
    sf.write(dest, samples, rate, subtype=subtype)
    return dest


def _categories(esc50_root: Path) -> dict[str, str]:
    frame = pd.read_csv(esc50_root / "meta" / "esc50.csv")
    return dict(zip(frame.filename, frame.category, strict=True))


# ---- non-finite audio ---------------------------------------------------------------------------
def test_read_mono_refuses_nan_and_inf_samples(esc50_root: Path, tmp_path: Path) -> None:
    clip = esc50_root / "audio" / BIRDS
    nan = _corrupt(clip, tmp_path / "nan.wav", np.nan, [10, 20_000, 100_000], "FLOAT")
    inf = _corrupt(clip, tmp_path / "inf.wav", np.inf, [5], "DOUBLE")
    with pytest.raises(AudioReadError, match=r"^holds non-finite samples \(NaN or inf\): 3 NaN$"):
        read_mono(nan, 44100)
    with pytest.raises(AudioReadError, match=r"^holds non-finite samples \(NaN or inf\): 1 inf$"):
        read_mono(inf, 22050)  # refused before resampling would smear it over the clip
    assert np.isfinite(read_mono(clip, 44100).samples).all()  # the real clip itself is fine


def test_training_data_check_lists_a_nan_clip_with_the_other_bad_files(
    esc50_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ClipStore decodes through read_mono, so a NaN clip joins its one DataError."""
    root = tmp_path / "esc50"
    names = list(make_subset(esc50_root, root).filename)  # 10 real clips
    audio = root / "audio"
    _corrupt(audio / names[0], audio / names[0], np.nan, [1000], "FLOAT")
    (audio / names[1]).write_bytes(b"")
    spec = DatasetSpec(name="esc50", root=str(root), folds=[1, 2, 3, 4, 5], num_classes=50)
    dm = FoldedAudioDataModule(spec, cache_dir=str(tmp_path / "cache"), cache_features=False)
    with pytest.raises(DataError) as info, caplog.at_level(logging.WARNING):
        dm.store.waveforms(dm.table)
    assert sorted(info.value.problems) == sorted(
        [
            f"{audio / names[0]}: holds non-finite samples (NaN or inf): 1 NaN",
            f"{audio / names[1]}: file is empty (0 bytes)",
        ]
    )


def test_predict_names_nan_and_inf_files_and_predicts_the_good_ones(
    esc50_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "recordings"
    folder.mkdir()
    birds, dog = esc50_root / "audio" / BIRDS, esc50_root / "audio" / DOG
    glitch_1 = _corrupt(birds, folder / "glitch_1.wav", np.nan, [10, 50_000], "FLOAT")
    glitch_2 = _corrupt(dog, folder / "glitch_2.wav", -np.inf, [70_000], "FLOAT")
    (folder / "folder.wav").mkdir()  # a folder named like an audio file
    samples, rate = sf.read(birds, dtype="float32")
    loud = folder / "loud.wav"  # finite, but so large that the spectrogram overflows
    sf.write(loud, samples * np.float32(1e30), rate, subtype="FLOAT")

    code, out, err = _call(predict.main, [str(folder), str(birds), str(dog)], capsys)

    assert code == 1
    assert "Traceback" not in err
    errors = sorted(line for line in err.splitlines() if line.startswith("error:"))
    assert errors == [
        f"error: {glitch_1}: holds non-finite samples (NaN or inf): 2 NaN",
        f"error: {glitch_2}: holds non-finite samples (NaN or inf): 1 inf",
        f"error: {loud}: the model's scores are not finite (largest |sample| "
        f"{np.abs(samples).max() * 1e30:.3g}; audio belongs in [-1, 1])",
    ]
    assert f"skipped: {folder / 'folder.wav'}/ is a folder" in err
    assert not re.search(r"\b(nan|inf)\b", out.lower())  # no NaN scores printed
    # The good clips are still predicted, five classes each, their true class among them.
    categories = _categories(esc50_root)
    blocks = {line.split()[0]: i for i, line in enumerate(out.splitlines()) if not line.startswith(" ")}
    assert set(blocks) == {str(birds), str(dog)}
    lines = out.splitlines()
    for clip in (birds, dog):
        top = [line.split()[1] for line in lines[blocks[str(clip)] + 1 : blocks[str(clip)] + 6]]
        assert categories[clip.name] in top, (clip.name, top)
    assert lines[blocks[str(birds)] + 1].split()[1] == "chirping_birds"


def test_predict_names_every_skipped_folder_entry(
    esc50_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "recordings"
    (folder / "empty.wav").mkdir(parents=True)
    (folder / "album.flac").mkdir()
    sf.write(folder / "album.flac" / "track.wav", *sf.read(esc50_root / "audio" / BIRDS, dtype="float32"))
    (folder / "gone.wav").symlink_to(tmp_path / "absent.wav")
    (folder / "notes.txt").write_text("recorded in the park\n")

    code, out, err = _call(predict.main, [str(folder), "--top-k", "1"], capsys)

    assert code == 0, err
    assert err.splitlines() == [
        f"skipped: {folder / 'album.flac'}/ is a folder, not an audio file (its contents are searched)",
        f"skipped: {folder / 'empty.wav'}/ is a folder, not an audio file (its contents are searched)",
        f"skipped: {folder / 'gone.wav'} is a broken link",
        f"skipped: 1 file(s) in {folder}/ without an audio suffix: notes.txt",
    ]
    assert out.splitlines()[0].startswith(str(folder / "album.flac" / "track.wav"))
    assert out.splitlines()[1].split()[1] == "chirping_birds"

    # A folder holding nothing predictable: the skipped lines, then one error, exit 2.
    code, _, err = _call(predict.main, [str(folder / "empty.wav")], capsys)
    assert code == 2
    assert err.splitlines() == [f"error: no audio files found in {folder / 'empty.wav'}"]


# ---- mistakes on the command line ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["{tmp}/absent.wav"], "error: {tmp}/absent.wav: no such file"),
        (["--ckpt", "{tmp}", "{clip}"], "error: {tmp}: is a folder, not a checkpoint file"),
        (["--ckpt", "{tmp}/absent.ckpt", "{clip}"], "error: {tmp}/absent.ckpt: checkpoint not found"),
        (
            ["--ckpt", "{clip}", "{clip}"],
            "error: {clip}: not a readable checkpoint (not a file torch.save wrote, or damaged)",
        ),
        (["--top-k", "0", "{clip}"], "error: --top-k 0: must be at least 1"),
        (["--hop", "-1", "{clip}"], "error: --hop -1.0: must be a positive number of seconds"),
        (["--hop", "nan", "{clip}"], "error: --hop nan: must be a positive number of seconds"),
        (["--hop", "inf", "{clip}"], "error: --hop inf: must be a positive number of seconds"),
        (["--batch-size", "0", "{clip}"], "error: --batch-size 0: must be at least 1"),
        (["--device", "gpu0", "{clip}"], "error: --device gpu0: not a device name (use cpu, cuda or cuda:N)"),
        (
            ["--json", "{tmp}/no/x.json", "{clip}"],
            "error: --json {tmp}/no/x.json: folder {tmp}/no does not exist",
        ),
        (["--json", "{tmp}", "{clip}"], "error: --json {tmp}: is a folder; give a file path"),
        (
            ["--json", "{clip}", "{clip}"],
            "error: --json {clip}: named like an audio file; give a .json path "
            "(or put --json last to print the JSON)",
        ),
    ],
)
def test_predict_command_line_mistakes(
    esc50_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], expected: str
) -> None:
    clip = esc50_root / "audio" / BIRDS
    before = clip.read_bytes()
    fill = {"tmp": tmp_path, "clip": clip}
    code, _, err = _call(predict.main, [a.format(**fill) for a in argv], capsys)
    assert code != 0
    assert err.splitlines() == [expected.format(**fill)]
    assert clip.read_bytes() == before


# ---- export -------------------------------------------------------------------------------------
def test_export_writes_to_the_current_folder_refuses_overwrites_and_leaves_the_package_alone(
    esc50_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    files = [work / "esc50_fold1.torchscript.pt", work / "esc50_fold1.onnx", work / "esc50_fold1.json"]

    code, out, err = _call(export.main, ["--ckpt", str(SHIPPED)], capsys)  # no --out
    assert code == 0, err
    assert sorted(work.iterdir()) == sorted(files)  # here, and no temporary file left
    assert f"TorchScript: {files[0]}" in out and f"class names and input format: {files[2]}" in out
    module, info = load_classifier(SHIPPED)
    assert json.loads(files[2].read_text())["class_names"] == info["data"]["class_names"]
    wave = torch.from_numpy(read_mono(esc50_root / "audio" / BIRDS, 44100).samples)[None]
    with torch.inference_mode():
        expected = module(module.features(wave))
        assert torch.allclose(torch.jit.load(str(files[0]))(wave), expected, atol=1e-4)
    _assert_package_untouched()

    # Again: refused, naming every file in the way, nothing touched.
    files[2].write_text("my notes\n")
    stamps = [p.stat().st_mtime_ns for p in files]
    code, _, err = _call(export.main, ["--ckpt", str(SHIPPED)], capsys)
    assert code == 2
    assert err.splitlines() == [
        f"error: {', '.join(map(str, files))}: already exist (pass --force to overwrite); nothing was written"
    ]
    assert [p.stat().st_mtime_ns for p in files] == stamps and files[2].read_text() == "my notes\n"

    # With --force it overwrites them.
    code, _, err = _call(export.main, ["--ckpt", str(SHIPPED), "--force", "--no-onnx"], capsys)
    assert code == 0, err
    assert json.loads(files[2].read_text())["class_names"] == info["data"]["class_names"]
    assert files[0].stat().st_mtime_ns != stamps[0]
    assert sorted(work.iterdir()) == sorted(files)
    _assert_package_untouched()


@pytest.mark.parametrize("inside", ["pretrained", ".", "pretrained/../conf/exports"])
def test_export_refuses_a_folder_inside_the_package(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, inside: str
) -> None:
    target = PACKAGE / inside
    code, _, err = _call(export.main, ["--ckpt", str(SHIPPED), "--out", str(target)], capsys)
    assert code == 2
    assert err.splitlines() == [
        f"error: --out {target}: inside the installed package ({PACKAGE}); "
        "export to a folder of your own (the default is the current folder)"
    ]
    assert not (PACKAGE / "conf" / "exports").exists()
    # The shipped model's folder as the current folder, no --out: refused the same way.
    monkeypatch.chdir(PACKAGE / "pretrained")
    code, _, err = _call(export.main, ["--ckpt", str(SHIPPED)], capsys)
    assert code == 2 and "inside the installed package" in err
    _assert_package_untouched()


def test_export_command_line_mistakes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for argv, expected in [
        (["--ckpt", str(tmp_path)], f"error: {tmp_path}: is a folder, not a checkpoint file"),
        (["--ckpt", str(tmp_path / "x.ckpt")], f"error: {tmp_path / 'x.ckpt'}: checkpoint not found"),
        (["--out", str(a_file)], f"error: --out {a_file}: {a_file} is a file, not a folder"),
        (["--out", str(a_file / "sub")], f"error: --out {a_file / 'sub'}: {a_file} is a file, not a folder"),
    ]:
        full = argv if argv[0] == "--ckpt" else ["--ckpt", str(SHIPPED), *argv]
        code, _, err = _call(export.main, full, capsys)
        assert (code, err.splitlines()) == (2, [expected])
    (tmp_path / "out" / "esc50_fold1.json").mkdir(parents=True)  # a folder where a file would go
    argv = ["--ckpt", str(SHIPPED), "--out", str(tmp_path / "out"), "--force"]
    code, _, err = _call(export.main, argv, capsys)
    assert code == 2
    assert err.splitlines() == [
        f"error: {tmp_path / 'out' / 'esc50_fold1.json'}: a folder is in the way of the export; "
        "nothing was written"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["esc50_fold1.json"]


def test_a_failed_export_leaves_no_file_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The models are complete in temporary files when the last step fails: none is renamed."""
    out = tmp_path / "exports"
    out.mkdir()
    (out / "esc50_fold1.json").write_text("an earlier export's record\n")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "onnx_max_difference", fail)
    code, _, err = _call(export.main, ["--ckpt", str(SHIPPED), "--out", str(out), "--force"], capsys)
    assert code == 2
    assert err.splitlines() == [
        f"error: --out {out}: cannot write there (No space left on device); nothing was written"
    ]
    assert [p.name for p in out.iterdir()] == ["esc50_fold1.json"]  # no model, no temporary file
    assert (out / "esc50_fold1.json").read_text() == "an earlier export's record\n"
    _assert_package_untouched()


def test_a_forced_export_whose_onnx_fails_leaves_no_earlier_onnx(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--force over an earlier export: when ONNX fails this time, the earlier .onnx (of another
    training of that checkpoint name) is removed, not left beside the new TorchScript model."""
    out = tmp_path / "exports"
    out.mkdir()
    (out / "esc50_fold1.onnx").write_bytes(b"an earlier export's model")

    def exporter_fails(*args, **kwargs):
        raise RuntimeError("operator not supported")

    monkeypatch.setattr(export.torch.onnx, "export", exporter_fails)
    code, stdout, err = _call(export.main, ["--ckpt", str(SHIPPED), "--out", str(out), "--force"], capsys)
    assert code == 0, err
    assert "ONNX skipped: dynamo exporter: RuntimeError: operator not supported" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["esc50_fold1.json", "esc50_fold1.torchscript.pt"]
    assert json.loads((out / "esc50_fold1.json").read_text())["files"] == {
        "torchscript": "esc50_fold1.torchscript.pt"
    }


def test_command_line_mistakes_are_one_error_line(capsys: pytest.CaptureFixture) -> None:
    """argparse's usage block is not printed before the error: one line, exit status 2."""
    from esc50_lightning.commands import cache, pack, report

    for main, argv, expected in [
        (predict.main, [], "error: the following arguments are required: FILE_OR_DIR"),
        (export.main, ["--ckpt"], "error: argument --ckpt: expected one argument"),
        (report.main, ["a", "b"], "error: unrecognized arguments: b"),
        (pack.main, ["--bogus"], "error: the following arguments are required: src, dst"),
        (cache.main, ["prune", "--older-than"], "error: argument --older-than: expected one argument"),
    ]:
        code, out, err = _call(main, argv, capsys)
        assert (code, out) == (2, ""), (argv, err)
        (line,) = err.splitlines()
        assert line.startswith(expected) and line.endswith(" --help)"), line
