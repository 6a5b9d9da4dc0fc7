"""The training-only augmentation chain (``augmentation.chain``): ``nn.Module`` entries the frontend
runs on the training device, each at the stage of the frontend it declares (``acts_on``), on a
``Batch`` of clips and their labels, so that an entry mixing two clips mixes their labels too."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from esc50_lightning.errors import UserError

# Where in the frontend an entry runs, in this order (the frontend's own steps in between):
#   waveform  raw audio (B, samples), before the log-mel; only when batches carry waveforms
#   logmel    whole-clip dB log-mels (B, F, T), before standardisation and the crop
#   crop      the training cut itself: ``cut(x, size)`` in place of the plain random crop (one at most)
#   input     the standardised crop the network sees (B, F', T')
STAGES = ("waveform", "logmel", "crop", "input")

# A label term's weight: one number for the whole batch, or a (B,) tensor, one per clip.
Weight = float | torch.Tensor


@dataclass(frozen=True)
class Batch:
    """Clips ``x`` and their labels as weighted terms: the loss is ``Σ weight · CE(logits, labels)``.
    Unmixed clips have one term of weight 1; mixing clip ``i`` with clip ``partner[i]`` at
    ``w : 1 - w`` splits every term in two."""

    x: torch.Tensor
    targets: tuple[tuple[Weight, torch.Tensor], ...] = ()

    @classmethod
    def of(cls, x: torch.Tensor, labels: torch.Tensor | None = None) -> Batch:
        return cls(x, () if labels is None else ((1.0, labels),))

    def replace(self, x: torch.Tensor) -> Batch:
        """The same labels with new clips (an augmentation that leaves labels alone)."""
        return dataclasses.replace(self, x=x)

    def mixed(self, x: torch.Tensor, weight: Weight, partner: torch.Tensor) -> Batch:
        """``x``, every clip ``i`` mixed with clip ``partner[i]`` at ``weight : 1 - weight``, and the
        labels weighted likewise."""
        own = tuple((w * weight, y) for w, y in self.targets)
        other = tuple((w * (1 - weight), y[partner]) for w, y in self.targets)
        return Batch(x, own + other)


def dominant_labels(targets: Sequence[tuple[Weight, torch.Tensor]]) -> torch.Tensor:
    """Each clip's label of largest weight (the first on a tie): what accuracy counts for a mix."""
    if not any(isinstance(w, torch.Tensor) for w, _ in targets):
        return max(targets, key=lambda term: term[0])[1]  # max keeps the first of equals
    labels = torch.stack([y for _, y in targets])
    # a number becomes a row filled on the device (a tensor from the host would be a copy per step)
    weights = torch.stack(
        [
            w if isinstance(w, torch.Tensor) else torch.full_like(labels[0], w, dtype=torch.float32)
            for w, _ in targets
        ]
    )
    return labels.gather(0, weights.argmax(dim=0, keepdim=True))[0]


class Augmentation(nn.Module):
    """An entry of ``augmentation.chain``. Set ``acts_on`` (one of ``STAGES``) and write
    ``transform(x)``; an entry that changes labels (mixing) writes ``forward(batch)`` instead, and
    a ``crop`` entry writes ``cut(x, size)``. Entries run in training only; checkpoints hold none,
    so an entry keeps no parameters or persistent buffers."""

    acts_on: str = "logmel"

    def forward(self, batch: Batch) -> Batch:
        return batch.replace(self.transform(batch.x))

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__}: write transform(x), or forward(batch) for labels")


class AugmentationChain(nn.Module):
    """Named entries in the order they run: grouped by stage (``STAGES``), within a stage as given."""

    def __init__(self, entries: Mapping[str, Augmentation] | None = None):
        super().__init__()
        entries = dict(entries or {})
        for name, entry in entries.items():
            _check(name, entry)
        ordered = sorted(entries.items(), key=lambda item: STAGES.index(item[1].acts_on))  # stable
        self.entries = nn.ModuleDict(ordered)
        crops = [name for name, entry in ordered if entry.acts_on == "crop"]
        if len(crops) > 1:
            raise UserError(
                f"augmentation.chain: {' and '.join(crops)} both cut the training crop; keep one "
                f"(e.g. '~augmentation.chain.{crops[-1]}')"
            )

    def at(self, stage: str) -> list[Augmentation]:
        return [entry for entry in self.entries.values() if entry.acts_on == stage]

    def run(self, stage: str, batch: Batch) -> Batch:
        for entry in self.at(stage):
            batch = entry(batch)
        return batch

    def extra_repr(self) -> str:
        return " -> ".join(f"{name} ({entry.acts_on})" for name, entry in self.entries.items())


def _check(name: str, entry: object) -> None:
    """One line for an entry the chain cannot run."""
    key = f"augmentation.chain.{name}"
    if not isinstance(entry, Augmentation):
        raise UserError(
            f"{key}: {type(entry).__module__}.{type(entry).__name__} is not an "
            "esc50_lightning.features.Augmentation: subclass it and set acts_on (docs/extending.md)"
        )
    if entry.acts_on not in STAGES:
        raise UserError(f"{key}: acts_on={entry.acts_on!r} must be one of {', '.join(STAGES)}")
    if entry.acts_on == "crop" and not hasattr(entry, "cut"):
        raise UserError(f"{key}: an entry acting on the crop writes cut(x, size)")
    if held := list(entry.state_dict()):
        raise UserError(
            f"{key}: {type(entry).__name__} holds {', '.join(held[:3])}; checkpoints hold no augmentation, "
            "so register tensors with register_buffer(..., persistent=False)"
        )
