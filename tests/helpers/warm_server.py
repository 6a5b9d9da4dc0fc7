"""The server of :mod:`helpers.warm`: imports the heavy libraries once, then for each request (a
JSON line on stdin) forks a child that runs the command as ``python <argv>`` would, and answers
with its exit status (a JSON line on stdout). The child's output goes to the files the request
names. A ``background`` request is answered at once with the child's pid; its exit status is
written to the request's ``status`` file when the server reaps it."""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import json
import os
import runpy
import signal
import sys
import threading
import time
import traceback
from typing import NoReturn

# What every command of the project imports first: ~5 s a command, paid here once.
import hydra  # noqa: F401
import lightning  # noqa: F401
import torch  # noqa: F401
import torchaudio  # noqa: F401
import torchmetrics  # noqa: F401
from omegaconf import OmegaConf  # noqa: F401

# The project's own modules, as train.py, eval.py and the commands import them (~0.5 s a command).
# They read the environment only when called, so each fork's own environment still counts; one
# that fails to import is left to the command, which reports it as a cold start would.
for _name in (
    "esc50_lightning.tasks.train",
    "esc50_lightning.tasks.evaluate",
    "esc50_lightning.tasks.search",
    "esc50_lightning.tasks.pack",
    "esc50_lightning.commands.predict",
    "esc50_lightning.commands.export",
    "esc50_lightning.commands.pack",
    "esc50_lightning.commands.report",
    "esc50_lightning.commands.cache",
):
    with contextlib.suppress(Exception):
        importlib.import_module(_name)

# Everything imported so far is kept out of the collector's sight: a fork's collections would
# otherwise touch, and so copy, every page of the server's objects.
gc.collect()
gc.freeze()

# The server's own PYTHONPATH folders, as the interpreter put them on sys.path.
_START_PATH = (
    [os.path.abspath(p) for p in os.environ["PYTHONPATH"].split(os.pathsep)]
    if os.environ.get("PYTHONPATH")
    else []
)


def _python_path(value: str) -> None:
    """sys.path as an interpreter started with ``PYTHONPATH=value`` (in this directory) has it."""
    folders = [os.path.abspath(p) for p in value.split(os.pathsep)] if value else []
    if folders != _START_PATH:
        sys.path[1:] = folders + [p for p in sys.path[1:] if p not in _START_PATH]


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


# Background children still running: pid -> the file their exit status goes to.
_background: dict[int, str] = {}


def _reap(*_: object) -> None:
    """Collect the background children that have ended and write their exit statuses (SIGCHLD)."""
    for pid in list(_background):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue  # reaped by a call this signal interrupted
        status_path = _background.pop(pid, None) if done else None
        if status_path:
            tmp = f"{status_path}.tmp"
            with open(tmp, "w") as out:
                json.dump({"returncode": os.waitstatus_to_exitcode(status)}, out)
            os.replace(tmp, status_path)


def _child(request: dict) -> NoReturn:
    """In the fork: become the command, run it, exit with its status (never returns)."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the server's reaper is not the command's
        _background.clear()
        if request.get("new_session"):
            os.setsid()
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        _python_path(os.environ.get("PYTHONPATH", ""))
        for fd, name in ((1, "stdout"), (2, "stderr")):
            if request[name] is None:  # stderr=subprocess.STDOUT
                os.dup2(1, fd)
                continue
            target = os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        argv = request["argv"]
        try:
            if argv[0] == "-m":
                sys.argv = [argv[1], *argv[2:]]
                sys.path[0] = request["cwd"]
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            elif argv[0] == "-c":
                sys.argv = ["-c", *argv[2:]]
                sys.path[0] = ""
                exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
            else:
                script = os.path.abspath(argv[0])
                sys.argv = [argv[0], *argv[1:]]
                sys.path[0] = os.path.dirname(script)
                runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = _exit_code(exc)
        except BaseException:
            traceback.print_exc()
            code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
    # End as the interpreter of `python <argv>` would, in its order: threads' exit callbacks run
    # (executors shut their workers down) and non-daemon threads joined, then exit handlers
    # (trackers close their runs), streams flushed. Not the interpreter's own teardown after that:
    # in a forked interpreter it can wait forever on a lock a thread of the server held at the fork.
    with contextlib.suppress(BaseException):
        threading._shutdown()  # what Py_FinalizeEx calls first
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def main() -> None:
    signal.signal(signal.SIGCHLD, _reap)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        if request.get("background"):
            _background[pid] = request["status"]
            _reap()  # it may have ended before it was listed
            print(json.dumps({"pid": pid}), flush=True)
            continue
        deadline = time.monotonic() + float(request.get("timeout", 300))
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.02)
        code = os.waitstatus_to_exitcode(status)
        print(json.dumps({"returncode": code}), flush=True)


if __name__ == "__main__":
    main()
