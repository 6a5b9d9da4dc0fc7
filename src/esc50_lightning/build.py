"""Build the pieces a config names, and rebuild a trained model from its checkpoint."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from esc50_lightning.checkpoint_io import atomic_torch_save
from esc50_lightning.classifier import AudioClassifier, SchedulerFactory
from esc50_lightning.errors import UserError
from esc50_lightning.features import FeatureExtractor, LogMel
from esc50_lightning.features.frontend import SAME_AS_CROP, CropSize, clip_samples
from esc50_lightning.models.blocks import InputNorm
from esc50_lightning.schedules import try_schedule

# ``eval_crop`` value (eval.py, build) meaning "keep the cut the checkpoint was configured with".
KEEP_EVAL_CROP = "checkpoint"


def build_logmel(cfg: DictConfig) -> LogMel:
    return instantiate(cfg.features.logmel)


def crop_from_config(value: Any) -> Any:
    """A crop from the config: its list becomes a tuple; ``None`` and names pass through."""
    return value if value is None or isinstance(value, str) else tuple(value)


def build_features(cfg: DictConfig, logmel: LogMel | None = None) -> FeatureExtractor:
    logmel = logmel or build_logmel(cfg)
    aug = cfg.augmentation
    augment = instantiate(aug.spec_augment) if aug.spec_augment else None
    # Checkpoints from before these keys existed trained without them.
    mixstyle = None
    if aug.get("freq_mixstyle"):
        if not isinstance(aug.freq_mixstyle, DictConfig) or "_target_" not in aug.freq_mixstyle:
            raise UserError(
                f"augmentation.freq_mixstyle={aug.freq_mixstyle} must be null or "
                "{_target_:esc50_lightning.features.FreqMixStyle,p:0.4,alpha:0.4}"
            )
        mixstyle = instantiate(aug.freq_mixstyle)
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
    net = instantiate(cfg.model.net, num_classes=len(class_names))
    features = build_features(cfg, logmel)
    check_input_rows(net, features)
    optim = cfg.optim
    return AudioClassifier(
        net=net,
        features=features,
        optimizer=instantiate(optim.optimizer),
        scheduler=build_scheduler(optim),
        scheduler_interval=optim.get("scheduler_interval", "epoch"),
        class_names=class_names,
        mixup_alpha=cfg.augmentation.get("mixup_alpha", 0.0),
        mixup_mode=cfg.augmentation.get("mixup_mode", "logmel"),
        label_smoothing=optim.get("label_smoothing", 0.0),
        channels_last=cfg.get("channels_last", False),
        compile=cfg.get("compile", False),
    )


def build_scheduler(optim: DictConfig) -> SchedulerFactory | None:
    """The learning-rate schedule the config names, as a factory of the run's optimiser. It is
    tried once on a throwaway optimiser here, so that a bad setting stops the command before
    training with one line, not with a traceback once the run has started."""
    if not optim.get("scheduler"):
        return None
    factory = instantiate(optim.scheduler)
    try:
        try_schedule(factory)
    except (ValueError, TypeError) as err:
        raise UserError(f"optim.scheduler ({optim.scheduler.get('_target_')}): {err}") from err
    return factory


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise UserError(f"{path}: not a readable checkpoint ({err.__class__.__name__})") from err
    if not isinstance(ckpt, dict) or "esc50" not in ckpt or "state_dict" not in ckpt:
        raise UserError(f"{path}: not an esc50-lightning checkpoint (no 'esc50' run record)")
    return ckpt


def _plain_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """State-dict keys as an uncompiled module has them (torch.compile inserts ``._orig_mod.``)."""
    return {k.replace("._orig_mod.", "."): v for k, v in state.items()}


def _offline_net(net: dict[str, Any]) -> dict[str, Any]:
    """A copy of a ``model.net`` config that downloads nothing: weights come from the checkpoint."""
    net = copy.deepcopy(net)
    if "pretrained" in net:
        net["pretrained"] = False
    return net


def load_classifier(path: str | Path) -> tuple[AudioClassifier, dict[str, Any]]:
    """Rebuild the module a checkpoint was trained with, weights loaded, in eval mode."""
    ckpt = read_checkpoint(path)
    info = ckpt["esc50"]
    config = copy.deepcopy(info["config"])
    config["model"]["net"] = _offline_net(config["model"]["net"])
    config["compile"] = False
    module = build_module(OmegaConf.create(config), list(info["data"]["class_names"]))
    module.load_state_dict(_plain_state_dict(ckpt["state_dict"]))
    module.run_info = info
    module.history = list(info.get("history", []))
    return module.eval(), info


def slim_checkpoint(
    src: str | Path,
    dst: str | Path,
    half: bool = True,
    eval_crop: list[CropSize] | str | None = KEEP_EVAL_CROP,
) -> Path:
    """Weights and run record only (no optimiser or callback state): what one ships to users.

    ``half`` stores floating-point weights as float16 (half the size); ``load_classifier`` casts
    them back to float32. ``eval_crop`` other than ``KEEP_EVAL_CROP`` sets the centred cut the
    result scores (``features.eval_crop``); the weights do not depend on it, and the run record
    notes the change.
    """
    ckpt = read_checkpoint(src)
    info = copy.deepcopy(ckpt["esc50"])
    if eval_crop != KEEP_EVAL_CROP:
        features = build_features(OmegaConf.create(info["config"]))
        previous = features.eval_shape
        features.set_eval_crop(eval_crop)  # refuses a cut that does not fit
        info["config"]["features"]["eval_crop"] = eval_crop
        info["eval_crop_set_by_build"] = {"from": list(previous), "to": eval_crop}
    slim = {"state_dict": ckpt["state_dict"], "esc50": info, "epoch": ckpt.get("epoch")}
    return _save_slim(slim, dst, half)


_WHOLE = ("null", "none", "full")  # spellings of "no cut": the whole axis, or the whole spectrogram


def parse_crop(text: str) -> list[CropSize] | None:
    """``"56,null"`` → ``[56, None]``; ``"null"`` → ``None`` (the whole spectrogram)."""

    def entry(value: str) -> CropSize:
        value = value.strip()
        if value in _WHOLE:
            return None
        try:
            return int(value)
        except ValueError:
            pass
        try:
            return float(value)
        except ValueError:
            raise UserError(
                f"--eval-crop {text}: {value!r} is not a number of bins, a fraction or null"
            ) from None

    if text.strip() in _WHOLE:
        return None
    parts = text.split(",")
    if len(parts) != 2:
        raise UserError(f"--eval-crop {text}: give MELS,FRAMES (e.g. 56,null) or null")
    return [entry(p) for p in parts]


# What members of one ensemble must share: the same input features from the same clips, and
# the same held-out fold (an ensemble with one member that trained on it is not an evaluation).
_SHARED_DATA = ("dataset", "fold", "protocol", "splits", "class_names", "sample_rate", "clip_seconds")


def ensemble_checkpoint(srcs: list[str | Path], dst: str | Path, half: bool = True) -> Path:
    """One checkpoint that averages the class probabilities of several trained checkpoints.

    The members must have been trained on the same folds with the same features (they share one
    frontend); eval.py and predict load the result like any other checkpoint.
    """
    if len(srcs) < 2:
        raise UserError(f"an ensemble needs at least two checkpoints, got {len(srcs)}")
    ckpts = [read_checkpoint(src) for src in srcs]
    first = ckpts[0]["esc50"]
    for src, ckpt in zip(srcs[1:], ckpts[1:], strict=True):
        info = ckpt["esc50"]
        for key in _SHARED_DATA:
            if info["data"].get(key) != first["data"].get(key):
                raise UserError(
                    f"{src}: data {key} {info['data'].get(key)!r} differs from {srcs[0]}'s "
                    f"{first['data'].get(key)!r}; ensemble members must share folds and classes"
                )
        if info["config"]["features"] != first["config"]["features"]:
            raise UserError(
                f"{src}: its features config differs from {srcs[0]}'s; members must share one frontend"
            )

    record = copy.deepcopy(first)
    names = [ckpt["esc50"].get("model_name", "?") for ckpt in ckpts]
    record["model_name"] = f"ensemble of {len(ckpts)} ({', '.join(names)})"
    record["config"]["model"] = {
        "name": "ensemble",
        "net": {
            "_target_": "esc50_lightning.models.Ensemble",
            "members": [
                {
                    **_offline_net(ckpt["esc50"]["config"]["model"]["net"]),
                    "num_classes": len(record["data"]["class_names"]),
                }
                for ckpt in ckpts
            ],
        },
    }
    record["history"] = []
    record["members"] = [
        {
            "source": str(src),
            "model_name": ckpt["esc50"].get("model_name"),
            "seed": ckpt["esc50"]["config"].get("seed"),
            "final_epoch": (ckpt["esc50"].get("history") or [None])[-1],
        }
        for src, ckpt in zip(srcs, ckpts, strict=True)
    ]

    state: dict[str, torch.Tensor] = {}
    for i, ckpt in enumerate(ckpts):
        for key, value in _plain_state_dict(ckpt["state_dict"]).items():
            if key.startswith("net."):
                state[f"net.members.{i}.{key.removeprefix('net.')}"] = value
            elif i == 0:  # the shared frontend's buffers
                state[key] = value
    return _save_slim({"state_dict": state, "esc50": record, "epoch": None}, dst, half)


def _save_slim(ckpt: dict[str, Any], dst: str | Path, half: bool) -> Path:
    if half:
        state = ckpt["state_dict"]
        ckpt["state_dict"] = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    dst = Path(dst)
    atomic_torch_save(ckpt, dst)
    return dst


def main(argv: list[str] | None = None) -> None:
    """``python -m esc50_lightning.build SRC.ckpt [SRC.ckpt ...] DST.ckpt [--fp32]``: write a slim
    checkpoint; with several sources, one that averages their predictions (an ensemble)."""
    import argparse

    from esc50_lightning.errors import run_guarded

    parser = argparse.ArgumentParser(prog="python -m esc50_lightning.build", description=main.__doc__)
    parser.add_argument("src", nargs="+", help="trained checkpoint(s); several make an ensemble")
    parser.add_argument("dst")
    parser.add_argument("--fp32", action="store_true", help="keep float32 weights")
    parser.add_argument(
        "--eval-crop",
        metavar="MELS,FRAMES",
        help="centred cut the checkpoint scores from now on, e.g. 56,null (null: the whole axis)",
    )
    args = parser.parse_args(argv)

    def build() -> Path:
        if len(args.src) == 1:
            crop = KEEP_EVAL_CROP if args.eval_crop is None else parse_crop(args.eval_crop)
            return slim_checkpoint(args.src[0], args.dst, half=not args.fp32, eval_crop=crop)
        if args.eval_crop is not None:
            raise UserError("--eval-crop applies to one checkpoint; set it on the members first")
        return ensemble_checkpoint(args.src, args.dst, half=not args.fp32)

    out = run_guarded(build)
    print(f"{out} ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
