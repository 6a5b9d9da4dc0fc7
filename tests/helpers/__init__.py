"""Shared test code. Fixtures live in ``tests/conftest.py`` and call these; test files import from here.

Commands (:mod:`helpers.commands`): ``run_command`` runs ``python <args>`` in the repository and
waits (in a fork of a process that imported torch once, :mod:`helpers.warm`, unless it must start
cold), ``start_command`` starts one in the background (in the same server, signalled and waited
for as a ``Popen``),
``hydra_args`` puts ``-m`` first and the tiny-run setting ``TINY`` (``debug=tiny``) before a
command's overrides, ``command_env`` gives the ``ESC50_ROOT``/``ESC50_CACHE``/``ESC50_OUTPUTS``
environment, ``run_dirs`` finds the run folders.
Config: ``compose_config``. Clips: ``load_clips``. Datasets: ``make_subset``, ``snapshot``,
``make_us8k_like``, ``us8k_overrides``. Shared builds: ``session_dir``, ``build_once``, ``train_once``.
"""

from helpers.clips import clip_names, load_clips
from helpers.commands import REPO, TINY, command_env, hydra_args, run_command, run_dirs, start_command
from helpers.config import compose_config
from helpers.datasets import make_subset, snapshot
from helpers.runs import TrainedRun, train_once
from helpers.shared import build_once, session_dir
from helpers.us8k_like import make_us8k_like, us8k_overrides

__all__ = [
    "REPO",
    "TINY",
    "TrainedRun",
    "build_once",
    "clip_names",
    "command_env",
    "compose_config",
    "hydra_args",
    "load_clips",
    "make_subset",
    "make_us8k_like",
    "run_command",
    "run_dirs",
    "session_dir",
    "snapshot",
    "start_command",
    "train_once",
    "us8k_overrides",
]
