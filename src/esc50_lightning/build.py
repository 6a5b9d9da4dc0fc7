"""Build the pieces a config names, and rebuild a trained model from its checkpoint."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from esc50_lightning.classifier import AudioClassifier
from esc50_lightning.errors import UserError
from esc50_lightning.features import FeatureExtractor, LogMel
from esc50_lightning.features.frontend import clip_samples


def build_logmel(cfg: DictConfig) -> LogMel:
    return instantiate(cfg.features.logmel)


def build_features(cfg: DictConfig, logmel: LogMel | None = None) -> FeatureExtractor:
    logmel = logmel or build_logmel(cfg)
    augment = instantiate(cfg.augmentation.spec_augment) if cfg.augmentation.spec_augment else None
    crop = cfg.features.crop
    return FeatureExtractor(
        logmel,
        clip_samples(cfg.data.dataset.sample_rate, cfg.data.dataset.clip_seconds),
        crop=None if crop is None else tuple(crop),
        normalize=cfg.features.normalize,
        augment=augment,
    )


def build_module(cfg: DictConfig, class_names: list[str], logmel: LogMel | None = None) -> AudioClassifier:
    net = instantiate(cfg.model.net, num_classes=len(class_names))
    optim = cfg.optim
    return AudioClassifier(
        net=net,
        features=build_features(cfg, logmel),
        optimizer=instantiate(optim.optimizer),
        scheduler=instantiate(optim.scheduler) if optim.get("scheduler") else None,
        scheduler_interval=optim.get("scheduler_interval", "epoch"),
        class_names=class_names,
        mixup_alpha=cfg.augmentation.get("mixup_alpha", 0.0),
        label_smoothing=optim.get("label_smoothing", 0.0),
        channels_last=cfg.get("channels_last", False),
        compile=cfg.get("compile", False),
    )


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


def load_classifier(path: str | Path) -> tuple[AudioClassifier, dict[str, Any]]:
    """Rebuild the module a checkpoint was trained with, weights loaded, in eval mode."""
    ckpt = read_checkpoint(path)
    info = ckpt["esc50"]
    cfg = OmegaConf.create(copy.deepcopy(info["config"]))
    with open_dict(cfg):
        if "pretrained" in cfg.model.net:
            cfg.model.net.pretrained = False  # weights come from the checkpoint
        cfg.compile = False
    module = build_module(cfg, list(info["data"]["class_names"]))
    state = {k.replace("._orig_mod.", "."): v for k, v in ckpt["state_dict"].items()}
    module.load_state_dict(state)
    module.run_info = info
    module.history = list(info.get("history", []))
    return module.eval(), info


def slim_checkpoint(src: str | Path, dst: str | Path, half: bool = True) -> Path:
    """Weights and run record only (no optimiser or callback state): what one ships to users.

    ``half`` stores floating-point weights as float16 (half the size); ``load_classifier`` casts
    them back to float32.
    """
    ckpt = read_checkpoint(src)
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in ckpt["state_dict"].items()}
    slim = {"state_dict": state, "esc50": ckpt["esc50"], "epoch": ckpt.get("epoch")}
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(dst.suffix + ".tmp")
    torch.save(slim, tmp)
    tmp.replace(dst)
    return dst


def main(argv: list[str] | None = None) -> None:
    """``python -m esc50_lightning.build SRC.ckpt DST.ckpt [--fp32]``: write a slim checkpoint."""
    import argparse

    from esc50_lightning.errors import run_guarded

    parser = argparse.ArgumentParser(prog="python -m esc50_lightning.build", description=main.__doc__)
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--fp32", action="store_true", help="keep float32 weights")
    args = parser.parse_args(argv)
    out = run_guarded(lambda: slim_checkpoint(args.src, args.dst, half=not args.fp32))
    print(f"{out} ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
