"""Shared fixtures: the real ESC-50 clips (../shared/esc50 or ESC50_ROOT), the session's cache, a
train.py runner, tiny training runs and datasets built once per session. The code is in helpers/."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch

pytest.register_assert_rewrite("helpers")

from helpers import (  # noqa: E402  (after the assert-rewrite registration)
    REPO,
    TrainedRun,
    build_once,
    command_env,
    hydra_args,
    load_clips,
    make_us8k_like,
    run_command,
    session_dir,
    train_once,
)

SHARED = REPO.parent / "shared" / "esc50"

# pytest-xdist runs one worker per core: give each worker's torch, and the commands it starts, an
# equal share of the cores instead of letting every one of them spin a thread per core.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))


# The files that take longest in all (18-66 s each on the 2-core machine, measured with
# `pytest --durations=0`), handed to the workers first: each worker takes the next file as it
# finishes one, so the short files that remain even out the end instead of one long file ending
# the run on one worker while the other idles.
LONGEST_FIRST = (
    "test_search.py",
    "test_cnn14.py",
    "test_deploy.py",
    "test_tracking.py",
    "test_train.py",
    "test_bench.py",
    "test_sweep_signals.py",
    "test_bench_loop.py",
    "test_checkpoint_attacks.py",
    "test_ensemble_sweep.py",
    "test_report.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file kept


def _complete(root: Path) -> bool:
    return (root / "meta" / "esc50.csv").is_file() and len(list((root / "audio").glob("*.wav"))) == 2000


@pytest.fixture(scope="session")
def esc50_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The official ESC-50 layout: ESC50_ROOT if it is complete, else materialised from ../shared."""
    env = os.environ.get("ESC50_ROOT")
    if env and _complete(Path(env)):
        return Path(env)
    dest = tmp_path_factory.mktemp("esc50")
    run_command([SHARED / "materialize.py", dest], check=True)
    return dest


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache shared by the whole test session (real decode once, reused).

    Under pytest-xdist the workers share one cache, so a clip set is decoded once per session
    instead of once per worker (the cache's file locks make the first worker build an entry while
    the others wait).
    """
    path = session_dir(tmp_path_factory) / "esc50-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def waves(request: pytest.FixtureRequest, esc50_root: Path) -> torch.Tensor:
    """Real clips as a ``(clips, samples)`` float32 batch, once per module: the module's ``CLIPS``
    (file names, or a number of classes: the first take of each) at its ``CLIP_RATE`` (default
    44.1 kHz), 5 s each."""
    return load_clips(esc50_root, request.module.CLIPS, getattr(request.module, "CLIP_RATE", 44100))


@pytest.fixture
def run_train(esc50_root: Path, cache_dir: Path, tmp_path: Path):
    """Run ``python <script> [debug=tiny] overrides...`` with outputs under tmp_path/outputs.

    ``tiny`` adds the tiny-run setting (train.py only; pass ``tiny=False`` for eval.py or a full
    run); ``check`` raises with the output on a non-zero exit; ``env`` adds variables. The command
    runs without Python's start-up (helpers/warm.py) unless ``cold`` or its ``env`` asks for a
    fresh interpreter.
    """

    def run(
        *overrides: str, script: str = "train.py", tiny: bool = True, check: bool = True, env=None, cold=False
    ):
        full_env = {**command_env(esc50_root, tmp_path, cache=cache_dir), **(env or {})}
        return run_command(
            hydra_args(script, *overrides, tiny=tiny), env=full_env, timeout=900, check=check, cold=cold
        )

    return run


@pytest.fixture(scope="session")
def trained_run(esc50_root: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """``trained_run(*overrides, root=esc50_root)``: the :class:`TrainedRun` of ``python train.py
    debug=tiny overrides...``, trained the first time those arguments are asked for in the session
    (by any worker) and shared by every test that asks again. Tests only read it."""
    base = session_dir(tmp_path_factory) / "trained"

    def train(*overrides: str, root: Path = esc50_root) -> TrainedRun:
        return train_once(base, root, cache_dir, overrides)

    return train


@pytest.fixture(scope="session")
def holdout_run(trained_run) -> Path:
    """A two-epoch cnn4 run under the holdout protocol (test fold 2, validation fold 1, train 3-5),
    shared by the protocol and report tests."""
    overrides = ["data.protocol=holdout", "data.fold=2", "trainer.max_epochs=2", "model=cnn4"]
    overrides.append("+trainer.limit_train_batches=2")  # the protocol is the point, not the training
    return trained_run(*overrides).run


@pytest.fixture(scope="session")
def us8k(esc50_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """An UrbanSound8K-shaped dataset of real ESC-10 clips (helpers.us8k_like), written once per
    session: its root and the metadata frame with the bookkeeping columns."""

    def build(folder: Path) -> None:
        make_us8k_like(esc50_root, folder / "data").to_pickle(folder / "frame.pkl")

    folder = build_once(session_dir(tmp_path_factory) / "us8k_like", build)
    return folder / "data", pd.read_pickle(folder / "frame.pkl")
