"""The on-disk cache: built once under concurrency, never served when truncated or stale."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import REPO, command_env, make_subset, snapshot, start_command

from esc50_lightning.data import FoldedAudioDataModule
from esc50_lightning.data.table import DatasetSpec

# Each process waits for the go file, then prepares the data; decoding is slowed down so that the
# two builds overlap for sure. Prints how often it decoded and saves what it got.
CHILD = r"""
import sys, time
from pathlib import Path
import numpy as np
from esc50_lightning.data import FoldedAudioDataModule
from esc50_lightning.data.store import ClipStore
from esc50_lightning.data.table import DatasetSpec
from esc50_lightning.features import LogMel

root, cache, go, out = sys.argv[1:5]
original = ClipStore.decode_all
def slow_decode(self, table):
    print("DECODING", flush=True)
    time.sleep(2.0)
    return original(self, table)
ClipStore.decode_all = slow_decode
spec = DatasetSpec(name="esc50", root=root, folds=[1, 2, 3, 4, 5], num_classes=50)
dm = FoldedAudioDataModule(spec, cache_dir=cache, cache_features=True, frontend=LogMel())
Path(out + ".ready").touch()
while not Path(go).exists():
    time.sleep(0.01)
dm.prepare_data()
dm.setup("fit")
np.save(out, np.asarray(dm.store.features(dm.table)))
np.save(out.replace(".npy", "-wave.npy"), np.asarray(dm.store.waveforms(dm.table)))
"""


def _dm(root: Path, cache: Path) -> FoldedAudioDataModule:
    spec = DatasetSpec(name="esc50", root=str(root), folds=[1, 2, 3, 4, 5], num_classes=50)
    return FoldedAudioDataModule(spec, cache_dir=str(cache), cache_features=False)


def _built(caplog: pytest.LogCaptureFixture) -> int:
    return sum("decoded clips in" in r.getMessage() for r in caplog.records)


def test_two_processes_build_the_cache_once(esc50_root: Path, tmp_path: Path) -> None:
    root, cache, go = tmp_path / "esc50", tmp_path / "cache", tmp_path / "go"
    make_subset(esc50_root, root)
    before = snapshot(root)
    env = command_env(PYTHONPATH=str(REPO / "src"))
    procs = [
        start_command(["-c", CHILD, root, cache, go, tmp_path / f"out{i}.npy"], env=env) for i in range(2)
    ]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"out{i}.npy.ready").exists() for i in range(2)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "children did not start"
        time.sleep(0.05)
    go.touch()  # both are waiting: they start building at the same moment
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert sum(out.count("DECODING") for out, _ in results) == 1, "exactly one process decodes"

    features = [np.load(tmp_path / f"out{i}.npy") for i in range(2)]
    waves = [np.load(tmp_path / f"out{i}-wave.npy") for i in range(2)]
    assert features[0].shape == (10, 128, 431) and np.array_equal(features[0], features[1])
    assert waves[0].shape == (10, 220500) and np.array_equal(waves[0], waves[1])
    fresh = _dm(root, tmp_path / "fresh-cache")
    assert np.array_equal(waves[0], np.asarray(fresh.store.waveforms(fresh.table)))  # same as a lone build
    entries = sorted(p.name for p in (cache / "esc50").iterdir())
    assert len([e for e in entries if e.endswith(".npy")]) == 2  # one waveform and one log-mel entry
    assert not [e for e in entries if e.endswith(".tmp")]
    assert snapshot(root) == before


def test_truncated_or_stale_cache_is_rebuilt(
    esc50_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, cache = tmp_path / "esc50", tmp_path / "cache"
    names = list(make_subset(esc50_root, root).filename)
    caplog.set_level(logging.INFO)
    dm = _dm(root, cache)
    good = np.array(dm.store.waveforms(dm.table))
    (npy,) = (cache / "esc50").glob("waveforms-*.npy")
    marker = npy.with_suffix(".json")
    assert _built(caplog) == 1

    # Reading again uses the cache.
    assert np.array_equal(_dm(root, cache).store.waveforms(dm.table), good)
    assert _built(caplog) == 1

    # A truncated array (a crash mid-copy, a full disk) is detected and rebuilt.
    npy.write_bytes(npy.read_bytes()[: npy.stat().st_size // 2])
    assert np.array_equal(_dm(root, cache).store.waveforms(dm.table), good)
    assert _built(caplog) == 2 and npy.stat().st_size == json.loads(marker.read_text())["bytes"]

    # A marker that disagrees with the array (stale shape), or none at all, means rebuild.
    meta = json.loads(marker.read_text())
    marker.write_text(json.dumps({**meta, "shape": [len(names) + 1, meta["shape"][1]]}))
    assert np.array_equal(_dm(root, cache).store.waveforms(dm.table), good)
    assert _built(caplog) == 3
    marker.unlink()
    (cache / "esc50" / f".{npy.stem}.abc.npy.tmp").write_bytes(b"half")  # a killed writer's leftover
    assert np.array_equal(_dm(root, cache).store.waveforms(dm.table), good)
    assert _built(caplog) == 4
    assert not list((cache / "esc50").glob("*.tmp"))

    # An audio file replaced after caching: the old entry no longer matches and is not served.
    clip, rate = sf.read(root / "audio" / names[0], dtype="float32")
    sf.write(root / "audio" / names[0], clip[::-1], rate)
    dm2 = _dm(root, cache)
    fresh = np.asarray(dm2.store.waveforms(dm2.table))
    assert _built(caplog) == 5
    assert not np.array_equal(fresh[0], good[0]) and np.array_equal(fresh[1:], good[1:])
    assert np.abs(fresh[0].astype(int) - np.round(clip[::-1] * 32767).astype(int)).max() <= 1


def test_unwritable_cache_is_a_clear_error(esc50_root: Path, tmp_path: Path) -> None:
    from esc50_lightning.errors import UserError

    root = tmp_path / "esc50"
    make_subset(esc50_root, root)
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    dm = _dm(root, blocker)
    with pytest.raises(UserError, match=r"cache/esc50: cannot write the data cache \(.*\); free space there"):
        dm.prepare_data()


def _mapped_from(path: Path, address: int) -> bool:
    """Whether ``address`` lies in this process's memory mapping of the file ``path``."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, *_, name = line.split(maxsplit=5)
        start, end = (int(a, 16) for a in span.split("-"))
        if name.strip() == str(path) and start <= address < end:
            return True
    return False


def test_splits_serve_batches_from_the_mapped_cache_file(esc50_root: Path, tmp_path: Path) -> None:
    from esc50_lightning.features import LogMel

    root = tmp_path / "esc50"
    make_subset(esc50_root, root)
    spec = DatasetSpec(name="esc50", root=str(root), folds=[1, 2, 3, 4, 5], num_classes=50)
    dm = FoldedAudioDataModule(spec, cache_dir=str(tmp_path / "cache"), frontend=LogMel(), fold=1)
    dm.prepare_data()
    dm.setup("fit")
    (npy,) = (tmp_path / "cache" / "esc50").glob("logmel-*.npy")
    cached = np.load(npy)
    train, val = dm.sets["train"], dm.sets["val"]

    # No copy at setup: every split reads the one mapping of the cache file, which other
    # processes share through the page cache.
    assert train.inputs.data_ptr() == val.inputs.data_ptr() == dm.sets["test"].inputs.data_ptr()
    assert _mapped_from(npy.resolve(), train.inputs.data_ptr())

    # A batch holds the right clips, labels and table rows; indices past the split wrap (copies).
    assert sorted(dm.table.folds[val.rows.numpy()]) == [1, 1] and 1 not in dm.table.folds[train.rows.numpy()]
    batch = train.__getitems__([0, 3, len(train.rows) + 1])
    expected_rows = train.rows[[0, 3, 1]]
    assert batch["row"].tolist() == expected_rows.tolist()
    assert np.array_equal(batch["x"].numpy(), cached[expected_rows.numpy()])
    assert batch["y"].tolist() == dm.table.labels[expected_rows.numpy()].tolist()
    everything = train.__getitems__(list(range(len(train.rows))))  # what the bare loop holds
    assert np.array_equal(everything["x"].numpy(), cached[train.rows.numpy()])


def test_eval_decodes_only_the_fold_it_scores_unless_every_clip_is_cached(
    esc50_root: Path, tmp_path: Path
) -> None:
    """``load_splits=["test"]`` (eval.py): on a cold cache only the scored fold's clips are decoded
    and cached. Once a training run has cached every clip, that entry serves the same test batch
    and nothing new is written."""
    import torch

    from esc50_lightning.features import LogMel

    root, cache = tmp_path / "esc50", tmp_path / "cache"
    make_subset(esc50_root, root, classes=4, per_fold=2)  # 40 real clips, 8 in fold 1
    spec = DatasetSpec(name="esc50", root=str(root), folds=[1, 2, 3, 4, 5], num_classes=50)

    def datamodule(**kwargs) -> FoldedAudioDataModule:
        return FoldedAudioDataModule(spec, fold=1, cache_dir=str(cache), frontend=LogMel(), **kwargs)

    def test_batch(dm: FoldedAudioDataModule) -> dict:
        dm.prepare_data()
        dm.setup("test")
        (batch,) = list(dm.test_dataloader())
        return {**batch, "files": [dm.table.files[i] for i in batch["row"].tolist()]}

    def entries() -> dict[str, int]:
        return {p.stem: json.loads(p.read_text())["shape"][0] for p in (cache / "esc50").glob("*.json")}

    cold = datamodule(load_splits=["test"])
    first = test_batch(cold)
    assert len(cold.table) == 8 and set(cold.table.folds.tolist()) == {1}
    assert sorted(entries().values()) == [8, 8]  # waveforms and log-mels of fold 1 alone

    datamodule().prepare_data()  # what training caches: every clip
    trained = entries()
    assert sorted(trained.values()) == [8, 8, 40, 40]
    warm = datamodule(load_splits=["test"])
    again = test_batch(warm)
    assert len(warm.table) == 40 and entries() == trained
    assert again["files"] == first["files"] and len(first["files"]) == 8
    assert torch.equal(again["x"], first["x"]) and torch.equal(again["y"], first["y"])
