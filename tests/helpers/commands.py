"""The one runner for repository commands: ``python train.py``, ``python eval.py``,
``python -m esc50_lightning.<cmd>`` (and ``python -c CODE``), run from the repository root,
without Python's start-up where it can (helpers/warm.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from helpers.warm import REPO, WarmProcess, base_env, run_in_server, start_in_server, starts_cold

# The tiny-run setting (conf/debug/tiny.yaml): one clip per class and fold, one epoch, CPU, batch 25,
# no progress bar or model summary. Applied after the recipe; command-line overrides still win.
TINY = "debug=tiny"


def command_env(
    root: Path | None = None,
    work: Path | None = None,
    *,
    cache: Path | None = None,
    outputs: Path | None = None,
    **extra: str,
) -> dict[str, str]:
    """This process's environment, unbuffered, for a command on the dataset at ``root``.

    ``ESC50_ROOT`` is ``root``; ``ESC50_CACHE`` and ``ESC50_OUTPUTS`` default to ``work/cache`` and
    ``work/outputs`` (pass the session's ``cache_dir`` as ``cache`` to reuse its decoded clips);
    ``extra`` adds or replaces variables (``CUDA_VISIBLE_DEVICES=""``). A variable whose value and
    default are both unset is inherited from this process.
    """
    env = base_env()
    if root is not None:
        env["ESC50_ROOT"] = str(root)
    if cache is not None or work is not None:
        env["ESC50_CACHE"] = str(cache if cache is not None else work / "cache")
    if outputs is not None or work is not None:
        env["ESC50_OUTPUTS"] = str(outputs if outputs is not None else work / "outputs")
    return {**env, **extra}


def hydra_args(script: str, *overrides: str, tiny: bool = True) -> list[str]:
    """``[script, flags..., debug=tiny, overrides...]`` for :func:`run_command`.

    Hydra's flags (``-m``) go first; ``tiny`` adds :data:`TINY` (train.py only: eval.py has no
    ``debug`` group) before the overrides, which keep their order (a later one wins).
    """
    flags = [o for o in overrides if o.startswith("-")]
    rest = [o for o in overrides if not o.startswith("-")]
    return [script, *flags, *([TINY] if tiny else []), *rest]


def _argv(args: Sequence[str | Path]) -> list[str]:
    return [sys.executable, *(str(a) for a in args)]


def run_command(
    args: Sequence[str | Path],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    check: bool = False,
    cold: bool = False,
) -> subprocess.CompletedProcess:
    """Run ``python <args...>`` in the repository root and wait, capturing stdout and stderr as text.

    ``env`` defaults to :func:`command_env` (): this process's. With ``check``, a non-zero exit
    raises AssertionError carrying the command and its whole output. The command runs in a fork
    of a process that imported torch and Lightning once (helpers/warm.py), unless ``cold`` asks
    for a fresh interpreter (to see what one imports, or to time it) or ``env`` changes what an
    interpreter reads when it starts (``PYTHONPATH``, ``OMP_NUM_THREADS``, ...).
    """
    argv = _argv(args)
    env = env or command_env()
    if cold or starts_cold(env):
        proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    else:
        proc = subprocess.CompletedProcess(argv, *run_in_server(argv[1:], env, timeout))
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


# What a background command may be asked for in the warm server; anything else starts it cold.
_WARM_OPTIONS = {"stdout", "stderr", "start_new_session"}


def start_command(
    args: Sequence[str | Path], *, env: dict[str, str] | None = None, cold: bool = False, **popen
) -> subprocess.Popen | WarmProcess:
    """Start ``python <args...>`` in the repository root without waiting (to signal it, or to run
    several at once). Output is piped as text unless ``popen`` says otherwise (``stdout=...``,
    ``stderr=subprocess.STDOUT``, an open file, ``start_new_session=True``).

    It starts in the warm server (:class:`helpers.warm.WarmProcess`, polled, signalled and waited
    for as a ``Popen``) unless ``cold``, its environment, or another ``Popen`` option asks for a
    fresh interpreter.
    """
    argv, env = _argv(args), env or command_env()
    if cold or starts_cold(env) or set(popen) - _WARM_OPTIONS:
        options = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
        return subprocess.Popen(argv, cwd=REPO, env=env, **options)
    return start_in_server(argv[1:], env, **popen)


def run_dirs(outputs: Path) -> list[Path]:
    """Run folders (those holding a .hydra record) under an outputs folder, oldest first."""
    return sorted(p.parent for p in outputs.rglob(".hydra"))
