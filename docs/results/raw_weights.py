"""The EMA ablated after the fact: score a run's raw weights instead of their moving average.

``callbacks=ema`` (Lightning's ``WeightAveraging``) only reads the weights; it never changes what
the optimiser does. A checkpoint it wrote holds the average as ``state_dict`` and the raw weights
as ``current_model_state``, so the same run without the EMA is already on disk. This writes a
copy of a checkpoint with the raw weights in place of the average, for ``eval.py`` to score:

    python docs/results/raw_weights.py <run>/checkpoints/last.ckpt raw.ckpt
    python eval.py ckpt_path=raw.ckpt data.fold=1 'eval_crop=[56,null]'

Not part of the package: it answered one question (docs/results.md, "What we tried", row 15).
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="a checkpoint train.py wrote with callbacks=ema")
    parser.add_argument("out", help="where to write the copy with the raw weights")
    args = parser.parse_args()
    ckpt = torch.load(args.ckpt, map_location="cpu", weights_only=False)
    if "current_model_state" not in ckpt:
        parser.error(f"{args.ckpt}: no raw weights in it (was it trained with callbacks=ema?)")
    ckpt["state_dict"] = ckpt.pop("current_model_state")
    del ckpt["averaging_state"]  # resuming from the copy must not restore the old average
    torch.save(ckpt, args.out)


if __name__ == "__main__":
    main()
