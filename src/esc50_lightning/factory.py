"""Config to objects: the feature extractor, the network and the LightningModule a config names."""

from __future__ import annotations

import copy
import re
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from esc50_lightning.data.audio import clip_samples
from esc50_lightning.errors import UserError
from esc50_lightning.features import FeatureExtractor, LogMel
from esc50_lightning.features.extractor import SAME_AS_CROP
from esc50_lightning.models.blocks import InputNorm
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
    aug = cfg.augmentation
    augment = instantiate_setting(aug.spec_augment, "augmentation.spec_augment") if aug.spec_augment else None
    # Checkpoints from before these keys existed trained without them.
    mixstyle = None
    if aug.get("freq_mixstyle"):
        if not isinstance(aug.freq_mixstyle, DictConfig) or "_target_" not in aug.freq_mixstyle:
            raise UserError(
                f"augmentation.freq_mixstyle={aug.freq_mixstyle} must be null or "
                "{_target_:esc50_lightning.features.FreqMixStyle,p:0.4,alpha:0.4}"
            )
        mixstyle = instantiate_setting(aug.freq_mixstyle, "augmentation.freq_mixstyle")
    return FeatureExtractor(
        logmel,
        clip_samples(cfg.data.dataset.sample_rate, cfg.data.dataset.clip_seconds),
        crop=crop_from_config(cfg.features.crop),
        normalize=cfg.features.normalize,
        augment=augment,
        # Older checkpoints have no eval_crop: they score the training crop's size.
        eval_crop=crop_from_config(cfg.features.get("eval_crop", SAME_AS_CROP)),
        time_roll=aug.get("time_roll", 0.0),
        time_stretch=aug.get("time_stretch"),
        mixstyle=mixstyle,
        eval_crops=cfg.features.get("eval_crops", 1),
    )


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


def build_module(cfg: DictConfig, class_names: list[str], logmel: LogMel | None = None) -> AudioClassifier:
    net = instantiate_setting(cfg.model.net, "model.net", num_classes=len(class_names))
    features = build_features(cfg, logmel)
    check_input_rows(net, features)
    if hasattr(net, "check_frontend"):  # pretrained weights that need their own frontend (cnn14)
        net.check_frontend(features.logmel)
    optim = scaled_optim(cfg)
    return AudioClassifier(
        net=net,
        features=features,
        optimizer=build_optimizer(optim),
        scheduler=build_scheduler(optim),
        scheduler_interval=optim.get("scheduler_interval", "epoch"),
        class_names=class_names,
        mixup_alpha=cfg.augmentation.get("mixup_alpha", 0.0),
        mixup_mode=cfg.augmentation.get("mixup_mode", "logmel"),
        label_smoothing=optim.get("label_smoothing", 0.0),
        channels_last=cfg.get("channels_last", False),
        compile=cfg.get("compile", False),
        backbone_lr_scale=optim.get("backbone_lr_scale"),
    )


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
