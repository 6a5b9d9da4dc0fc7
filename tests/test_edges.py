"""Edges a new user hits (issue 39): fast help, quiet and single logs, epochs from 1 in the
trackers, short lines for bad input that leave nothing behind, the report of one run."""

from __future__ import annotations

import pytest
from helpers import run_command

# Runs a command as ``python -m``/``python script.py`` would, then names the heavy packages it imported.
PROBE = """
import runpy, sys
target, *args = sys.argv[1:]
sys.argv = [target, *args]
try:
    if target.endswith(".py"):
        runpy.run_path(target, run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)
except SystemExit:
    pass
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "lightning", "pandas", "matplotlib"})
print("imported:", ",".join(heavy), file=sys.stderr)
"""
COMMANDS = ["esc50_lightning.predict", "esc50_lightning.export", "esc50_lightning.pack"]
COMMANDS += ["esc50_lightning.report", "esc50_lightning.cache", "train.py", "eval.py"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_and_argument_errors_import_neither_torch_nor_lightning(command):
    """``--help`` (and, for the argparse commands, a missing argument) answers before torch,
    Lightning, pandas or matplotlib load: in about a second, not eight."""
    proc = run_command(["-c", PROBE, command, "--help"])
    assert proc.stdout.startswith(("usage: python -m esc50_lightning.", f"python {command} ")), proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == "imported:", proc.stderr
    if command.endswith(".py"):
        return
    proc = run_command(["-c", PROBE, command, "--no-such-option"])
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and lines[-1] == "imported:", proc.stderr


def test_forwarders_run_the_command(tmp_path):
    """The fast path still runs the command: ``cache list`` on an empty cache folder answers."""
    proc = run_command(["-m", "esc50_lightning.cache", "list", "--cache-dir", str(tmp_path)], check=True)
    assert proc.stdout.strip() == f"no cache entries in {tmp_path}"
