"""Typed, frozen configuration of the COURIER image model
and its losses (``model``, ``loss``; courier/model/).

Fields are plain types (str, int, float, bool, None) or closed choices (``StrEnum``, equal to
their strings) so that the dataclasses can be built directly from parsed YAML
(``ModelConfig(**yaml_dict["model"])``). Invalid values fail at construction, not deep
inside a training step.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from courier.checks import choices, coerce_choices


class Backbone(StrEnum):
    """``model.backbone``; each is built by its entry
    of courier.model.backbones.BACKBONE_FAMILIES."""

    SWIN_T = "swin_t"
    RESNET18 = "resnet18"
    RESNET50 = "resnet50"
    SMALL_CNN = "small_cnn"


class Ablation(StrEnum):
    """``loss.ablation``: which part of the COURIER loss is switched off (paper table 6)."""

    NONE = "none"
    NO_UCS = "no_ucs"
    NO_CONTRAST = "no_contrast"
    NO_RECONSTRUCTION = "no_reconstruction"
    NO_NEG_PV = "no_neg_pv"


BACKBONES: tuple[str, ...] = choices(Backbone)
ABLATIONS: tuple[str, ...] = choices(Ablation)


@dataclass(frozen=True)
class ModelConfig:
    """Image backbone settings.

    Attributes:
        backbone: one of ``BACKBONES``.
        embedding_dim: output size ``d`` of the linear head (the paper: 256).
        pretrained_weights_path: local ``state_dict`` file for the backbone
            (e.g. torchvision's ImageNet ``swin_t-704ceda3.pth``); the old
            classification head is ignored. ``None`` = random init. Nothing is
            ever downloaded.
        gradient_checkpointing: recompute backbone blocks in backward.
        channels_last: feed images to the backbone in NHWC memory format.
        compile: ``nn.Module.compile`` the image encoder (not the loss, whose
            shapes change every batch).
        distinct_images: encode each distinct item of a batch once and reuse its embedding in
            every slot it fills (``encode_valid_images``); False encodes every slot.
    """

    backbone: Backbone = Backbone.SMALL_CNN
    embedding_dim: int = 256
    pretrained_weights_path: str | None = None
    gradient_checkpointing: bool = False
    channels_last: bool = True
    compile: bool = False
    distinct_images: bool = True

    def __post_init__(self) -> None:
        coerce_choices(self, "model", {"backbone": Backbone})
        if self.embedding_dim <= 0:
            raise ValueError(f"embedding_dim must be positive, got {self.embedding_dim}")


@dataclass(frozen=True)
class LossConfig:
    """COURIER loss settings (method.md, paper sections 3.3-3.4 and table 6).

    Attributes:
        tau: softmax temperature of both contrastive losses (the paper: 0.05).
        w_pv: weight of the PV contrastive loss.
        w_ucs: weight of the user click sequence loss (forced to 0 by ``no_ucs``).
        ablation: one of ``ABLATIONS``.
        click_bce_weight: weight of an optional BCE click head on ``[R, E_pv]``
            (present in the paper's research code, not in the paper; 0 = off and
            no head parameters are created).
    """

    tau: float = 0.05
    w_pv: float = 1.0
    w_ucs: float = 1.0
    ablation: Ablation = Ablation.NONE
    click_bce_weight: float = 0.0

    def __post_init__(self) -> None:
        coerce_choices(self, "loss", {"ablation": Ablation})
        if not self.tau > 0:
            raise ValueError(f"tau must be positive, got {self.tau}")
        for name in ("w_pv", "w_ucs", "click_bce_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.w_pv + self.effective_w_ucs + self.click_bce_weight <= 0:
            raise ValueError("all loss weights are 0 (after the ablation): nothing to train")

    @property
    def effective_w_ucs(self) -> float:
        """``w_ucs`` after the ``no_ucs`` ablation is applied."""
        return 0.0 if self.ablation == Ablation.NO_UCS else self.w_ucs
