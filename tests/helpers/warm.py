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

:func:`start_in_server` starts a command in the background the same way: a :class:`WarmProcess`
is signalled, polled and waited for as a ``subprocess.Popen`` is.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

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


def _ask(request: dict) -> dict:
    """Send one request to this worker's server (started if need be) and return its reply."""
    server = _start()
    assert server.stdin is not None and server.stdout is not None
    server.stdin.write(json.dumps({"cwd": str(REPO), **request}) + "\n")
    server.stdin.flush()
    reply = server.stdout.readline()
    if not reply:
        raise AssertionError(f"the warm server died running {' '.join(request['argv'])}")
    return json.loads(reply)


def run_in_server(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    """``python <argv...>`` in the repository root, in a fork of this worker's warm server: its
    exit status, stdout and stderr."""
    with tempfile.TemporaryDirectory() as tmp, _lock:
        out, err = Path(tmp) / "out", Path(tmp) / "err"
        request = {"argv": argv, "env": env, "stdout": str(out), "stderr": str(err), "timeout": timeout}
        code = _ask(request)["returncode"]
        return code, out.read_text(errors="replace"), err.read_text(errors="replace")


class WarmProcess:
    """A command started in the background by the warm server: the parts of ``subprocess.Popen``
    the tests use (``pid``, ``returncode``, ``poll``, ``wait``, ``communicate``, ``send_signal``,
    ``kill``, ``terminate``). Piped output is read from files once the command has ended."""

    def __init__(self, args: list[str], pid: int, folder: Path, piped: dict[str, Path | None]):
        self.args, self.pid, self.returncode = args, pid, None
        self._status, self._piped = folder / "status", piped

    def poll(self) -> int | None:
        if self.returncode is None and self._status.exists():
            self.returncode = json.loads(self._status.read_text())["returncode"]
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.02)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str | None, str | None]:
        self.wait(timeout)
        return tuple(  # type: ignore[return-value]
            None if path is None else path.read_text(errors="replace") for path in self._piped.values()
        )

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # as Popen: never signal a pid that may have been reused
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


def _target(stream: int | IO | None, folder: Path, name: str) -> tuple[str | None, Path | None]:
    """Where a background command's stream goes (a file path, None for stderr=STDOUT) and the file
    to read it back from when it is piped."""
    if stream == subprocess.PIPE:
        return str(folder / name), folder / name
    if stream == subprocess.DEVNULL:
        return os.devnull, None
    if stream == subprocess.STDOUT:
        return None, None
    return stream.name, None  # an open file: the command writes to the same file


def start_in_server(
    argv: list[str],
    env: dict[str, str],
    stdout: int | IO = subprocess.PIPE,
    stderr: int | IO = subprocess.PIPE,
    start_new_session: bool = False,
) -> WarmProcess:
    """``python <argv...>`` started in the background in a fork of this worker's warm server."""
    folder = Path(tempfile.mkdtemp(prefix="warm-", dir=_background_root()))
    (out, out_pipe), (err, err_pipe) = _target(stdout, folder, "out"), _target(stderr, folder, "err")
    request = {
        "argv": argv,
        "env": env,
        "stdout": out,
        "stderr": err,
        "background": True,
        "status": str(folder / "status"),
        "new_session": start_new_session,
    }
    with _lock:
        pid = _ask(request)["pid"]
    return WarmProcess(argv, pid, folder, {"stdout": out_pipe, "stderr": err_pipe})


_root: Path | None = None


def _background_root() -> Path:
    """One folder for this worker's background commands' files, removed when the worker exits."""
    global _root
    if _root is None:
        _root = Path(tempfile.mkdtemp(prefix="warm-background-"))
        atexit.register(shutil.rmtree, _root, ignore_errors=True)
    return _root
