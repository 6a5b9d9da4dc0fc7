"""A checkpoint is data, never code: files edited as an attacker would (still loadable with
``weights_only``) are refused in one line by every command, and nothing is written, deleted,
fetched or printed from them. A resume never acts on the paths a checkpoint stores."""

from __future__ import annotations

import copy
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers import REPO, command_env, run_command, run_dirs

SHIPPED = REPO / "src" / "esc50_lightning" / "pretrained" / "esc50_fold1.ckpt"
SECRET = "s3cr3t-value-from-the-environment"


class _Payload:
    """Unpickling this calls ``Path.touch(marker)``: proof that a loader ran the file's code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _variants(tmp_path: Path) -> dict[str, Path]:
    """Every kind of attack the project has seen, each hidden in an otherwise valid checkpoint."""
    good = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    marker = tmp_path / "marker"

    def edit(change) -> dict:
        ckpt = copy.deepcopy(good)
        change(ckpt)
        return ckpt

    def nan_weight(ckpt: dict) -> None:
        key = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point() and v.ndim == 4)
        ckpt["state_dict"][key] = ckpt["state_dict"][key].clone().fill_(math.nan)

    variants = {
        "a pickled object that runs code": edit(lambda c: c["esc50"].update(note=_Payload(marker))),
        "a name of code in the settings": edit(
            lambda c: c["esc50"]["net"]["kwargs"].update(
                init={"_target_": "pathlib.Path.touch", "self": str(marker)}
            )
        ),
        "a dotted path through a module of ours": edit(
            lambda c: c["esc50"]["net"].update({"class": "esc50_lightning.registry.os:system"})
        ),
        "a class of an untrusted module": edit(lambda c: c["esc50"]["net"].update({"class": "os:system"})),
        "an environment interpolation": edit(
            lambda c: c["esc50"]["data"]["class_names"].__setitem__(0, "${oc.env:ESC50_TEST_SECRET}")
        ),
        "oc.create in the history": edit(
            lambda c: c["esc50"]["history"][0].update(note="${oc.create:{_target_:pathlib.Path.touch}}")
        ),
        "an interpolation in callback state": edit(
            lambda c: c.update(callbacks={"ModelCheckpoint{}": {"dirpath": "${oc.env:ESC50_TEST_SECRET}"}})
        ),
        "a data folder and a download address": edit(
            lambda c: c["esc50"]["data"].update(
                root=str(tmp_path / "elsewhere"), download_url="http://127.0.0.1:9/x.zip"
            )
        ),
        "control characters in a class name": edit(
            lambda c: c["esc50"]["data"]["class_names"].__setitem__(0, "\x1b]0;owned\x07\x1b[31mdog")
        ),
        "NaN weights": edit(nan_weight),
        "a weight source for the network": edit(
            lambda c: c["esc50"].update(
                net={"class": "cnn14", "kwargs": {"weights": "download", "url": "http://127.0.0.1:9/w.pth"}}
            )
        ),
    }
    paths = {}
    for n, (name, ckpt) in enumerate(variants.items()):
        paths[name] = tmp_path / "files" / f"attack{n}.ckpt"
        paths[name].parent.mkdir(exist_ok=True)
        torch.save(ckpt, paths[name])
    return paths


def _commands(ckpt: Path, clip: Path, out: Path) -> dict[str, list[str]]:
    return {
        "predict": [
            "-m",
            "esc50_lightning.predict",
            "--ckpt",
            str(ckpt),
            "--json",
            str(out / "p.json"),
            str(clip),
        ],
        "eval.py": ["eval.py", f"ckpt_path={ckpt}", "data.limit_per_class=1"],
        "export": ["-m", "esc50_lightning.export", "--ckpt", str(ckpt), "--out", str(out / "export")],
        "pack": ["-m", "esc50_lightning.pack", str(ckpt), str(out / "slim.ckpt")],
        "pack ensemble": ["-m", "esc50_lightning.pack", str(SHIPPED), str(ckpt), str(out / "ens.ckpt")],
        "resume": ["train.py", "debug=tiny", f"ckpt_path={ckpt}"],
    }


@pytest.mark.parametrize("command", ["predict", "eval.py", "export", "pack", "pack ensemble", "resume"])
def test_every_attack_is_refused_in_one_line_by_every_command(command, esc50_root, cache_dir, tmp_path):
    clip = next((esc50_root / "audio").glob("1-*.wav"))
    env = {**command_env(esc50_root, tmp_path, cache=cache_dir), "ESC50_TEST_SECRET": SECRET}
    for name, path in _variants(tmp_path).items():
        out = tmp_path / "out" / path.stem
        out.mkdir(parents=True)
        proc = run_command(_commands(path, clip, out)[command], env=env)
        shown = proc.stdout + proc.stderr
        assert proc.returncode == 2, (name, shown)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and str(path) in errors[0], (name, proc.stderr)
        assert len(errors[0]) < len(str(path)) + 200, (name, errors[0])
        assert "Traceback" not in shown and SECRET not in shown and "\x1b]" not in shown, (name, shown)
        assert not (tmp_path / "marker").exists(), name
        assert not any(out.rglob("*")), (name, "nothing may be written")
        assert not run_dirs(tmp_path / "outputs"), (name, "no run folder is left behind")


def test_a_network_of_a_trusted_module_needs_the_setting(esc50_root, cache_dir, tmp_path):
    """A user's own network is named ``module:Class`` in the record: refused, naming the module
    and the setting, until the user lists the module in ESC50_TRUSTED_MODULES."""
    module = tmp_path / "mods" / "my_nets.py"
    module.parent.mkdir()
    module.write_text("from esc50_lightning.models import VGG8\n\n\nclass MyNet(VGG8):\n    pass\n")
    ckpt = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    ckpt["esc50"]["net"]["class"] = "my_nets:MyNet"
    path = tmp_path / "mine.ckpt"
    torch.save(ckpt, path)
    clip = esc50_root / "audio" / "1-100032-A-0.wav"  # a dog
    env = {
        **command_env(esc50_root, tmp_path, cache=cache_dir),
        "PYTHONPATH": os.pathsep.join([str(module.parent), os.environ.get("PYTHONPATH", "")]),
    }
    predict = ["-m", "esc50_lightning.predict", "--ckpt", str(path), str(clip)]
    refused = run_command(predict, env=env)
    assert refused.returncode == 2
    assert "module my_nets" in refused.stderr and "ESC50_TRUSTED_MODULES=my_nets" in refused.stderr
    trusted = run_command(predict, env={**env, "ESC50_TRUSTED_MODULES": "my_nets"})
    assert trusted.returncode == 0, trusted.stderr
    assert (
        "dog" in trusted.stdout
    )  # the shipped weights, rebuilt in the user's class, label clip 1-100032-A-0


def test_a_resume_never_acts_on_the_paths_its_checkpoint_stores(holdout_run, esc50_root, cache_dir, tmp_path):
    """The checkpoint callback's stored paths name a file outside the run: the resumed run keeps
    its own checkpoints, and the outside file, which Lightning would have deleted, stays."""
    run = tmp_path / "run"
    shutil.copytree(holdout_run, run, ignore=shutil.ignore_patterns("metrics.json"))
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    keys = [k for k in ckpt["callbacks"] if k.startswith("ModelCheckpoint")]
    assert keys
    for key in keys:
        ckpt["callbacks"][key].update(
            best_model_path=str(victim),
            last_model_path=str(victim),
            kth_best_model_path=str(victim),
            best_k_models={str(victim): torch.tensor(99.0)},  # worst score: the first to be removed
            dirpath=str(run / "checkpoints"),  # as the run will have it: Lightning then trusts the rest
        )
    torch.save(ckpt, last)
    env = command_env(esc50_root, tmp_path, cache=cache_dir)
    overrides = ["data.protocol=holdout", "data.fold=2", "model=cnn4", "+trainer.limit_train_batches=2"]
    proc = run_command(
        ["train.py", "debug=tiny", *overrides, "trainer.max_epochs=3", f"ckpt_path={last}"], env=env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert victim.read_text() == "keep me"
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    assert resumed["epoch"] == 2  # the third epoch, written in the run's own folder
    for key in keys:
        stored = resumed["callbacks"][key]
        for path in (stored["best_model_path"], stored["last_model_path"], *stored["best_k_models"]):
            assert not path or Path(path).parent == run / "checkpoints", (key, path)
