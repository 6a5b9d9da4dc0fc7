"""A Hydra callback: a SIGTERM to a ``local_parallel`` sweep also stops its worker processes."""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


def _kill_loky_workers() -> None:
    """Kill the worker processes of joblib's reusable loky executor, if one was started."""
    module = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(module, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)  # killed before this process dies


class StopWorkersOnSigterm(Callback):
    """Ctrl-C in a terminal reaches every process of a sweep, but a SIGTERM (``kill``,
    ``timeout``, ``docker stop``, a scheduler) reaches only its main process, and the joblib
    launcher's loky workers would go on training with nobody waiting for them. While a joblib
    sweep runs, its main process answers SIGTERM by killing the workers, then dies of the signal
    as it would have. Other launchers run jobs in the main process (where Lightning handles
    SIGTERM) or elsewhere, and are left alone.
    """

    def __init__(self) -> None:
        self._previous: Any = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        target = str(OmegaConf.select(config, "hydra.launcher._target_", default=""))
        if not target.endswith("JoblibLauncher") or threading.current_thread() is not threading.main_thread():
            return
        self._previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._stop)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        _kill_loky_workers()
        signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
        os.kill(os.getpid(), signum)
