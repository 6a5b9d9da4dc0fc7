"""Test-time averaging over positions of the mel window: does it help? (docs/results.md, row 14)

The 64-mel recipes train on a 56-mel window at a random height (offsets 0-8) and evaluate the
centred one (offset 4). This scores each checkpoint at every offset, and averages the class
probabilities over a few sets of offsets, all over every frame of the clip:

    python docs/results/mel_window_shifts.py CKPT [CKPT ...] [--fold 1]

Not part of the package: it answered one question, and the answer (no consistent gain) is why
evaluation stays on the centred window.
"""

from __future__ import annotations

import argparse

import torch
from esc50_lightning.conf import CONF_DIR
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from esc50_lightning.factory import load_classifier
from esc50_lightning.tasks.evaluate import eval_data_config

OFFSET_SETS = {"centre": None, "all": "all", "2-6": range(2, 7), "3-5": range(3, 6)}


def score(ckpt: str, fold: int) -> dict[str, tuple[float, float]]:
    module, info = load_classifier(ckpt)
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose("eval", overrides=[f"data.fold={fold}"])
    data_cfg = eval_data_config(info["config"]["data"], cfg, fold)
    datamodule = instantiate(data_cfg, frontend=module.features.logmel)
    datamodule.setup("test")
    window = module.features.crop[0]
    module.features.set_eval_crop(None)  # standardised, every mel and frame; windows cut below
    logits: dict[int, list[torch.Tensor]] = {}
    labels = []
    with torch.inference_mode():
        for batch in datamodule.test_dataloader():
            x = module.features(batch["x"])
            labels.append(batch["y"])
            for offset in range(x.shape[2] - window + 1):
                logits.setdefault(offset, []).append(module.net(x[:, :, offset : offset + window]))
    y = torch.cat(labels)
    per_offset = {k: torch.cat(v) for k, v in logits.items()}
    centre = (len(per_offset) - 1) // 2
    results = {}
    for name, offsets in OFFSET_SETS.items():
        chosen = [centre] if offsets is None else list(per_offset if offsets == "all" else offsets)
        probs = torch.stack([per_offset[k].softmax(dim=1) for k in chosen]).mean(dim=0)
        acc = (probs.argmax(dim=1) == y).float().mean().item()
        nll = torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), y).item()
        results[name] = (acc, nll)
    for k, v in per_offset.items():
        results[f"offset {k}"] = ((v.argmax(dim=1) == y).float().mean().item(), float("nan"))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", nargs="+")
    parser.add_argument("--fold", type=int, default=1)
    args = parser.parse_args()
    for ckpt in args.ckpt:
        results = score(ckpt, args.fold)
        print(ckpt)
        for name, (acc, nll) in results.items():
            print(f"  {name:>10}: acc {acc:.4f}" + ("" if nll != nll else f"  loss {nll:.4f}"))


if __name__ == "__main__":
    main()
