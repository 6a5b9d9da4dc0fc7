"""Commands without paying Python's start-up: 5-6 s of each tiny run is importing torch,
Lightning and Hydra.

:func:`helpers.run_command` runs a command in a fork of a server process that imported them once
per test worker (and never ran a torch operation, so no thread pool is copied into the fork). It
runs the real entry point (``train.py``, ``-m esc50_lightning.<cmd>``) as ``__main__`` with the
command's own argv, environment and working directory, in a process of its own, and ends as an
interpreter does (threads joined, exit handlers run), so nothing it does reaches the server or
the next command.

A command whose environment changes what is read when an interpreter or a native library starts
(``PYTHONPATH``, ``OMP_NUM_THREADS``, ...) starts cold, in a fresh interpreter, and so does one
asked for with ``cold=True``: one that checks what a fresh interpreter imports, or is timed.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_SERVER = Path(__file__).with_name("warm_server.py")
_lock = threading.Lock()
_server: subprocess.Popen | None = None
_server_env: dict[str, str] = {}

# Variables an interpreter or a native library reads once, when it starts: a fork cannot honour a
# change in them, but for PYTHONPATH, whose folders the fork puts on sys.path as an interpreter would.
_READ_AT_START = re.compile(r"PYTHON\w*|\w+_NUM_THREADS|LD_PRELOAD|LD_LIBRARY_PATH|MALLOC_\w+")


def base_env() -> dict[str, str]:
    """What a command's environment starts from (:func:`helpers.command_env`): this process's."""
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def starts_cold(env: dict[str, str]) -> bool:
    """Whether a command with ``env`` must start its own interpreter: it changes a variable read at
    start-up (:data:`_READ_AT_START`) from the server's (this process's environment), or its
    ``PYTHONPATH`` holds a ``sitecustomize`` or ``usercustomize`` module, which only a starting
    interpreter runs."""
    reference = _server_env or base_env()
    names = {*env, *reference}
    changed = {n for n in names if _READ_AT_START.fullmatch(n) and env.get(n) != reference.get(n)}
    if changed - {"PYTHONPATH"}:
        return True
    if "PYTHONPATH" not in changed:
        return False
    folders = [REPO / p for p in env.get("PYTHONPATH", "").split(os.pathsep)]
    return any((f / f"{m}.py").exists() for f in folders for m in ("sitecustomize", "usercustomize"))


def _start() -> subprocess.Popen:
    global _server, _server_env
    if _server is None or _server.poll() is not None:
        _server_env = base_env()
        _server = subprocess.Popen(
            [sys.executable, str(_SERVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=_server_env,
        )
        atexit.register(_server.kill)
    return _server


def run_in_server(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    """``python <argv...>`` in the repository root, in a fork of this worker's warm server: its
    exit status, stdout and stderr."""
    with tempfile.TemporaryDirectory() as tmp, _lock:
        server = _start()
        out, err = Path(tmp) / "out", Path(tmp) / "err"
        request = {
            "argv": argv,
            "env": env,
            "cwd": str(REPO),
            "stdout": str(out),
            "stderr": str(err),
            "timeout": timeout,
        }
        assert server.stdin is not None and server.stdout is not None
        server.stdin.write(json.dumps(request) + "\n")
        server.stdin.flush()
        reply = server.stdout.readline()
        if not reply:
            raise AssertionError(f"the warm server died running {' '.join(argv)}")
        return (
            json.loads(reply)["returncode"],
            out.read_text(errors="replace"),
            err.read_text(errors="replace"),
        )
