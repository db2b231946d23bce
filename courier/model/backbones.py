"""Image encoder ``IB``: backbone + linear head, images [N, 3, H, W] -> [N, d].

No projection head on top (paper appendix D: it hurts). Weights only ever come
from a local file; every torchvision constructor is called with ``weights=None``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from courier.config.model import Backbone, ModelConfig
from courier.model.resnet import build_resnet
from courier.model.small_cnn import SmallCNN
from courier.model.swin import build_swin_t

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneFamily:
    """How one ``model.backbone`` is built, and which keys of its state dict are the head.

    Attributes:
        build: (embedding_dim, gradient_checkpointing) -> the backbone with a linear head to ``d``.
        head_prefix: keys of the classification head that ``embedding_dim`` replaces; these are
            never loaded from a weights file (ImageNet's head is a 1000-way classifier).
    """

    build: Callable[[int, bool], nn.Module]
    head_prefix: str


# The one registry of model.backbone: adding a backbone adds its entry here (and its Backbone
# member; tests/unit/test_registries.py checks that the two agree).
BACKBONE_FAMILIES: dict[Backbone, BackboneFamily] = {
    Backbone.SWIN_T: BackboneFamily(build_swin_t, "head."),
    Backbone.RESNET18: BackboneFamily(lambda d, gc: build_resnet("resnet18", d, gc), "fc."),
    Backbone.RESNET50: BackboneFamily(lambda d, gc: build_resnet("resnet50", d, gc), "fc."),
    Backbone.SMALL_CNN: BackboneFamily(
        lambda d, gc: SmallCNN(d, gradient_checkpointing=gc), "head."
    ),
}
HEAD_PREFIXES: dict[str, str] = {
    name.value: family.head_prefix for name, family in BACKBONE_FAMILIES.items()
}
# Wrappers that prefix every key of a saved state dict (DDP, torch.compile).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class ImageEncoder(nn.Module):
    """Backbone wrapper that owns the input memory format.

    Attributes:
        backbone: the family's module (keys as in torchvision for swin/resnet).
        embedding_dim: output size ``d``.
    """

    def __init__(self, backbone: nn.Module, embedding_dim: int, channels_last: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.embedding_dim = embedding_dim
        self.channels_last = channels_last

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] float, ImageNet-normalised -> raw embeddings [N, d]."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.backbone(images)


@dataclass(frozen=True)
class WeightLoadReport:
    """What ``load_backbone_weights`` did (also logged)."""

    path: str
    n_loaded: int
    ignored_head_keys: tuple[str, ...]


def _extract_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    # Accept a bare state dict or the usual {"state_dict": ...}/{"model": ...} checkpoint.
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (mapping of name -> tensor)")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def _preview(keys: list[str], limit: int = 15) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_backbone_weights(
    backbone: nn.Module, path: str | Path, head_prefix: str
) -> WeightLoadReport:
    """Load a local state dict into ``backbone``, all keys but the head.

    Strict on everything except the head: a missing, unexpected or wrongly
    shaped key raises ``ValueError`` listing them, because a half-loaded
    backbone (wrong family, wrong file) trains silently but badly.

    Raises:
        FileNotFoundError: ``path`` is not an existing file (nothing is downloaded).
        ValueError: the file does not match the backbone.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained_weights_path {str(path)!r} does not exist. Weights are never downloaded: "
            "place the state dict file there, or set pretrained_weights_path to null for random "
            "init."
        )
    state = _extract_state_dict(torch.load(path, map_location="cpu", weights_only=True), path)
    ignored = tuple(sorted(k for k in state if k.startswith(head_prefix)))
    state = {k: v for k, v in state.items() if not k.startswith(head_prefix)}

    own = backbone.state_dict()
    expected = {k for k in own if not k.startswith(head_prefix)}
    missing = sorted(expected - state.keys())
    unexpected = sorted(state.keys() - expected)
    mismatched = sorted(
        f"{k} (file {tuple(state[k].shape)} vs model {tuple(own[k].shape)})"
        for k in expected & state.keys()
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing {len(missing)}: {_preview(missing)}")
        if unexpected:
            problems.append(f"unexpected {len(unexpected)}: {_preview(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatch {len(mismatched)}: {_preview(mismatched)}")
        raise ValueError(f"weights file {path} does not match the backbone; " + "; ".join(problems))

    backbone.load_state_dict(state, strict=False)
    report = WeightLoadReport(path=str(path), n_loaded=len(state), ignored_head_keys=ignored)
    log.info(
        "loaded %d tensors from %s; ignored head keys %s; head %s* randomly initialised",
        report.n_loaded,
        path,
        list(ignored),
        head_prefix,
    )
    return report


def build_image_encoder(cfg: ModelConfig) -> ImageEncoder:
    """Build ``IB`` for ``cfg``: images [N, 3, H, W] (ImageNet-normalised) -> [N, d].

    Random init, then ``cfg.pretrained_weights_path`` (if set) loaded with the
    classification head ignored. The returned module outputs raw (not
    L2-normalised) embeddings.
    """
    family = BACKBONE_FAMILIES[cfg.backbone]  # ModelConfig checked the choice
    backbone = family.build(cfg.embedding_dim, cfg.gradient_checkpointing)
    if cfg.pretrained_weights_path is not None:
        load_backbone_weights(backbone, cfg.pretrained_weights_path, family.head_prefix)
    encoder = ImageEncoder(backbone, cfg.embedding_dim, cfg.channels_last)
    if cfg.channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # not in torch's stubs
    if cfg.compile:
        # The number of valid images changes every batch: compile for dynamic N.
        encoder.compile(dynamic=True)  # type: ignore[no-untyped-call]  # untyped in torch
    return encoder
