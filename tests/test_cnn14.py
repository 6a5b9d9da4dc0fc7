"""model=cnn14: the same numbers as PANNs' own CNN14 (panns_inference + torchlibrosa) for the same
weights and waveform; the published checkpoint format; fine-tuning end to end on real clips."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from helpers.paths import CONF_DIR
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from esc50_lightning.errors import UserError
from esc50_lightning.factory import build_features, build_module
from esc50_lightning.features.logmel import panns_filterbank
from esc50_lightning.models import Cnn14
from esc50_lightning.models import cnn14 as cnn14_module
from esc50_lightning.training.finetune import FreezeBackbone, set_backbone_frozen

SR = 32000


def _config(*overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=["experiment=cnn14_finetune", *overrides])


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    """``panns_inference.models.Cnn14`` with random weights and random batch-norm statistics.

    Importing panns_inference reads (or downloads) ~/panns_data/class_labels_indices.csv: HOME
    points at a folder holding a stand-in with the right header and 527 rows first.
    """
    home = tmp_path_factory.mktemp("home")
    (home / "panns_data").mkdir()
    rows = "".join(f"{i},/m/{i:05d},tag {i}\n" for i in range(527))
    (home / "panns_data" / "class_labels_indices.csv").write_text("index,mid,display_name\n" + rows)
    old_home = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        from panns_inference.models import Cnn14 as PannsCnn14
    finally:
        if old_home is None:
            del os.environ["HOME"]
        else:
            os.environ["HOME"] = old_home
    torch.manual_seed(0)
    ref = PannsCnn14(
        sample_rate=SR, window_size=1024, hop_size=320, mel_bins=64, fmin=50, fmax=14000, classes_num=527
    )
    with torch.no_grad():
        for module in ref.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-1.0, 1.0)
                module.running_var.uniform_(0.5, 2.0)
        # bn0 sees dB values: statistics of that order, so the network sees inputs near unit scale.
        ref.bn0.running_mean.uniform_(-60.0, -20.0)
        ref.bn0.running_var.uniform_(100.0, 400.0)
        ref.fc_audioset.bias.uniform_(-1.0, 1.0)
    ref.eval()
    path = tmp_path_factory.mktemp("ckpt") / "Cnn14_random.pth"
    torch.save({"model": ref.state_dict(), "iteration": 0}, path)  # the published format
    return ref, path


def _waveforms(n: int = 2, seconds: float = 5.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    t = torch.arange(int(SR * seconds)) / SR
    tone = 0.3 * torch.sin(2 * torch.pi * 440.0 * t) * torch.linspace(0, 1, t.numel())
    noise = 0.1 * torch.randn(n, t.numel(), generator=g)
    return (noise + tone).clamp(-1, 1)


def test_frontend_filterbank_is_librosas() -> None:
    """torchaudio's slaney filterbank is librosa's (torchlibrosa's melW) to float precision."""
    import librosa

    theirs = torch.from_numpy(librosa.filters.mel(sr=SR, n_fft=1024, n_mels=64, fmin=50, fmax=14000).T)
    ours = panns_filterbank()
    assert (ours - theirs.float()).abs().max().item() < 1e-7


def test_same_embedding_and_tags_as_panns(reference) -> None:
    ref, path = reference
    cfg = _config(f"model.net.weights={path}", "model.net.keep_audioset_head=true")
    features = build_features(cfg).eval()
    net = instantiate(cfg.model.net, num_classes=50).eval()
    assert net.head.out_features == 527
    wave = _waveforms()
    with torch.no_grad():
        expected = ref(wave)
        x = features(wave)
        assert x.shape == (2, 1, 64, 501)
        # The log-mel itself, against torchlibrosa's (batch, 1, frames, mels).
        their_mel = ref.logmel_extractor(ref.spectrogram_extractor(wave))
        mel_diff = (x.transpose(2, 3) - their_mel).abs().max().item()
        embedding = net.embedding(x)
        tags = torch.sigmoid(net(x))
    emb_diff = (embedding - expected["embedding"]).abs().max().item()
    tag_diff = (tags - expected["clipwise_output"]).abs().max().item()
    print(f"max |diff|: log-mel {mel_diff:.2e} dB, embedding {emb_diff:.2e}, tags {tag_diff:.2e}")
    assert mel_diff < 1e-3  # dB values of order 10-50: float32 rounding of two FFT implementations
    assert emb_diff < 1e-4 and tag_diff < 1e-4
    assert embedding.abs().max() > 1e-2  # not a vacuous comparison of zeros


def test_new_head_keeps_backbone(reference) -> None:
    ref, path = reference
    net = Cnn14(num_classes=50, weights=str(path)).eval()
    assert net.head.out_features == 50
    x = torch.randn(1, 1, 64, 101)
    state = ref.state_dict()
    assert torch.equal(net.embed.weight, state["fc1.weight"])
    assert torch.equal(net.input_norm.bn.running_var, state["bn0.running_var"])
    assert torch.equal(net.blocks[5].bn2.running_mean, state["conv_block6.bn2.running_mean"])
    assert net(x).shape == (1, 50)


def test_published_weights_need_their_frontend(reference) -> None:
    _, path = reference
    cfg = _config(f"model.net.weights={path}", "data.dataset.sample_rate=44100")
    with pytest.raises(UserError, match=r"needs PANNs' frontend at 32 kHz: features=logmel_panns"):
        build_module(cfg, [f"c{i}" for i in range(50)])


def test_not_a_cnn14_checkpoint(tmp_path: Path, reference) -> None:
    _, path = reference
    state = torch.load(path, weights_only=True)["model"]
    partial = {k: v for k, v in state.items() if not k.startswith("conv_block6")}
    torch.save({"model": partial}, tmp_path / "partial.pth")
    with pytest.raises(UserError, match=r"missing \(conv_block6\.conv1\.weight"):
        Cnn14(weights=str(tmp_path / "partial.pth"))
    other = dict(state, **{"fc1.weight": torch.zeros(10, 2048)})
    torch.save({"model": other}, tmp_path / "other.pth")
    with pytest.raises(UserError, match=r"mismatched weights \(fc1\.weight \(10, 2048\)"):
        Cnn14(weights=str(tmp_path / "other.pth"))
    torch.save(state, tmp_path / "bare.pth")  # a state dict without the "model" entry
    with pytest.raises(UserError, match="no 'model' entry"):
        Cnn14(weights=str(tmp_path / "bare.pth"))
    # Training state saved next to the weights as numpy data loads (weights-only); code does not.
    import numpy as np

    sampler = {"indexes": np.arange(5), "random_state": np.random.RandomState(0).get_state()}
    torch.save({"model": state, "sampler": sampler, "iteration": np.int64(3)}, tmp_path / "numpy.pth")
    assert Cnn14(weights=str(tmp_path / "numpy.pth")).embed.weight.equal(state["fc1.weight"])
    torch.save({"model": state, "hook": os.getcwd}, tmp_path / "code.pth")
    with pytest.raises(
        UserError, match=r"refused, it holds Python objects that could run code \(GLOBAL posix\.getcwd"
    ):
        Cnn14(weights=str(tmp_path / "code.pth"))
    with pytest.raises(UserError, match=r"weights not found; download Cnn14_mAP=0\.431\.pth"):
        Cnn14(weights=str(tmp_path / "absent.pth"))


def test_download(tmp_path: Path, reference, monkeypatch: pytest.MonkeyPatch) -> None:
    """``weights=download``: a file:// URL stands in for Zenodo; size and sha256 are checked."""
    _, path = reference
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    cache = tmp_path / "pretrained"
    net = Cnn14(weights="download", cache_dir=str(cache), url=path.as_uri(), sha256=digest, size=len(data))
    assert (cache / "Cnn14_mAP=0.431.pth").read_bytes() == data
    assert net.head.out_features == 50
    assert net.embed.weight.equal(torch.load(path, weights_only=True)["model"]["fc1.weight"])
    assert [p.name for p in cache.iterdir()] == ["Cnn14_mAP=0.431.pth"]  # no partial file left
    # A second build reads the cached file: no download at all.
    monkeypatch.setattr(torch.hub, "download_url_to_file", _fail)
    reused = cnn14_module.download_checkpoint(cache, sha256=digest, size=len(data))
    assert reused == cache / "Cnn14_mAP=0.431.pth"
    monkeypatch.undo()

    with pytest.raises(UserError, match=r"sha256 [0-9a-f]{64}, expected 00"):
        cnn14_module.download_checkpoint(tmp_path / "b", url=path.as_uri(), sha256="00" * 32, size=len(data))
    assert not list((tmp_path / "b").iterdir())
    page = tmp_path / "page.html"  # an error page where the file should be
    page.write_text("<html>")
    with pytest.raises(UserError, match=r"only 6 bytes, expected at least 300000000"):
        cnn14_module.download_checkpoint(tmp_path / "c", url=page.as_uri())
    assert not list((tmp_path / "c").iterdir())
    offline = r"cannot download CNN14 weights from .*save it as .*Cnn14_mAP=0\.431\.pth"
    with pytest.raises(UserError, match=offline):
        cnn14_module.download_checkpoint(tmp_path / "d", url=(tmp_path / "absent.pth").as_uri())
    # With no cache_dir the file goes to the one cache folder's pretrained/ ($ESC50_CACHE).
    monkeypatch.setenv("ESC50_CACHE", str(tmp_path / "env-cache"))
    got = cnn14_module.download_checkpoint(url=path.as_uri(), sha256=digest)
    assert got == tmp_path / "env-cache" / "pretrained" / "Cnn14_mAP=0.431.pth"


def _fail(*args, **kwargs):
    raise OSError("network unreachable")


def test_freeze_moves_only_the_head(reference) -> None:
    """Backbone frozen: one optimiser step moves the head alone (and no batch-norm statistics);
    unfrozen: every parameter moves. The backbone trains at backbone_lr_scale of the head's rate."""
    _, path = reference
    cfg = _config(f"model.net.weights={path}", "augmentation=none", "optim.scheduler=null")
    module = build_module(cfg, [f"c{i}" for i in range(50)])
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    head_lr, backbone_lr = (g["lr"] for g in optimizer.param_groups)
    assert backbone_lr == pytest.approx(0.1 * head_lr)
    freeze = FreezeBackbone(epochs=1)
    batch = {"x": torch.randn(4, 1, 64, 64), "y": torch.tensor([0, 1, 2, 3])}

    def step(epoch_index: int) -> tuple[set[str], bool]:
        module.train()
        set_backbone_frozen(module.net, freeze.frozen_at(epoch_index))
        before = copy.deepcopy(module.net.state_dict())
        optimizer.zero_grad()
        module.training_step(batch, 0).backward()
        optimizer.step()
        after = module.net.state_dict()
        names = {n for n, _ in module.net.named_parameters()}
        moved = {n for n in names if not torch.equal(before[n], after[n])}
        stats = "input_norm.bn.running_mean"
        stats_moved = not torch.equal(before[stats], after[stats])
        return moved, stats_moved

    moved, stats_moved = step(0)
    assert moved == {"head.weight", "head.bias"} and not stats_moved
    moved, stats_moved = step(1)
    assert moved == {n for n, _ in module.net.named_parameters()} and stats_moved


def test_finetune_trains_on_real_clips(run_train, reference, tmp_path: Path, esc50_root, capsys) -> None:
    """The recipe end to end from a checkpoint in the published format: 32 kHz clips, frozen
    backbone in epoch 1, unfrozen in epoch 2; the checkpoint it writes reloads, exports, evaluates
    with eval.py and predicts. The clips are cut to their first second: the mechanics are those of
    5-s clips at a fifth of CNN14's compute (eval.py scores 50 clips in float32)."""
    _, path = reference
    proc = run_train(
        "experiment=cnn14_finetune",
        f"model.net.weights={path}",
        "data.dataset.clip_seconds=1.0",
        "trainer.max_epochs=2",
        "callbacks.freeze_backbone.epochs=1",
        "+trainer.limit_train_batches=1",
        "+trainer.limit_val_batches=1",
        "data.batch_size=4",
        "data.eval_batch_size=8",
    )
    out = proc.stdout + proc.stderr
    assert "epoch 2/2" in out, out[-3000:]
    ckpts = list(tmp_path.rglob("last.ckpt"))
    assert len(ckpts) == 1
    from esc50_lightning.factory import load_classifier

    module, info = load_classifier(ckpts[0])  # rebuilt without the published file
    assert info["data"]["sample_rate"] == SR
    assert isinstance(module.net, Cnn14) and module.net.head.out_features == 50
    # Export: the frontend inside, 32 kHz waveforms in, the checkpoint's own logits out.
    from esc50_lightning.commands.export import export

    written = export(ckpts[0], tmp_path / "export", onnx=False)
    scripted = torch.jit.load(str(written["torchscript"]))
    wave = _waveforms(2, 1.0)
    with torch.no_grad():
        diff = (scripted(wave) - module(module.features(wave))).abs().max().item()
    assert diff < 1e-4, diff
    meta = (tmp_path / "export" / "last.json").read_text()
    assert '"sample_rate": 32000' in meta and '"input_samples": 32000' in meta

    # eval.py scores the fine-tuned checkpoint once on real fold-1 clips (resampled to 32 kHz) ...
    shown = run_train(f"ckpt_path={ckpts[0]}", "data.limit_per_class=1", script="eval.py", tiny=False).stdout
    (scored,) = [p.parent for p in (tmp_path / "outputs" / "eval").rglob("metrics.json")]
    metrics = json.loads((scored / "metrics.json").read_text())
    assert metrics["clips"] == 50 and 0.0 <= metrics["test"]["acc"] <= 1.0 and "epoch 2" in shown
    # ... and predict names ESC-50 classes for a real 44.1 kHz file
    from esc50_lightning.commands import predict

    wav = next((esc50_root / "audio").glob("1-*.wav"))
    with pytest.raises(SystemExit) as done:
        predict.main(["--ckpt", str(ckpts[0]), "--top-k", "3", str(wav)])
    assert done.value.code in (0, None)
    printed = capsys.readouterr().out
    assert sum(name in printed for name in info["data"]["class_names"]) >= 3


def test_predict_tags_audioset_with_the_published_file(
    reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """predict --ckpt <PANNs checkpoint>: AudioSet's label names and sigmoid scores; without the
    label file, one line saying where it goes."""
    import numpy as np
    import soundfile as sf

    from esc50_lightning import audioset
    from esc50_lightning.commands import predict

    _, path = reference
    wav = tmp_path / "clip.wav"
    sf.write(wav, _waveforms(1, 3.0)[0].numpy(), 44100)  # any rate: resampled to 32 kHz
    with pytest.raises(SystemExit) as exit_info:
        monkeypatch.setattr(audioset, "LABELS", tmp_path / "absent.csv")
        predict.main(["--ckpt", str(path), str(wav)])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "AudioSet's label names are not installed; save http" in err and "absent.csv" in err

    labels = tmp_path / "audioset_labels.csv"
    labels.write_text("index,mid,display_name\n" + "".join(f'{i},/m/{i},"Tag {i}, AS"\n' for i in range(527)))
    monkeypatch.setattr(audioset, "LABELS", labels)
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--ckpt", str(path), "--json", "-", str(wav)])
    assert exit_info.value.code == 0
    result = __import__("json").loads(capsys.readouterr().out)["results"][0]
    assert result["windows"] == 1 and result["source_sample_rate"] == 44100
    top = result["top"]
    assert all(t["class"] == f"Tag {t['index']}, AS" for t in top)
    # Sigmoid scores, as PANNs' clipwise_output: independent, so they need not sum to one.
    module, _ = audioset.audioset_tagger(path, labels)
    clip = predict.read_mono(wav, 32000).samples
    with torch.no_grad():
        x = torch.from_numpy(predict.fit_length(clip, 320000))[None]
        expected = torch.sigmoid(module(module.features(x)))[0].numpy()
    assert np.allclose([t["probability"] for t in top], expected[[t["index"] for t in top]], atol=1e-5)


def test_bench_measures_cnn14_on_its_own_frontend(esc50_root: Path, tmp_path: Path) -> None:
    """``bench --models cnn14``: its config is the recipe's (32 kHz, PANNs' frontend), random weights."""
    from benchmarks.pipeline import bench_config, build_parser

    args = build_parser().parse_args(["--models", "cnn14", "--root", str(esc50_root)])
    cfg = bench_config(args, tmp_path, model="cnn14")
    assert cfg.model.net._target_ == "esc50_lightning.models.Cnn14" and cfg.model.net.weights is None
    assert cfg.data.dataset.sample_rate == SR and cfg.features.logmel.mel_scale == "slaney"


def test_the_shipped_audioset_label_list_is_the_527_names_in_output_order() -> None:
    from esc50_lightning import audioset

    names = audioset.audioset_labels()
    assert len(names) == 527 and len(set(names)) == 527
    assert (names[0], names[74], names[137]) == ("Speech", "Dog", "Music")
