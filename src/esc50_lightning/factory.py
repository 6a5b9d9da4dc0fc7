"""The one place a Hydra config or a checkpoint's run record becomes objects: the frontend, the
network and the LightningModule (and, for training, the data, callbacks, loggers and Trainer).

A config is the user's own, so Hydra instantiates it. A run record comes from a file, so only
registry keys (``registry.py``) and plain values are read from it, never a name to import."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from esc50_lightning.checkpoints.record import FORMAT, checkpoint_path, plain_state_dict, read_checkpoint
from esc50_lightning.data.audio import clip_samples
from esc50_lightning.errors import UserError
from esc50_lightning.features import AugmentationChain, FeatureExtractor, LogMel
from esc50_lightning.features.extractor import SAME_AS_CROP
from esc50_lightning.models.blocks import InputNorm
from esc50_lightning.models.ensemble import Ensemble
from esc50_lightning.registry import MODELS, weight_arguments
from esc50_lightning.training.classifier import AudioClassifier, OptimizerFactory, SchedulerFactory
from esc50_lightning.training.schedules import try_schedule

# ``eval_crop`` value (eval.py, build) meaning "keep the cut the checkpoint was configured with".
KEEP_EVAL_CROP = "checkpoint"


def instantiate_setting(node: Any, key: str, **kwargs: Any) -> Any:
    """``instantiate(node, **kwargs)`` for the config entry ``key``. A constructor refusing its
    arguments (``ValueError``, ``TypeError``) or a ``_target_`` that cannot be found is one line
    naming the key and the target, not Hydra's multi-line report or a traceback."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        if isinstance(cause, ImportError):
            raise UserError(f"{key}._target_={target} cannot be imported: check its spelling") from err
        if not isinstance(cause, ValueError | TypeError):
            raise
        raise refused(key, node, cause) from err


def refused(key: str, node: Any, err: Exception) -> UserError:
    """The one line for a setting its target refused (``err``), with how to drop an argument the
    target does not take (often a recipe's, written for another choice of the group)."""
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    match = re.search(r"unexpected keyword argument '(\w+)'", str(err))
    hint = ""
    if match:
        hint = (
            f"; remove it with '~{key}.{match.group(1)}' "
            "(a recipe may set it for another choice of this group)"
        )
    return UserError(f"{key} ({target}): {err}{hint}")


def build_logmel(cfg: DictConfig) -> LogMel:
    return instantiate_setting(cfg.features.logmel, "features.logmel")


def crop_from_config(value: Any) -> Any:
    """A crop from the config: its list becomes a tuple; ``None`` and names pass through."""
    return value if value is None or isinstance(value, str) else tuple(value)


def build_features(cfg: DictConfig, logmel: LogMel | None = None) -> FeatureExtractor:
    logmel = logmel or build_logmel(cfg)
    chain = build_augmentations(cfg)
    if chain.at("waveform") and cfg.data.get("cache_features"):
        names = [name for name, entry in chain.entries.items() if entry.acts_on == "waveform"]
        raise UserError(
            f"augmentation.chain.{names[0]} acts on waveforms, but data.cache_features=true gives the "
            "frontend cached log-mels: set data.cache_features=false"
        )
    return FeatureExtractor(
        logmel,
        clip_samples(cfg.data.dataset.sample_rate, cfg.data.dataset.clip_seconds),
        crop=crop_from_config(cfg.features.crop),
        normalize=cfg.features.normalize,
        augmentations=chain,
        # A features config without eval_crop scores the training crop's size.
        eval_crop=crop_from_config(cfg.features.get("eval_crop", SAME_AS_CROP)),
        eval_crops=cfg.features.get("eval_crops", 1),
    )


AUGMENTATION_KEYS = ("chain", "order")


def build_augmentations(cfg: DictConfig) -> AugmentationChain:
    """``augmentation.chain``'s entries (null ones are off), instantiated from the user's config
    (checkpoints hold none), listed in ``augmentation.order`` and then as written."""
    aug = cfg.get("augmentation") or {}
    for key in aug:
        if key not in AUGMENTATION_KEYS:
            raise UserError(
                f"augmentation.{key} is not a setting: augmentations are entries of augmentation.chain, "
                "e.g. augmentation.chain.mixup.alpha=0.4 (conf/augmentation/, docs/extending.md)"
            )
    chain = aug.get("chain") or {}
    if not isinstance(chain, DictConfig | dict):
        raise UserError(
            f"augmentation.chain={chain} must map names to entries, e.g. {{mixup: {{_target_: ...}}}}"
        )
    order = aug.get("order") or []
    if not isinstance(order, ListConfig | list) or not all(isinstance(n, str) for n in order):
        raise UserError(f"augmentation.order={order} must be a list of augmentation.chain's names")
    if unknown := [n for n in order if n not in chain]:
        raise UserError(
            f"augmentation.order names {unknown[0]}, which augmentation.chain does not have "
            f"(it has {', '.join(chain) or 'nothing'})"
        )
    entries = {}
    for name in dict.fromkeys([*order, *chain]):
        node, key = chain[name], f"augmentation.chain.{name}"
        if node is None:
            continue
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise UserError(
                f"{key}={node} must be null (off) or an entry such as "
                "{_target_:esc50_lightning.features.FreqMixStyle,p:0.4,alpha:0.4}"
            )
        entries[name] = instantiate_setting(node, key)
    return AugmentationChain(entries)


def check_input_rows(net: torch.nn.Module, features: FeatureExtractor) -> None:
    """Refuse a per-row input batch norm (``model.net.input_bn``) that does not match the mel
    rows the features give the network, before anything is trained or logged."""
    train_rows, eval_rows = features.output_shape[0], features.eval_shape[0]
    for norm in (m for m in net.modules() if isinstance(m, InputNorm) and m.rows):
        if train_rows != norm.rows:
            raise UserError(
                f"model.net.input_bn={norm.rows}, but features.crop gives the network {train_rows} "
                f"mel rows: set model.net.input_bn={train_rows} (or 0 to turn it off)"
            )
        if eval_rows != norm.rows:
            raise UserError(
                f"model.net.input_bn={norm.rows} matches the training crop, but features.eval_crop "
                f"gives the network {eval_rows} mel rows: evaluate on {norm.rows} mel rows as well"
            )


def build_module(
    cfg: DictConfig,
    class_names: list[str],
    logmel: LogMel | None = None,
    data: dict[str, Any] | None = None,
) -> AudioClassifier:
    """The LightningModule a training config names. With ``data`` (the data module's
    ``describe()``) it carries its run record (``run_record``): what a checkpoint of it holds to
    rebuild the network without the config."""
    class_names = list(class_names)
    net = instantiate_setting(cfg.model.net, "model.net", num_classes=len(class_names))
    features = build_features(cfg, logmel)
    check_input_rows(net, features)
    if hasattr(net, "check_frontend"):  # pretrained weights that need their own frontend (cnn14)
        net.check_frontend(features.logmel)
    optim = scaled_optim(cfg)
    module = AudioClassifier(
        net=net,
        features=features,
        optimizer=build_optimizer(optim),
        scheduler=build_scheduler(optim),
        scheduler_interval=optim.get("scheduler_interval", "epoch"),
        class_names=class_names,
        label_smoothing=optim.get("label_smoothing", 0.0),
        channels_last=cfg.get("channels_last", False),
        compile=cfg.get("compile", False),
        backbone_lr_scale=optim.get("backbone_lr_scale"),
    )
    if data is not None:
        module.run_info = run_record(cfg, type(net), data)
    return module


# ---- run records: what a checkpoint holds, and the model rebuilt from it -------------------------


def _plain(value: Any, key: str) -> Any:
    """A config value as a run record may hold it: numbers, strings, lists, mappings."""
    if isinstance(value, dict):
        if "_target_" in value:
            raise UserError(f"{key} builds an object; a checkpoint records only plain values here")
        return {k: _plain(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, f"{key}[{n}]") for n, v in enumerate(value)]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise UserError(f"{key}={value!r} is not a number, string or list, which a checkpoint records")


def _settings(node: Any, key: str, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """A config node's constructor arguments (its ``_target_`` and ``drop`` left out), resolved."""
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    return {k: _plain(v, f"{key}.{k}") for k, v in values.items() if k != "_target_" and k not in drop}


def run_record(cfg: DictConfig, net_class: type, data: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint records to rebuild this run's trained network: registry keys and plain
    values, never a name of code or a path (``checkpoints/record.py`` checks them on reading)."""
    if get_class(cfg.features.logmel._target_) is not LogMel:
        raise UserError("features.logmel._target_ must be esc50_lightning.features.LogMel")
    features = cfg.features
    return {
        "format": FORMAT,
        "model_name": str(cfg.model.name),
        "net": {
            "class": MODELS.key_of(net_class),
            "kwargs": _settings(cfg.model.net, "model.net", weight_arguments(net_class)),
        },
        "features": {
            "logmel": _settings(features.logmel, "features.logmel"),
            "crop": _plain(OmegaConf.to_container(features, resolve=True)["crop"], "features.crop"),
            "eval_crop": _plain(
                OmegaConf.to_container(features, resolve=True).get("eval_crop", SAME_AS_CROP),
                "features.eval_crop",
            ),
            "eval_crops": int(features.get("eval_crops", 1)),
            "normalize": bool(features.normalize),
        },
        "data": data,
        "seed": cfg.get("seed"),
        "precision": str(cfg.trainer.get("precision")),
    }


def build_net(part: dict[str, Any], num_classes: int, where: str) -> torch.nn.Module:
    """The network a verified run record names (``{"class": key, "kwargs": {...}}``), untrained."""
    cls = MODELS.resolve(part["class"], where)
    kwargs = dict(part.get("kwargs") or {})
    if held := [k for k in weight_arguments(cls) if k in kwargs]:
        raise UserError(f"{where}: its run record sets {', '.join(held)}; weights come from the checkpoint")
    kwargs["num_classes"] = num_classes
    try:
        return cls(**kwargs)
    except UserError as err:
        raise UserError(f"{where}: {err}") from None
    except (TypeError, ValueError) as err:
        raise UserError(f"{where}: its {part['class']} settings do not build ({_first_line(err)})") from None


def features_from_record(record: dict[str, Any], where: str) -> FeatureExtractor:
    """The evaluation frontend a run record describes (no augmentation: only training uses it)."""
    features, data = record["features"], record["data"]
    try:
        logmel = LogMel(**features["logmel"])
        return FeatureExtractor(
            logmel,
            clip_samples(data["sample_rate"], data["clip_seconds"]),
            crop=crop_from_config(features.get("crop")),
            normalize=bool(features.get("normalize", True)),
            eval_crop=crop_from_config(features.get("eval_crop", SAME_AS_CROP)),
            eval_crops=features.get("eval_crops", 1),
        )
    except UserError as err:
        raise UserError(f"{where}: {err}") from None
    except (TypeError, ValueError) as err:
        raise UserError(f"{where}: its features do not build ({_first_line(err)})") from None


def net_from_record(record: dict[str, Any], where: str) -> torch.nn.Module:
    """The network of a run record: one registry class, or an ensemble of several."""
    n = len(record["data"]["class_names"])
    net = record["net"]
    if net["class"] == "ensemble":
        return Ensemble([build_net(m, n, where) for m in net["members"]], num_classes=n)
    return build_net(net, n, where)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{err.__class__.__name__}: {text[0][:200]}" if text else err.__class__.__name__


def classifier_from_record(ckpt: dict[str, Any], where: str) -> AudioClassifier:
    """The trained classifier a verified checkpoint (``read_checkpoint``) holds, in eval mode."""
    record = ckpt["esc50"]
    net = net_from_record(record, where)
    features = features_from_record(record, where)
    check_input_rows(net, features)
    module = AudioClassifier(
        net=net, features=features, optimizer=None, class_names=record["data"]["class_names"]
    )
    try:
        module.load_state_dict(plain_state_dict(ckpt["state_dict"]))
    except RuntimeError as err:
        detail = str(err).strip().splitlines()
        shown = "; ".join(line.strip() for line in detail[1:3]) or detail[0]
        raise UserError(f"{where}: its weights do not fit the model it names ({shown[:200]})") from None
    module.float()  # packed checkpoints store float16
    module.run_info = record
    module.history = list(record.get("history", []))
    return module.eval()


def load_classifier(path: str | Path) -> tuple[AudioClassifier, dict[str, Any]]:
    """Read and verify a checkpoint, and rebuild the trained classifier it holds."""
    ckpt = read_checkpoint(path)
    return classifier_from_record(ckpt, str(checkpoint_path(path))), ckpt["esc50"]


LR_SCALING = ("linear", "sqrt")


def lr_scale(cfg: DictConfig) -> float:
    """The factor ``optim.lr_scaling`` applies to ``optim.optimizer.lr`` for ``data.batch_size``:
    ``batch / optim.reference_batch_size`` (linear), its square root (sqrt), or 1 (null)."""
    rule = cfg.optim.get("lr_scaling")
    if rule is None:
        return 1.0
    if rule not in LR_SCALING:
        raise UserError(f"optim.lr_scaling={rule} must be null, {' or '.join(LR_SCALING)}")
    reference = cfg.optim.get("reference_batch_size")
    if not isinstance(reference, int) or isinstance(reference, bool) or reference < 1:
        raise UserError(
            f"optim.reference_batch_size={reference} must be the positive batch size optim.optimizer.lr "
            f"is written for (optim.lr_scaling={rule} scales the rate from it)"
        )
    ratio = int(cfg.data.batch_size) / reference
    return ratio if rule == "linear" else ratio**0.5


def scaled_optim(cfg: DictConfig) -> DictConfig:
    """``cfg.optim`` with ``optimizer.lr`` scaled by ``lr_scale``; schedules that interpolate
    ``${optim.optimizer.lr}`` (one-cycle's ``max_lr``) read the scaled rate. The config itself,
    which runs and checkpoints record, keeps the rate as written."""
    scale = lr_scale(cfg)
    if scale == 1.0 or cfg.optim.optimizer.get("lr") is None:
        return cfg.optim
    scaled = copy.deepcopy(cfg)
    with open_dict(scaled):
        scaled.optim.optimizer.lr = float(cfg.optim.optimizer.lr) * scale
    return scaled.optim


def describe_lr_scaling(cfg: DictConfig) -> str | None:
    """One log line on the scaled learning rate, or None when the rate is used as written."""
    scale = lr_scale(cfg)
    if scale == 1.0 or cfg.optim.optimizer.get("lr") is None:
        return None
    lr, optim = float(cfg.optim.optimizer.lr), cfg.optim
    return (
        f"optim.lr_scaling={optim.lr_scaling}: learning rate {lr:g} x {scale:g} = {lr * scale:g} "
        f"(data.batch_size={cfg.data.batch_size}, optim.reference_batch_size={optim.reference_batch_size})"
    )


def build_optimizer(optim: DictConfig) -> OptimizerFactory:
    """The optimiser the config names, as a factory of the run's parameters. Like the schedule, it
    is tried once on a throwaway parameter here: a bad setting (a negative rate, a misspelt
    argument) stops the command before training with one line, not a traceback mid-start."""
    factory = instantiate_setting(optim.optimizer, "optim.optimizer")
    try:
        factory(params=[torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as err:
        raise refused("optim.optimizer", optim.optimizer, err) from err
    return factory


def build_scheduler(optim: DictConfig) -> SchedulerFactory | None:
    """The learning-rate schedule the config names, as a factory of the run's optimiser. It is
    tried once on a throwaway optimiser here, so that a bad setting stops the command before
    training with one line, not with a traceback once the run has started."""
    if not optim.get("scheduler"):
        return None
    factory = instantiate_setting(optim.scheduler, "optim.scheduler")
    try:
        try_schedule(factory)
    except (ValueError, TypeError) as err:
        raise refused("optim.scheduler", optim.scheduler, err) from err
    return factory


# ---- training: data, callbacks, loggers and the Trainer a config names ------------------------


def build_datamodule(cfg: DictConfig, logmel: LogMel) -> Any:
    """The config's data module (``data``), which caches ``logmel``'s features."""
    return instantiate_setting(cfg.data, "data", frontend=logmel)


def build_callbacks(cfg: DictConfig, with_loggers: bool, early_stopping: bool) -> list[Any]:
    """The callbacks group's callbacks, less those the config turns off: early stopping unless
    ``early_stopping`` (its patience is set), a learning-rate monitor without a logger (Lightning
    refuses it), and the progress bar, summary or checkpoints a ``trainer.enable_*: false`` turns
    off."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ModelSummary
    from lightning.pytorch.callbacks.progress import ProgressBar

    callbacks = [
        instantiate_setting(c, f"callbacks.{key}")
        for key, c in (cfg.get("callbacks") or {}).items()
        if c and not (key == "early_stopping" and not early_stopping)
    ]
    if not with_loggers:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    for flag, kind in (
        ("enable_progress_bar", ProgressBar),
        ("enable_model_summary", ModelSummary),
        ("enable_checkpointing", ModelCheckpoint),
    ):
        if cfg.trainer.get(flag) is False:
            callbacks = [c for c in callbacks if not isinstance(c, kind)]
    return callbacks


def build_loggers(cfg: DictConfig) -> list[Any]:
    return [instantiate_setting(c, f"logger.{key}") for key, c in (cfg.get("logger") or {}).items() if c]


def build_trainer(cfg: DictConfig, callbacks: list[Any], loggers: list[Any]) -> Any:
    """The config's Trainer. The callbacks group alone decides on the progress bar, the summary and
    checkpoints (Lightning would add its own, counting epochs from 0); checkpoints are written
    atomically unless the config names another CheckpointIO."""
    from lightning.fabric.plugins import CheckpointIO
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.callbacks.progress import ProgressBar

    from esc50_lightning.checkpoints.io import AtomicCheckpointIO

    plugins = [instantiate(p) if isinstance(p, DictConfig) else p for p in cfg.trainer.get("plugins") or []]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())  # never a half-written last.ckpt after kill -9
    return instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=plugins,
        enable_progress_bar=any(isinstance(c, ProgressBar) for c in callbacks),
        enable_model_summary=False,  # the flag adds Lightning's summary; the group's runs anyway
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
    )
