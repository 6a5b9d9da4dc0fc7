"""Hydra callbacks for sweeps: a SIGTERM to a ``local_parallel`` sweep also stops its worker
processes; a sweep's runs can be averaged into one ensemble per held-out fold and scored."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections import defaultdict
from pathlib import Path
from types import FrameType
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from esc50_lightning.errors import UserError

log = logging.getLogger(__name__)


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


class EnsembleSweep(Callback):
    """When a sweep ends, average the predictions of its finished runs that held out the same
    fold (``tasks.pack.ensemble_checkpoint``) and score that ensemble once on the fold,
    as ``python eval.py`` would: ``<sweep dir>/ensemble_fold<k>/`` gets ``ensemble.ckpt``,
    ``metrics.json`` and ``predictions_test.csv``. ``hydra/callbacks=ensemble`` turns it on; run
    without ``-m``, such a config trains one member, and the callback says so.
    """

    def __init__(self, checkpoint: str = "last.ckpt") -> None:
        self.checkpoint = checkpoint

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        seeds = OmegaConf.select(config, "hydra.sweeper.params.seed")
        members = f"all members (seeds {seeds})" if seeds else "several seeds (e.g. seed=1,2)"
        log.warning(
            "this config averages a sweep's runs into an ensemble, but this is a single run "
            "(seed %s): add -m to train %s and score their ensemble",
            OmegaConf.select(config, "seed"),
            members,
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        groups: dict[int, list[Path]] = defaultdict(list)  # held-out fold -> finished runs
        for ckpt in sorted(sweep_dir.glob(f"*/checkpoints/{self.checkpoint}")):
            metrics = ckpt.parent.parent / "metrics.json"
            if metrics.is_file():  # finished runs only
                groups[int(json.loads(metrics.read_text())["fold"])].append(metrics.parent)
        try:
            for fold, runs in sorted(groups.items()):
                if len(runs) < 2:
                    log.warning("fold %s: one finished run (%s), no ensemble", fold, runs[0].name)
                    continue
                self._score(config, sweep_dir / f"ensemble_fold{fold}", runs)
        except UserError as err:  # the runs stand; only their ensemble could not be made
            log.error("no ensemble: %s", err)

    def _score(self, config: DictConfig, out: Path, runs: list[Path]) -> None:
        from hydra import compose

        from esc50_lightning.tasks.evaluate import evaluate
        from esc50_lightning.tasks.pack import ensemble_checkpoint

        out.mkdir(parents=True, exist_ok=True)
        sources = [run / "checkpoints" / self.checkpoint for run in runs]
        ckpt = ensemble_checkpoint(sources, out / "ensemble.ckpt")
        # eval.py's own config (conf/eval.yaml, beside the sweep's) scoring on the sweep's own data
        # config (the members' dataset, folder and cache); paths quoted, so that commas or spaces
        # in them stay part of the value.
        accelerator = OmegaConf.select(config, "trainer.accelerator", default="auto")
        eval_cfg = compose(
            config_name="eval",
            overrides=[
                f"ckpt_path='{ckpt}'",
                f"paths.output_dir='{out}'",
                f"trainer.accelerator={accelerator}",
                "trainer.enable_progress_bar=false",
            ],
        )
        data = OmegaConf.create(OmegaConf.to_container(config.data, resolve=True))
        with open_dict(eval_cfg), open_dict(data):
            data.fold, data.device_resident = None, False
            eval_cfg.data = data
        metrics = evaluate(eval_cfg)
        test = metrics["test"]
        log.info(
            "ensemble of %d runs (%s) on fold %s: acc %.4f, macro F1 %.4f, loss %.4f -> %s",
            len(runs),
            ", ".join(run.name for run in runs),
            metrics["fold"],
            test["acc"],
            test["f1"],
            test["loss"],
            out,
        )
