"""Using a trained checkpoint: eval.py on a fold, predict on users' files, export with the frontend inside."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime
import pandas as pd
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
from helpers import command_env, run_command, run_dirs

from esc50_lightning.commands import pack, predict
from esc50_lightning.data.audio import fit_length, read_mono
from esc50_lightning.factory import load_classifier

SR = 44100
CLIP = 5 * SR


@pytest.fixture(scope="module")
def trained(esc50_root: Path, cache_dir: Path, trained_run, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny cnn4 trained on folds 2-5 (one clip per class and fold), evaluated on fold 1."""
    # float32 as eval.py, predict and export score: their figures then equal the run's own
    run = trained_run(
        "+trainer.limit_train_batches=2", "model=cnn4", "data.fold=1", "trainer.precision=32-true"
    ).run
    # the commands below write their outputs here, never into the shared run
    env = command_env(esc50_root, tmp_path_factory.mktemp("deploy"), cache=cache_dir)
    predictions = pd.read_csv(run / "predictions_val.csv")
    metrics = json.loads((run / "metrics.json").read_text())
    # what the tests below take for granted about the (shared) run
    assert metrics["model"] == "cnn4"
    assert metrics["splits"] == {"train": [2, 3, 4, 5], "val": [1], "test": [1]}
    return {
        "env": env,
        "run": run,
        "ckpt": run / "checkpoints" / "last.ckpt",
        "metrics": metrics,
        "predictions": predictions,
        "clips": [esc50_root / "audio" / f for f in predictions.file],
    }


# ---- eval.py ------------------------------------------------------------------------------------
def test_eval_scores_the_checkpoint_like_its_final_epoch(trained: dict, tmp_path: Path) -> None:
    overrides = [f"ckpt_path={trained['ckpt']}", "data.fold=1", "data.limit_per_class=1"]
    env = {**trained["env"], "ESC50_OUTPUTS": str(tmp_path)}
    proc = run_command(["eval.py", *overrides, "trainer.enable_progress_bar=false"], env=env)
    assert proc.returncode == 0, proc.stderr
    (run,) = run_dirs(tmp_path / "eval")
    metrics = json.loads((run / "metrics.json").read_text())
    final = trained["metrics"]["final"]  # last.ckpt is the final epoch: same clips, same features
    for name in ("loss", "acc", "f1", "precision", "recall"):
        assert metrics["test"][name] == pytest.approx(final[name], abs=1e-6)
    assert metrics["task"] == "eval" and metrics["fold"] == 1 and metrics["clips"] == 50
    assert metrics["input"] == [100, 384]  # the training crop's size, centred
    assert metrics["on_seen_fold"] is False
    assert f"{final['acc']:.4f}" in proc.stdout  # the printed table
    predictions = pd.read_csv(run / "predictions_test.csv")
    assert predictions.prediction.tolist() == trained["predictions"].prediction.tolist()


def test_eval_refuses_a_training_fold_unless_told(trained: dict, tmp_path: Path) -> None:
    overrides = [f"ckpt_path={trained['ckpt']}", "data.fold=3", "data.limit_per_class=1"]
    env = {**trained["env"], "ESC50_OUTPUTS": str(tmp_path)}
    refused = run_command(["eval.py", *overrides], env=env)
    assert refused.returncode == 2
    assert "Traceback" not in refused.stderr
    assert "data.fold=3 is a fold this checkpoint was trained on" in refused.stderr
    assert "allow_train_fold=true" in refused.stderr
    assert not run_dirs(tmp_path)  # the refused run left no folder behind
    allowed = run_command(["eval.py", *overrides, "allow_train_fold=true"], env=env)
    assert allowed.returncode == 0, allowed.stderr
    (run,) = run_dirs(tmp_path / "eval")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["fold"] == 3 and metrics["on_seen_fold"] is True


def test_eval_averages_the_logits_of_evenly_spaced_cuts(trained: dict, tmp_path: Path) -> None:
    """``eval_crops=3``: three 200-frame cuts per clip (start, middle, end), logits averaged; the
    loss eval.py reports equals the one computed here from the WAV files, cut by cut."""
    env = {**trained["env"], "ESC50_OUTPUTS": str(tmp_path)}
    overrides = [f"ckpt_path={trained['ckpt']}", "data.fold=1", "data.limit_per_class=1"]
    proc = run_command(["eval.py", *overrides, "eval_crop=[100,200]", "eval_crops=3"], env=env)
    assert proc.returncode == 0, proc.stderr
    (run,) = run_dirs(tmp_path / "eval")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["eval_crops"] == 3 and metrics["input"] == [100, 200]

    module, _ = load_classifier(trained["ckpt"])
    module.eval()
    waves = torch.stack(
        [torch.from_numpy(fit_length(read_mono(c, SR).samples, CLIP)) for c in trained["clips"]]
    )
    with torch.no_grad():
        spec = module.features.logmel(waves.float())
        spec = (spec - spec.mean(dim=(1, 2), keepdim=True)) / (spec.std(dim=(1, 2), keepdim=True) + 1e-5)
        starts = (0, 116, 231)  # 431 frames: evenly spaced 200-frame cuts, first at 0, last at the end
        cuts = [spec[:, 14:114, t : t + 200].unsqueeze(1) for t in starts]  # centred 100 of 128 mels
        logits = torch.stack([module.net(cut) for cut in cuts]).mean(dim=0)
    labels = torch.tensor(trained["predictions"].target.tolist())
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert metrics["test"]["loss"] == pytest.approx(loss, abs=2e-5)
    # the one centred 200-frame cut scores otherwise (the model is barely trained: by little)
    single = torch.nn.functional.cross_entropy(module.net(spec[:, 14:114, 115:315].unsqueeze(1)), labels)
    assert abs(float(single) - loss) > 1e-4

    # three cuts of the whole clip would be one cut three times: refused in one line
    refused = run_command(["eval.py", *overrides, "eval_crop=[100,null]", "eval_crops=3"], env=env)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "features.eval_crops=3 needs features.eval_crop shorter than the clip" in refused.stderr
    assert len(run_dirs(tmp_path / "eval")) == 1  # nothing left by the refused run


def test_build_sets_the_cut_eval_scores_and_eval_can_override_it(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``build --eval-crop`` records a whole-clip cut; eval.py scores it, or any cut it is given."""
    whole = tmp_path / "whole.ckpt"
    pack.main([str(trained["ckpt"]), str(whole), "--eval-crop", "100,null"])
    module, info = load_classifier(whole)
    assert module.features.output_shape == (100, 384)  # training cut unchanged
    assert module.features.eval_shape == (100, 431)  # every frame of the 5 s clip
    assert info["eval_crop_set_by_pack"] == {"from": [100, 384], "to": [100, None]}  # mels x frames

    def scored(*overrides: str) -> dict:
        out = tmp_path / f"eval{len(list(tmp_path.glob('eval*')))}"
        env = {**trained["env"], "ESC50_OUTPUTS": str(out)}
        proc = run_command(["eval.py", "data.fold=1", "data.limit_per_class=1", *overrides], env=env)
        assert proc.returncode == 0, proc.stderr
        (run,) = run_dirs(out / "eval")
        return json.loads((run / "metrics.json").read_text())

    built = scored(f"ckpt_path={whole}")
    overridden = scored(f"ckpt_path={trained['ckpt']}", "eval_crop=[100,null]")
    assert built["input"] == overridden["input"] == [100, 431]
    # float16 weights in the built copy: the same clips and cut give nearly the same loss
    assert built["test"]["loss"] == pytest.approx(overridden["test"]["loss"], abs=2e-3)
    # the training-size cut (what eval scores by default, test above) gives another loss
    assert overridden["test"]["loss"] != pytest.approx(trained["metrics"]["final"]["loss"], abs=1e-6)

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        pack.main([str(trained["ckpt"]), str(tmp_path / "bad.ckpt"), "--eval-crop", "200,null"])
    assert exit_info.value.code == 2
    assert "features.eval_crop=[200, None] does not fit the spectrogram 128x431" in capsys.readouterr().err
    assert not (tmp_path / "bad.ckpt").exists()


# ---- ensembles ----------------------------------------------------------------------------------
def _perturbed_copy(src: Path, dst: Path, features: dict | None = None, **data_changes) -> Path:
    """A second "trained" member: the same checkpoint with noise on its network weights (and its
    recorded features config replaced by ``features``, if given)."""
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    generator = torch.Generator().manual_seed(0)
    for key, value in ckpt["state_dict"].items():
        if key.startswith("net.") and value.is_floating_point() and value.dim() > 1:
            value.add_(0.5 * value.std() * torch.randn(value.shape, generator=generator))
    ckpt["esc50"]["data"].update(data_changes)
    if features is not None:
        ckpt["esc50"]["features"] = features
    torch.save(ckpt, dst)
    return dst


def test_ensemble_members_must_share_one_frontend(trained: dict, tmp_path: Path, capsys):
    """Members with the same features ensemble; one scoring three cuts per clip does not."""
    first = trained["ckpt"]
    recorded = torch.load(first, map_location="cpu", weights_only=True)["esc50"]["features"]
    assert recorded["eval_crops"] == 1
    same = _perturbed_copy(first, tmp_path / "same.ckpt", features=recorded)
    pack.main([str(first), str(same), str(tmp_path / "ensemble.ckpt")])
    assert (tmp_path / "ensemble.ckpt").is_file()
    three = _perturbed_copy(first, tmp_path / "three.ckpt", features={**recorded, "eval_crops": 3})
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        pack.main([str(first), str(three), str(tmp_path / "refused.ckpt")])
    assert exit_info.value.code == 2
    assert "its features differ" in capsys.readouterr().err
    assert not (tmp_path / "refused.ckpt").exists()


def test_ensemble_checkpoint_averages_member_probabilities(trained: dict, tmp_path: Path) -> None:
    first = trained["ckpt"]
    second = _perturbed_copy(first, tmp_path / "second.ckpt")
    ensemble = tmp_path / "ensemble.ckpt"
    build = ["-m", "esc50_lightning.pack", str(first), str(second), str(ensemble), "--fp32"]
    proc = run_command(build, env=trained["env"])
    assert proc.returncode == 0, proc.stderr
    module, info = load_classifier(ensemble)
    members = [load_classifier(path)[0] for path in (first, second)]
    x = torch.randn(3, 1, 64, 216, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = (members[0].net(x).softmax(-1) + members[1].net(x).softmax(-1)) / 2
        got = module.net(x).softmax(-1)
        assert not torch.allclose(members[0].net(x), members[1].net(x), atol=1e-3)  # members differ
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert info["model_name"].startswith("ensemble of 2")
    assert [m["source"] for m in info["members"]] == [first.name, second.name]  # no folder of this machine
    assert info["data"]["splits"]["train"] == [2, 3, 4, 5]

    # eval.py scores it on real fold-1 clips like any checkpoint
    env = {**trained["env"], "ESC50_OUTPUTS": str(tmp_path / "outputs")}
    overrides = [f"ckpt_path={ensemble}", "data.fold=1", "data.limit_per_class=1"]
    proc = run_command(["eval.py", *overrides, "trainer.enable_progress_bar=false"], env=env)
    assert proc.returncode == 0, proc.stderr
    (run,) = run_dirs(tmp_path / "outputs" / "eval")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["clips"] == 50 and metrics["model"].startswith("ensemble of 2")


def test_ensemble_refuses_members_trained_on_other_folds(trained: dict, tmp_path: Path) -> None:
    first = trained["ckpt"]
    splits = {"train": [1, 3, 4, 5], "val": [2], "test": [2]}
    other = _perturbed_copy(first, tmp_path / "fold2.ckpt", fold=2, splits=splits)
    ensemble = tmp_path / "ensemble.ckpt"
    proc = run_command(["-m", "esc50_lightning.pack", first, other, ensemble], env=trained["env"])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{other}: its data fold differs from {first}'s" in proc.stderr
    assert not ensemble.exists() and not list(tmp_path.glob(".ensemble*"))


# ---- predict ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def predicted(trained: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One predict call over real clips in the shapes users bring, plus a broken file."""
    folder = tmp_path_factory.mktemp("user_audio")
    first, *others = trained["clips"]
    samples, rate = sf.read(first, dtype="float32")
    assert rate == SR
    at_48k = AF.resample(torch.from_numpy(samples), SR, 48000).numpy()
    sf.write(folder / "stereo_48k.wav", np.stack([at_48k, 0.5 * at_48k], axis=1), 48000)
    sf.write(folder / "one_second.flac", samples[:SR], SR)
    sf.write(folder / "clip.ogg", samples, SR, format="OGG", subtype="VORBIS")
    long = np.concatenate([sf.read(f, dtype="float32")[0] for f in trained["clips"][:6]])
    sf.write(folder / "thirty_seconds.wav", long, SR, subtype="FLOAT")  # samples kept exactly
    (folder / "broken.wav").write_bytes(b"RIFF" + os.urandom(200))
    out = folder / "predictions.json"
    args = ["-m", "esc50_lightning.predict", "--ckpt", str(trained["ckpt"]), "--top-k", "50", "--per-window"]
    proc = run_command([*args, "--json", out, folder, first, others[0]], env=trained["env"])
    results = json.loads(out.read_text())
    return {
        "proc": proc,
        "payload": results,
        "by_name": {Path(r["file"]).name: r for r in results["results"]},
        "first": first,
        "other": others[0],
    }


def _probs(result: dict) -> np.ndarray:
    out = np.zeros(50)
    for item in result["top"]:
        out[item["index"]] = item["probability"]
    return out


def test_predict_reports_a_broken_file_and_predicts_the_rest(predicted: dict) -> None:
    proc = predicted["proc"]
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.wav: not a readable audio file" in errors[0]
    assert "Traceback" not in proc.stderr
    assert set(predicted["by_name"]) == {
        "stereo_48k.wav",
        "one_second.flac",
        "clip.ogg",
        "thirty_seconds.wav",
        predicted["first"].name,
        predicted["other"].name,
    }
    assert [e["file"].endswith("broken.wav") for e in predicted["payload"]["errors"]] == [True]


def test_predict_matches_the_training_pipeline_on_a_real_clip(predicted: dict, trained: dict) -> None:
    result = predicted["by_name"][predicted["first"].name]
    row = trained["predictions"].set_index("file").loc[predicted["first"].name]
    assert result["top"][0]["class"] == row.prediction_name
    assert result["top"][0]["probability"] == pytest.approx(row.confidence, abs=1e-3)
    assert abs(_probs(result).sum() - 1) < 1e-4


def test_predict_converts_rate_channels_and_codec(predicted: dict) -> None:
    original = _probs(predicted["by_name"][predicted["first"].name])
    unrelated = _probs(predicted["by_name"][predicted["other"].name])
    for name, rate, channels in (("stereo_48k.wav", 48000, 2), ("clip.ogg", SR, 1)):
        result = predicted["by_name"][name]
        assert (result["source_sample_rate"], result["source_channels"]) == (rate, channels)
        assert result["duration_seconds"] == pytest.approx(5.0, abs=1e-3) and result["windows"] == 1
        # Same sound, other container: much closer to the original's scores than another clip's.
        assert np.abs(_probs(result) - original).sum() < 0.25 * np.abs(unrelated - original).sum()


def test_predict_pads_short_and_windows_long_files(predicted: dict, trained: dict) -> None:
    short = predicted["by_name"]["one_second.flac"]
    assert short["duration_seconds"] == pytest.approx(1.0) and short["windows"] == 1
    module, _ = load_classifier(trained["ckpt"])
    padded = fit_length(read_mono(predicted["first"], SR).samples[:SR], CLIP)
    with torch.inference_mode():
        expected = torch.softmax(module(module.features(torch.from_numpy(padded)[None])), 1)[0].numpy()
    assert _probs(short) == pytest.approx(expected, abs=1e-5)

    long = predicted["by_name"]["thirty_seconds.wav"]
    assert long["duration_seconds"] == pytest.approx(30.0) and long["windows"] == 11  # hop 2.5 s
    windows = long["per_window"]
    assert [w["start_seconds"] for w in windows] == pytest.approx([2.5 * i for i in range(11)])
    window_probs = np.stack([_probs(w) for w in windows])
    assert _probs(long) == pytest.approx(window_probs.mean(axis=0), abs=1e-5)
    # The first window is exactly the first real clip.
    assert window_probs[0] == pytest.approx(_probs(predicted["by_name"][predicted["first"].name]), abs=1e-5)


def test_predict_without_a_checkpoint_says_to_pass_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(predict, "PRETRAINED", tmp_path / "absent.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert "pass --ckpt PATH" in capsys.readouterr().err


# ---- export -------------------------------------------------------------------------------------
def test_exported_models_equal_the_checkpoint_on_real_clips(trained: dict, tmp_path: Path) -> None:
    args = ["-m", "esc50_lightning.export", "--ckpt", str(trained["ckpt"]), "--out", str(tmp_path)]
    proc = run_command(args, env=trained["env"])
    assert proc.returncode == 0, proc.stderr
    sidecar = json.loads((tmp_path / "last.json").read_text())
    module, info = load_classifier(trained["ckpt"])
    assert sidecar["class_names"] == info["data"]["class_names"]
    assert (sidecar["sample_rate"], sidecar["input_samples"]) == (SR, CLIP)

    waves = torch.from_numpy(np.stack([read_mono(p, SR).samples for p in trained["clips"][:4]]))
    with torch.inference_mode():
        expected = module(module.features(waves)).numpy()
        scripted = torch.jit.load(str(tmp_path / "last.torchscript.pt"))
        assert scripted(waves).numpy() == pytest.approx(expected, abs=1e-4)
        with pytest.raises(torch.jit.Error, match="expected waveforms of shape"):
            scripted(waves[:, : SR * 2])
    session = onnxruntime.InferenceSession(str(tmp_path / "last.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"waveform": waves.numpy()})
    assert logits == pytest.approx(expected, abs=1e-4)
    assert expected.std() > 0  # the clips get different scores: the comparison is not trivial
