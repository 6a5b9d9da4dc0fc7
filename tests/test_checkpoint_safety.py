"""Checkpoints are untrusted files: a malformed one gets one line naming it and what is wrong, and every
kind the project writes loads weights-only (the attacks: test_checkpoint_attacks.py)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from helpers import REPO, command_env, run_command, run_dirs

from esc50_lightning.factory import load_classifier
from esc50_lightning.tasks.pack import ensemble_checkpoint, slim_checkpoint

SHIPPED = REPO / "src" / "esc50_lightning" / "pretrained" / "esc50_fold1.ckpt"


def _malformed(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    cases: dict[str, tuple[dict, str]] = {}
    record = copy.deepcopy(good)
    record["esc50"] = "a string"
    cases["record not a mapping"] = (record, "run record is not a mapping")
    names = copy.deepcopy(good)
    names["esc50"]["data"]["class_names"] = 3
    cases["class names not a list"] = (names, "no list of class names")
    old = copy.deepcopy(good)
    old["esc50"] = {"config": {"model": {"net": {"_target_": "esc50_lightning.models.VGG8"}}}}
    cases["a 1.0 record naming code"] = (old, "from esc50-lightning 1.0 or older")
    unknown = copy.deepcopy(good)
    unknown["esc50"]["net"]["class"] = "vgg9"
    cases["a model this version lacks"] = (
        unknown,
        "names model 'vgg9', which this esc50-lightning does not have",
    )
    shapes = copy.deepcopy(good)
    first = next(k for k, v in shapes["state_dict"].items() if v.ndim == 4)
    shapes["state_dict"][first] = torch.zeros(3, 3)
    cases["weights of the wrong shape"] = (shapes, "weights do not fit")
    state = copy.deepcopy(good)
    state["state_dict"] = {"net.x": "not a tensor"}
    cases["state dict of strings"] = (state, "'state_dict' is not names to tensors")
    settings = copy.deepcopy(good)
    settings["esc50"]["net"]["kwargs"]["depth"] = 9
    cases["settings the class refuses"] = (settings, "its vgg8 settings do not build")
    out = {}
    for n, (ckpt, expected) in enumerate(cases.items()):
        path = tmp_path / f"bad{n}.ckpt"
        torch.save(expected[0], path)
        out[ckpt] = (path, expected[1])
    (tmp_path / "truncated.ckpt").write_bytes(SHIPPED.read_bytes()[:5000])
    out["truncated file"] = (tmp_path / "truncated.ckpt", "not a readable checkpoint")
    (tmp_path / "folder.ckpt").mkdir()
    out["a folder"] = (tmp_path / "folder.ckpt", "is a folder, not a checkpoint file")
    os.mkfifo(tmp_path / "fifo.ckpt")
    out["a FIFO"] = (tmp_path / "fifo.ckpt", "not a regular file")
    (tmp_path / "loop.ckpt").symlink_to(tmp_path / "loop.ckpt")
    out["a symlink loop"] = (tmp_path / "loop.ckpt", "a symbolic link that loops")
    return out


def test_malformed_checkpoints_get_one_line_naming_the_problem(tmp_path):
    for case, (path, expected) in _malformed(tmp_path).items():
        with pytest.raises(Exception) as caught:
            load_classifier(path)
        assert caught.type.__name__ == "UserError", (case, caught.value)
        message = str(caught.value)
        assert str(path) in message and expected in message and "\n" not in message, (case, message)


def test_a_malformed_checkpoint_through_predict_is_one_line_and_exit_2(esc50_root, cache_dir, tmp_path):
    path, expected = _malformed(tmp_path)["weights of the wrong shape"]
    clip = next((esc50_root / "audio").glob("1-*.wav"))
    env = command_env(esc50_root, tmp_path, cache=cache_dir)
    proc = run_command(["-m", "esc50_lightning.predict", "--ckpt", str(path), str(clip)], env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {path}: {proc.stderr.split(f'{path}: ', 1)[1].strip()}"
    ]
    assert expected in proc.stderr


def test_every_kind_of_checkpoint_the_project_writes_loads_weights_only(
    holdout_run, esc50_root, cache_dir, tmp_path
):
    """Full (best), last, slim and ensemble checkpoints hold tensors and plain values only, and a run
    resumes from a full checkpoint through Lightning's own loader with weights_only=True."""
    ckpts = sorted((holdout_run / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in ckpts} >= {"last.ckpt"} and len(ckpts) == 2  # last and the best
    slim = slim_checkpoint(ckpts[0], tmp_path / "slim.ckpt")
    ensemble = ensemble_checkpoint([ckpts[0], ckpts[1]], tmp_path / "ens.ckpt")
    for path in (*ckpts, slim, ensemble, SHIPPED):
        raw = torch.load(path, map_location="cpu", weights_only=True)  # raises on any pickled object
        assert raw["esc50"]["format"] == 2 and "config" not in raw["esc50"]
        module, info = load_classifier(path)
        assert len(info["data"]["class_names"]) == 50 and not module.training

    # resume: a copy outside the run folder continues in a new run folder, one epoch more
    resumed_from = tmp_path / "from" / "last.ckpt"
    resumed_from.parent.mkdir()
    resumed_from.write_bytes((holdout_run / "checkpoints" / "last.ckpt").read_bytes())
    env = command_env(esc50_root, tmp_path, cache=cache_dir)
    overrides = ["data.protocol=holdout", "data.fold=2", "model=cnn4", "+trainer.limit_train_batches=2"]
    proc = run_command(
        ["train.py", "debug=tiny", *overrides, "trainer.max_epochs=3", f"ckpt_path={resumed_from}"], env=env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = run_dirs(tmp_path / "outputs")
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 2  # Lightning counts from 0: the third epoch
    assert os.path.getsize(run / "metrics.json") > 0
