"""Shared fixtures: the real ESC-50 clips (../shared/esc50 or ESC50_ROOT) and a train.py runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "esc50"

# pytest-xdist runs one worker per core: give each worker's torch, and the commands it starts, an
# equal share of the cores instead of letting every one of them spin a thread per core.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

# Quick-run overrides: 1 clip per class and fold (250 clips), one epoch, CPU, no Rich widgets.
QUICK = [
    "data.limit_per_class=1",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "data.batch_size=25",
]


def _complete(root: Path) -> bool:
    return (root / "meta" / "esc50.csv").is_file() and len(list((root / "audio").glob("*.wav"))) == 2000


@pytest.fixture(scope="session")
def esc50_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The official ESC-50 layout: ESC50_ROOT if it is complete, else materialised from ../shared."""
    env = os.environ.get("ESC50_ROOT")
    if env and _complete(Path(env)):
        return Path(env)
    dest = tmp_path_factory.mktemp("esc50")
    subprocess.run([sys.executable, str(SHARED / "materialize.py"), str(dest)], check=True)
    return dest


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache shared by the whole test session (real decode once, reused).

    Under pytest-xdist every worker has its own base temp folder; their common parent holds one
    cache for all of them, so a clip set is decoded once per session instead of once per worker
    (the cache's file locks make the first worker build an entry while the others wait).
    """
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = shared / "esc50-cache"
    path.mkdir(exist_ok=True)
    return path


def script_env(
    root: Path, work: Path, *, cache: Path | None = None, outputs: Path | None = None
) -> dict[str, str]:
    """Environment for a command run on the dataset at ``root``; cache and outputs default to
    folders under ``work`` (pass the session's ``cache_dir`` to reuse its decoded clips)."""
    return {
        **os.environ,
        "ESC50_ROOT": str(root),
        "ESC50_CACHE": str(cache or work / "cache"),
        "ESC50_OUTPUTS": str(outputs or work / "outputs"),
        "PYTHONUNBUFFERED": "1",
    }


def run_script(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python <args...>`` in the repository, capturing its output."""
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def run_train(esc50_root: Path, cache_dir: Path, tmp_path: Path):
    """Run ``python <script> overrides...`` in the repository with outputs under tmp_path."""

    def run(*overrides: str, script: str = "train.py", quick: bool = True, check: bool = True, env=None):
        full_env = {**script_env(esc50_root, tmp_path, cache=cache_dir), **(env or {})}
        flags = [o for o in overrides if o.startswith("-")]  # Hydra wants -m before the overrides
        rest = [o for o in overrides if not o.startswith("-")]
        args = [sys.executable, script, *flags, *(QUICK if quick else []), *rest]
        proc = subprocess.run(args, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=900)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    return run


@pytest.fixture(scope="session")
def holdout_run(esc50_root: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-epoch cnn4 run under the holdout protocol (test fold 2, validation fold 1, train 3-5),
    shared by the protocol and report tests."""
    work = tmp_path_factory.mktemp("holdout")
    env = script_env(esc50_root, work, cache=cache_dir)
    overrides = ["data.protocol=holdout", "data.fold=2", "trainer.max_epochs=2", "model=cnn4"]
    overrides.append("+trainer.limit_train_batches=2")  # the protocol is the point, not the training
    proc = run_script(["train.py", *QUICK, *overrides], env, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = run_dirs(work / "outputs")
    return run


def run_dirs(outputs: Path) -> list[Path]:
    """Run folders (those holding a .hydra record) under an outputs folder, oldest first."""
    return sorted(p.parent for p in outputs.rglob(".hydra"))
