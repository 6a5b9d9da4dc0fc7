"""data.device_resident: batches gathered from a copy of the cache on the training device. On the
CPU the same code runs over the mapped cache, so these tests compare it with the DataLoader path
batch for batch, and train through Lightning with it. speed=gpu_fast's learning-rate scaling."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import compose_config
from hydra.utils import instantiate

from esc50_lightning.data.datamodule import DeviceBatches
from esc50_lightning.errors import UserError
from esc50_lightning.factory import build_features, build_logmel, build_module
from esc50_lightning.tasks.checks import check_train_config


def _config(esc50_root: Path, cache_dir: Path, *overrides: str):
    return compose_config(
        f"data.dataset.root={esc50_root}", f"data.cache_dir={cache_dir}", "data.limit_per_class=1", *overrides
    )


@pytest.fixture(scope="module")
def datamodule(esc50_root: Path, cache_dir: Path):
    """250 clips (one per class and fold), two copies per epoch in batches of 24: 400 training
    indices, so the last batch is shorter (16 clips)."""
    cfg = _config(
        esc50_root, cache_dir, "data.copies_per_epoch=2", "data.batch_size=24", "data.eval_batch_size=32"
    )
    dm = instantiate(cfg.data, frontend=build_logmel(cfg))
    dm.prepare_data()
    dm.setup("fit")
    return cfg, dm


def test_device_batches_are_the_dataloader_batches_of_the_same_indices(datamodule) -> None:
    cfg, dm = datamodule
    train = dm.sets["train"]
    torch.manual_seed(5)  # what seed_everything does: the order's seed is torch's initial seed
    batches = dm.device_loader("train", "cpu")
    assert isinstance(batches, DeviceBatches)
    assert len(batches) == len(dm.train_dataloader()) == 17  # 400 / 24, the last batch kept
    epoch0 = list(batches)
    order = batches.order(0)
    # Every clip twice per epoch, as ClipSet counts copies; another epoch, another order; the same
    # seed, the same order.
    assert sorted(order.tolist()) == list(range(len(train)))
    assert not torch.equal(order, batches.order(1))
    torch.manual_seed(5)
    assert torch.equal(order, dm.device_loader("train", "cpu").order(0))
    assert [len(b["y"]) for b in epoch0] == [24] * 16 + [16]

    features = build_features(cfg).train()
    for i, batch in enumerate(epoch0):
        expected = train.__getitems__(order[i * 24 : (i + 1) * 24].tolist())  # today's DataLoader batch
        assert batch.keys() == expected.keys()
        for key in expected:
            assert torch.equal(batch[key], expected[key]), key
    # The same batch and RNG state give the same features (crop, masks) on both paths.
    expected = train.__getitems__(order[:24].tolist())
    torch.manual_seed(11)
    ours = features(epoch0[0]["x"])
    torch.manual_seed(11)
    assert torch.equal(ours, features(expected["x"]))
    # Evaluation: file order in batches of eval_batch_size, exactly the DataLoader's batches.
    for ours, theirs in zip(dm.device_loader("val", "cpu"), dm.val_dataloader(), strict=True):
        assert all(torch.equal(ours[k], theirs[k]) for k in ("x", "y", "row"))


def test_waveform_cache_is_served_as_floats_like_the_clipset(esc50_root: Path, cache_dir: Path) -> None:
    cfg = _config(esc50_root, cache_dir, "data.cache_features=false", "data.eval_batch_size=50")
    dm = instantiate(cfg.data, frontend=build_logmel(cfg))
    dm.prepare_data()
    dm.setup("fit")
    (ours,) = list(dm.device_loader("val", "cpu"))
    (theirs,) = list(dm.val_dataloader())
    assert ours["x"].dtype == torch.float32 and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_lightning_trains_and_validates_on_resident_batches(
    esc50_root: Path, cache_dir: Path, caplog
) -> None:
    cfg = _config(
        esc50_root,
        cache_dir,
        "model=cnn4",
        "data.device_resident=true",
        "data.batch_size=8",
        "data.eval_batch_size=8",
    )
    L.seed_everything(0, verbose=False)
    dm = instantiate(cfg.data, frontend=build_logmel(cfg))
    module = build_module(cfg, dm.class_names)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with caplog.at_level("INFO", logger="esc50_lightning.data.datamodule"):
        trainer.fit(module, datamodule=dm)
    assert isinstance(trainer.train_dataloader, DeviceBatches)
    assert trainer.num_training_batches == 2 and len(module.history) == 1
    assert (
        "data.device_resident: 0.06 GB of cached log-mels (250 clips) mapped from the cache file on cpu"
        in caplog.text
    )


def test_device_resident_is_refused_under_ddp_in_one_line() -> None:
    cfg = compose_config("trainer=ddp", "trainer.accelerator=cpu", "data.device_resident=true")
    with pytest.raises(UserError, match=r"^data.device_resident=true serves one process on one device, not "):
        check_train_config(cfg)


def test_gpu_fast_scales_the_learning_rate_with_the_batch() -> None:
    cfg = compose_config("experiment=seed", "speed=gpu_fast", "compile=false")
    assert (cfg.data.batch_size, cfg.data.device_resident, cfg.trainer.precision) == (256, True, "bf16-mixed")
    assert cfg.trainer.max_epochs == 40 and cfg.data.copies_per_epoch == 5  # the recipe's own stay
    module = build_module(cfg, [f"c{i}" for i in range(50)])
    assert module.optimizer_factory.keywords["lr"] == pytest.approx(3e-4 * 256 / 32)
    assert cfg.optim.optimizer.lr == 3e-4  # the recorded config keeps the rate as written
    sqrt = compose_config(
        "optim=adamw_onecycle", "speed=gpu_fast", "optim.lr_scaling=sqrt", "data.batch_size=128"
    )
    module = build_module(sqrt, [f"c{i}" for i in range(50)])
    assert module.scheduler_factory.keywords["max_lr"] == pytest.approx(2e-3 * 2)  # follows the rate
    with pytest.raises(UserError, match=r"^optim.lr_scaling=cubic must be null, linear or sqrt$"):
        build_module(compose_config("optim.lr_scaling=cubic"), ["a", "b"])


def test_mps_daemon_is_reported_from_its_control_pipe(tmp_path: Path, monkeypatch) -> None:
    from esc50_lightning.training.gpu_share import mps_daemon_status

    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))
    assert mps_daemon_status().startswith(f"no CUDA MPS daemon (no control pipe in {tmp_path})")
    (tmp_path / "control").touch()
    assert mps_daemon_status().startswith(f"CUDA MPS daemon found (control pipe in {tmp_path})")
    launcher = compose_config("hydra/launcher=shared_gpu", hydra=True).hydra.launcher
    assert launcher._target_.endswith("JoblibLauncher") and launcher.n_jobs == 4
