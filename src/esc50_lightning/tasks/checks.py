"""Checks of a training config that need no data and no model: one clear line per mistake."""

from __future__ import annotations

import importlib
import logging

import torch
from omegaconf import DictConfig, open_dict

from esc50_lightning.errors import UserError
from esc50_lightning.training.precision import compile_bf16_on_cpu, use_native_precision

log = logging.getLogger(__name__)


def check_train_config(cfg: DictConfig) -> None:
    """Refuse settings that cannot train before anything is built; resolve ``trainer.precision=auto``
    for the machine; adapt the ones the machine cannot honour (sync batch norm and bf16 on a CPU
    without it, compiled bf16 on a CPU)."""
    dataset = cfg.data.get("dataset") or {}
    unset = [f"data.dataset.{k}" for k in ("root", "csv") if k in dataset and dataset[k] in (None, "")]
    if unset:  # data=folded_csv leaves them to the user
        raise UserError(
            f"{' and '.join(unset)} must be set, e.g. data.dataset.root=/path/to/dataset "
            "data.dataset.csv=meta.csv (relative to root); see docs/datasets.md"
        )

    if cfg.data.get("fold") is None:
        folds = dataset.get("folds")
        allowed = f"choose from {', '.join(map(str, folds))}" if folds else "give one of the dataset's folds"
        raise UserError(f"data.fold=null: training needs the fold it evaluates on; {allowed}")

    epochs = cfg.trainer.get("max_epochs")
    if epochs is not None and epochs < 0:
        raise UserError(f"trainer.max_epochs={epochs} must be 0 or more")
    every = cfg.trainer.get("check_val_every_n_epoch") or 1
    if cfg.data.get("protocol") == "cv" and epochs and epochs % every:
        raise UserError(
            f"trainer.max_epochs={epochs} is not a multiple of trainer.check_val_every_n_epoch={every}: "
            "under data.protocol=cv the final epoch is the result, and it would not be validated"
        )
    accelerator = cfg.trainer.get("accelerator")
    check_mps(accelerator)
    check_cuda(accelerator)
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if cfg.trainer.get("sync_batchnorm") and on_cpu:
        # torch's SyncBatchNorm is GPU-only; trainer=ddp on CPU (gloo) runs with per-process BatchNorm.
        log.info("trainer.sync_batchnorm needs GPUs; turned off for this CPU run")
        with open_dict(cfg):
            cfg.trainer.sync_batchnorm = False
    # trainer.precision=auto becomes the machine's precision here, before anything is built, so the
    # run trains, logs and records (run record, metrics.json) the resolved value
    use_native_precision(cfg, on_cpu)
    compile_bf16_on_cpu(cfg, on_cpu)  # after the resolution above, which may leave bf16
    check_device_resident(cfg)
    check_callbacks(cfg)
    check_loggers(cfg)
    check_early_stopping(cfg)
    check_search(cfg)


def check_callbacks(cfg: DictConfig) -> None:
    """A callback entry without ``_target_``: settings for a callback the chosen group lacks
    (a recipe's ``callbacks.ema.*`` under ``callbacks=default``), which would otherwise reach
    Lightning as a plain dict and fail with a riddle."""
    for key, entry in (cfg.get("callbacks") or {}).items():
        if entry and "_target_" not in entry:
            raise UserError(
                f"callbacks.{key}: settings for a callback callbacks={_choice('callbacks', 'default')} "
                f"does not have (a recipe set callbacks.{key}.*): choose callbacks={key}, or drop them "
                f"with '~callbacks.{key}'"
            )


def check_device_resident(cfg: DictConfig) -> None:
    """data.device_resident holds the data on one device for one process: refused under DDP."""
    if not cfg.data.get("device_resident"):
        return
    strategy = str(cfg.trainer.get("strategy") or "")
    devices = cfg.trainer.get("devices")
    if strategy.startswith("ddp") or (isinstance(devices, int) and devices > 1):
        shown = strategy or "auto"
        raise UserError(
            f"data.device_resident=true serves one process on one device, not trainer.strategy={shown} "
            f"trainer.devices={devices}: set data.device_resident=false (many runs on one GPU: "
            "hydra/launcher=shared_gpu)"
        )


def check_search(cfg: DictConfig) -> None:
    """A search selects on the validation fold, which under cv is the reported fold."""
    if cfg.get("hparams_search") and cfg.data.get("protocol") == "cv":
        raise UserError(
            f"hparams_search={cfg.hparams_search.get('name')} needs data.protocol=holdout: under cv "
            "the validation fold is the reported fold, and the search would select on the test data"
        )


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def check_mps(accelerator: object) -> None:
    """trainer=mps (or trainer.accelerator=mps) where there is no Apple GPU: one line."""
    if accelerator == "mps" and not mps_available():
        name = "trainer=mps" if _choice("trainer", "") == "mps" else "trainer.accelerator=mps"
        raise UserError(f"{name}: no Apple GPU (MPS) on this machine")


def check_cuda(accelerator: object) -> None:
    """trainer=gpu, speed=gpu_fast (or trainer.accelerator=gpu|cuda) where torch sees no CUDA GPU:
    one line, not Lightning's exception inside Hydra's instantiation error."""
    if accelerator not in ("gpu", "cuda") or torch.cuda.is_available():
        return
    if _choice("speed", "") == "gpu_fast":
        raise UserError("speed=gpu_fast needs a CUDA GPU and torch sees none here: leave it out on a CPU")
    name = "trainer=gpu" if _choice("trainer", "") == "gpu" else f"trainer.accelerator={accelerator}"
    raise UserError(
        f"{name}: torch sees no CUDA GPU on this machine; use trainer=cpu or trainer.accelerator=auto"
    )


def early_stopping_on(cfg: DictConfig) -> bool:
    """Whether callbacks.early_stopping is on: present, and its patience set."""
    entry = (cfg.get("callbacks") or {}).get("early_stopping")
    return bool(entry) and entry.get("patience") is not None


def check_early_stopping(cfg: DictConfig) -> None:
    """Early stopping watches the validation fold, which under cv is the reported fold."""
    if early_stopping_on(cfg) and cfg.data.get("protocol") == "cv":
        raise UserError(
            "callbacks.early_stopping needs data.protocol=holdout: under cv the validation fold is "
            "the reported fold, and stopping on it would choose the result on the test data"
        )


# Trackers that are optional extras: the logger class, the module it imports, the name users know.
OPTIONAL_TRACKERS = {
    "MLFlowLogger": ("mlflow", "MLflow", "mlflow"),
    "WandbLogger": ("wandb", "Weights & Biases (wandb)", "wandb"),
}


def _choice(group: str, default: str) -> str:
    """The option the command line chose for a config group (``logger=many``), else ``default``."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().runtime.choices.get(group) or default)
    except Exception:  # not under Hydra (a unit test composing the config)
        return default


def check_loggers(cfg: DictConfig) -> None:
    """A tracker the chosen logger needs but this install lacks: one line naming the extra."""
    for key, entry in (cfg.get("logger") or {}).items():
        target = str((entry or {}).get("_target_", ""))
        tracker = OPTIONAL_TRACKERS.get(target.rsplit(".", 1)[-1])
        if tracker is None:
            continue
        module, name, extra = tracker
        try:
            importlib.import_module(module)
        except ImportError:
            raise UserError(
                f'logger={_choice("logger", key)} needs {name}: pip install -e ".[{extra}]"'
            ) from None
