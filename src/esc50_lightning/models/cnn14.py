"""PANNs' CNN14 (Kong et al., 2020) over ``(B, 1, 64, T)`` log-mels, loadable from the published
AudioSet checkpoint (``Cnn14_mAP=0.431.pth``).

The network sees the log-mel of ``features=logmel_panns`` (32 kHz, 64 slaney mel bins from 50 Hz
to 14 kHz, ``10 log10`` power, no standardisation). Its first layer is the batch norm of every
mel row that was trained with the checkpoint (PANNs' ``bn0``). Six blocks of two 3x3 conv layers
with 2x2 average pooling after the first five, mean over frequency, max + mean over time, a 2048-d
embedding layer (``fc1``) and a linear head: 527 AudioSet tags, or a new head for the dataset.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from esc50_lightning.checkpoints.record import load_weights_only
from esc50_lightning.downloads import fetch, pretrained_dir
from esc50_lightning.errors import UserError
from esc50_lightning.models.blocks import InputNorm

AUDIOSET_CLASSES = 527
MEL_BINS = 64
WIDTHS = (64, 128, 256, 512, 1024, 2048)
EMBEDDING = 2048

# The published checkpoint (PANNs, Zenodo record 3987831).
CHECKPOINT_NAME = "Cnn14_mAP=0.431.pth"
CHECKPOINT_URL = "https://zenodo.org/record/3987831/files/Cnn14_mAP%3D0.431.pth?download=1"
# Below this a download is an error page or cut short (the published file is about 327 MB).
SMALLEST_CHECKPOINT = 300_000_000
DOWNLOAD = "download"


class ConvPair(nn.Module):
    """Two 3x3 conv layers (no bias), each with batch norm and ReLU."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(x)))


def published_key(ours: str) -> str:
    """The name a parameter of ours has in the published checkpoint."""
    if ours.startswith("input_norm.bn."):
        return "bn0." + ours.removeprefix("input_norm.bn.")
    if ours.startswith("blocks."):
        _, index, rest = ours.split(".", 2)
        return f"conv_block{int(index) + 1}.{rest}"
    if ours.startswith("embed."):
        return "fc1." + ours.removeprefix("embed.")
    if ours.startswith("head."):
        return "fc_audioset." + ours.removeprefix("head.")
    return ours


class Cnn14(nn.Module):
    """CNN14 over ``(B, 1, 64, frames)`` log-mels in dB; ``weights`` loads the published checkpoint.

    ``weights``: ``None`` (random initialisation), a path to the published file (a dict whose
    ``model`` entry is the state dict) or ``"download"`` (fetched once into ``cache_dir``).
    The 527-class AudioSet head is replaced by a new ``num_classes`` head unless
    ``keep_audioset_head`` is true. ``dropout`` is PANNs' 0.2 after every block and
    ``head_dropout`` their 0.5 before and after the embedding layer.
    """

    # Where pretrained weights come from: never recorded in, nor rebuilt from, a checkpoint.
    weight_arguments = ("weights", "cache_dir", "url", "sha256", "size")

    def __init__(
        self,
        num_classes: int = 50,
        weights: str | None = None,
        keep_audioset_head: bool = False,
        dropout: float = 0.2,
        head_dropout: float = 0.5,
        cache_dir: str | None = None,
        url: str = CHECKPOINT_URL,
        sha256: str | None = None,
        size: int | None = None,
    ):
        super().__init__()
        self.keep_audioset_head = bool(keep_audioset_head)
        self.input_norm = InputNorm(MEL_BINS)
        widths = (1, *WIDTHS)
        self.blocks = nn.ModuleList(ConvPair(i, o) for i, o in itertools.pairwise(widths))
        self.dropout = dropout
        self.head_dropout = head_dropout
        self.embed = nn.Linear(EMBEDDING, EMBEDDING)
        self.head = nn.Linear(EMBEDDING, AUDIOSET_CLASSES if self.keep_audioset_head else num_classes)
        self._init_weights()
        if weights:
            path = (
                download_checkpoint(cache_dir, url=url, sha256=sha256, size=size)
                if weights == DOWNLOAD
                else Path(weights).expanduser()
            )
            self.load_published(path)
        self.pretrained = bool(weights)

    def check_frontend(self, logmel: nn.Module) -> None:
        """Published weights need the frontend they were trained on: refuse any other, in one line."""
        from esc50_lightning.features.logmel import PANNS

        got = {k: getattr(logmel.mel, k, None) for k in ("sample_rate", "n_fft", "hop_length", "n_mels")}
        got.update(f_min=logmel.mel.f_min, f_max=logmel.mel.f_max)
        same = all(float(got[k]) == float(v) for k, v in PANNS.items())
        same = same and getattr(logmel, "mel_scale", None) == "slaney" and logmel.to_db.top_db is None
        if self.pretrained and not same:
            raise UserError(
                "model=cnn14 with published weights needs PANNs' frontend at 32 kHz: "
                "features=logmel_panns data.dataset.sample_rate=32000 (experiment=cnn14_finetune sets both)"
            )

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Everything but the head: the part trained on AudioSet."""
        return [p for name, p in self.named_parameters() if not name.startswith("head.")]

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """The 2048-d clip embedding (``fc1`` after ReLU) of ``(B, 1, 64, frames)`` log-mels."""
        x = self.input_norm(x).transpose(2, 3)  # PANNs convolve (time, mel): the same kernels
        for n, block in enumerate(self.blocks):
            x = block(x)
            if n < len(self.blocks) - 1:
                x = F.avg_pool2d(x, 2)
            x = F.dropout(x, self.dropout, self.training)
        x = x.mean(dim=3)  # over mel bins: (B, C, time)
        x = x.amax(dim=2) + x.mean(dim=2)
        x = F.dropout(x, self.head_dropout, self.training)
        return F.relu(self.embed(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (AudioSet's are multi-label: ``sigmoid`` gives PANNs' ``clipwise_output``)."""
        return self.head(F.dropout(self.embedding(x), self.head_dropout, self.training))

    # ---- the published checkpoint ------------------------------------------------------------
    def load_published(self, path: str | Path) -> None:
        """Load the backbone (and, with ``keep_audioset_head``, the head) from a PANNs checkpoint."""
        state = read_published(path)
        ours = self.state_dict()
        wanted = {k: published_key(k) for k in ours if self.keep_audioset_head or not k.startswith("head.")}
        missing = [theirs for theirs in wanted.values() if theirs not in state]
        if missing:
            raise UserError(
                f"{path}: not a CNN14 checkpoint: {len(missing)} of its weights are missing "
                f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})"
            )
        wrong = [
            f"{theirs} {tuple(state[theirs].shape)}, expected {tuple(ours[k].shape)}"
            for k, theirs in wanted.items()
            if tuple(state[theirs].shape) != tuple(ours[k].shape)
        ]
        if wrong:
            raise UserError(f"{path}: not a CNN14 checkpoint: mismatched weights ({'; '.join(wrong[:3])})")
        check_filterbank(path, state)
        self.load_state_dict({k: state[theirs] for k, theirs in wanted.items()}, strict=False)


def read_published(path: str | Path) -> Mapping[str, torch.Tensor]:
    """The state dict of a PANNs checkpoint (``{"model": state_dict, ...}``), read weights-only."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"{path}: CNN14 weights not found; download {CHECKPOINT_NAME} from {CHECKPOINT_URL} "
            "and set model.net.weights to its path"
        )
    ckpt = load_weights_only(path, what="CNN14 checkpoint")
    state = ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: not a CNN14 checkpoint (no 'model' entry holding a state dict)")
    return state


def check_filterbank(path: str | Path, state: Mapping[str, torch.Tensor]) -> None:
    """The checkpoint's own mel filterbank, when it has one, must be ours (``logmel_panns``)."""
    theirs = state.get("logmel_extractor.melW")
    if theirs is None:
        return
    from esc50_lightning.features.logmel import panns_filterbank

    ours = panns_filterbank()
    if tuple(theirs.shape) != tuple(ours.shape) or (theirs.float() - ours).abs().max() > 1e-6:
        raise UserError(
            f"{path}: its mel filterbank {tuple(theirs.shape)} is not the 32 kHz, 64-bin, 50-14000 Hz "
            "one of features=logmel_panns: a CNN14 checkpoint for another frontend"
        )


def download_checkpoint(
    cache_dir: str | Path | None = None,
    url: str = CHECKPOINT_URL,
    sha256: str | None = None,
    size: int | None = None,
) -> Path:
    """The published checkpoint in ``cache_dir`` (default: the cache folder's ``pretrained/``),
    downloaded once; checked for ``size`` (else a floor) and ``sha256`` when they are set."""
    folder = Path(cache_dir).expanduser() if cache_dir else pretrained_dir()
    dest = folder / CHECKPOINT_NAME
    return fetch(
        url,
        dest,
        sha256=sha256,
        size=size,
        min_size=None if size is not None else SMALLEST_CHECKPOINT,
        what="CNN14 weights",
        instead=f"fetch it elsewhere and save it as {dest} "
        f"(or set model.net.weights=/path/to/{CHECKPOINT_NAME})",
    )
