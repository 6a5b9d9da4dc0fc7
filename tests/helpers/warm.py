"""Commands that stop early (a config mistake, a refused file) without paying Python's start-up.

Most of such a command's 5-6 s is importing torch, Lightning and Hydra. ``run_warm`` runs the
command in a fork of a server process that imported them once per test worker: the fork runs the
real entry point (``train.py``, ``-m esc50_lightning.<cmd>``) as ``__main__``, with the command's
own argv, environment and working directory, in a process of its own, so nothing it does reaches
the server or the next command. Only for commands that neither train nor start threads or
subprocesses before they fail; a command that depends on how the interpreter starts (PYTHONPATH,
sitecustomize) runs with :func:`helpers.run_command`.
"""

from __future__ import annotations

import atexit
import json
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from helpers.commands import REPO, command_env

_SERVER = Path(__file__).with_name("warm_server.py")
_lock = threading.Lock()
_server: subprocess.Popen | None = None


def _start() -> subprocess.Popen:
    global _server
    if _server is None or _server.poll() is not None:
        _server = subprocess.Popen(
            [sys.executable, str(_SERVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=command_env(),
        )
        atexit.register(_server.kill)
    return _server


def run_warm(
    args: Sequence[str | Path], *, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Like :func:`helpers.run_command` (``python <args...>`` in the repository root, output
    captured), in a fork of the warm server."""
    argv = [str(a) for a in args]
    with tempfile.TemporaryDirectory() as tmp, _lock:
        server = _start()
        out, err = Path(tmp) / "out", Path(tmp) / "err"
        request = {
            "argv": argv,
            "env": env or command_env(),
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
        code = json.loads(reply)["returncode"]
        return subprocess.CompletedProcess(
            [sys.executable, *argv], code, out.read_text(errors="replace"), err.read_text(errors="replace")
        )
