"""Every ``python ...`` command in README's code blocks runs, in a quick form, so README and code
cannot drift: ``train.py`` and ``eval.py`` commands compose their config with Hydra (an unknown
recipe, option or key fails; sweeps take the first value of each swept key), ``python train.py
debug=tiny`` trains for real, ``predict``, ``export``, ``pack`` and ``report`` run for real on the
shipped model, a real clip and the tiny run, and any other ``python -m esc50_lightning.<command>``
must exist and know the flags README gives it."""

from __future__ import annotations

import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest
from helpers import REPO, command_env, run_command, run_dirs
from helpers.paths import CONF_DIR
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

README = REPO / "README.md"
SHIPPED = REPO / "src" / "esc50_lightning" / "pretrained" / "esc50_fold1.ckpt"
SKIP = ("python -m venv", "python -m pip", "python -m pytest")
RUN_FOR_REAL = {"predict", "export", "pack", "report"}  # seconds each on the shipped model


def readme_commands(text: str) -> list[str]:
    """The ``python ...`` lines of the fenced code blocks, ``\\`` continuations joined, comments
    dropped."""
    commands, in_block, line_so_far = [], False, ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("```"):
            in_block, line_so_far = not in_block, ""
            continue
        if not in_block:
            continue
        line = line_so_far + raw.strip()
        if line.endswith("\\"):
            line_so_far = line[:-1] + " "
            continue
        line_so_far = ""
        if line.startswith("python ") and not line.startswith(SKIP):
            commands.append(shlex.join(shlex.split(line, comments=True)))
    return commands


COMMANDS = readme_commands(README.read_text())


def test_readme_shows_commands_and_the_smoke_run():
    assert len(COMMANDS) >= 10, COMMANDS
    assert "python train.py debug=tiny" in COMMANDS


def first_of_each_sweep(overrides: list[str]) -> list[str]:
    """A multirun's overrides with every swept key (``a=1,2``, ``range(1,6)``) at its first value."""
    out = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override():
            value = next(iter(override.sweep_string_iterator()))
            out.append(f"{override.get_key_element()}={value}")
        else:
            out.append(override.input_line)
    return out


@pytest.fixture(scope="module")
def tiny_run(esc50_root: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """README's smoke run, trained for real; its folder stands in for ``<run>``."""
    work = tmp_path_factory.mktemp("readme")
    proc = run_command(["train.py", "debug=tiny"], env=command_env(esc50_root, work, cache=cache_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = run_dirs(work / "outputs")
    return run


def fill(token: str, run: Path) -> str:
    """Placeholders: ``<run>`` is the tiny run, ``<ckpt>`` the shipped model, any other ``<...>``
    (e.g. ``outputs/train/multiruns/<time>``) the folder holding the tiny run."""
    token = token.replace("<run>", str(run)).replace("<ckpt>", str(SHIPPED))
    return str(run.parent) if "<" in token else token


PATH_FLAGS = {"--out", "--json"}
VALUE_FLAGS = PATH_FLAGS | {"--ckpt", "--top-k", "--hop", "--device", "--batch-size", "--eval-crop"}


def module_args(cmd: str, args: list[str], clip: Path, tmp: Path) -> list[str]:
    """README's arguments made runnable here: inputs that do not exist become a real clip (predict)
    or the shipped model (pack), and whatever a command writes goes to ``tmp``."""
    out, positional = [], []
    for j, arg in enumerate(args):
        before = args[j - 1] if j else ""
        if before in PATH_FLAGS:
            arg = str(tmp / Path(arg).name)
        elif not arg.startswith("-") and before not in VALUE_FLAGS:
            positional.append(len(out))
        out.append(arg)
    for k in positional:
        if cmd == "pack" and k == positional[-1]:
            out[k] = str(tmp / Path(out[k]).name)  # the copy it writes, never over a real file
        elif not Path(out[k]).exists():
            out[k] = str(clip) if cmd == "predict" else str(SHIPPED) if cmd == "pack" else out[k]
    if cmd == "export" and "--out" not in args:  # by default it writes beside the checkpoint
        out += ["--out", str(tmp)]
    return out


@pytest.mark.parametrize("line", COMMANDS)
def test_readme_command_runs(line, request, esc50_root, tmp_path, capsys, monkeypatch):
    argv = shlex.split(line)[1:]  # drop "python"
    if argv == ["train.py", "debug=tiny"]:
        request.getfixturevalue("tiny_run")  # trained for real (once, shared with the commands below)
        return
    # a config composes whatever a path names: only the module commands need a real run
    run = request.getfixturevalue("tiny_run") if argv[0] == "-m" else tmp_path / "run"
    argv = [fill(token, run) for token in argv]

    if argv[0] in ("train.py", "eval.py") and "--help" in argv:  # Hydra's help page, for real
        proc = run_command(argv, timeout=120)
        assert proc.returncode == 0 and "python " + argv[0] in proc.stdout, f"{line}\n{proc.stderr}"
        return
    if argv[0] in ("train.py", "eval.py"):
        overrides = [a for a in argv[1:] if a != "-m"]
        if "-m" in argv:
            overrides = first_of_each_sweep(overrides)
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            compose(argv[0].removesuffix(".py"), overrides=overrides, return_hydra_config=True)
        return

    assert argv[0] == "-m" and argv[1].split(".")[0] in ("esc50_lightning", "benchmarks"), line
    module, cmd, args = argv[1], argv[1].split(".", 1)[-1], argv[2:]
    if cmd in RUN_FOR_REAL:
        clip = next((esc50_root / "audio").glob("*.wav"))
        code, out = run_module(module, module_args(cmd, args, clip, tmp_path), capsys, monkeypatch)
        assert code == 0, f"{line}\n{out}"
        return
    code, out = run_module(module, ["--help"], capsys, monkeypatch)
    assert code == 0, f"{module} --help failed:\n{out}"
    for flag in re.findall(r"(?<!\S)(--[\w-]+)", " ".join(args)):
        assert flag in out, f"{line}: {module} has no {flag}"


def run_module(module: str, args: list[str], capsys, monkeypatch) -> tuple[int, str]:
    """``python -m module args...`` in this process (the imports are paid once for all commands):
    its exit status and output."""
    monkeypatch.setattr(sys, "argv", [module, *args])
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out + captured.err
