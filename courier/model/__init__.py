"""COURIER image model and losses (pure PyTorch).

Public API:
    ModelConfig, LossConfig            -- frozen configs (config.py)
    build_image_encoder                -- images [N,3,H,W] -> embeddings [N,d] (backbones.py)
    reconstruct, reconstruct_without_query, split_click_sequence (reconstruction.py)
    courier_loss, contrastive_reconstruction_sums, LossOutput, ClickHead (losses.py)
    CourierModel                       -- encoder + loss on a batch dict (courier.py)
    alignment, uniformity, embedding_std, attention_entropy (health.py)
"""

from __future__ import annotations

from courier.model.backbones import ImageEncoder, WeightLoadReport, build_image_encoder, load_backbone_weights
from courier.model.config import ABLATIONS, BACKBONES, LossConfig, ModelConfig
from courier.model.courier import CourierModel
from courier.model.health import alignment, attention_entropy, embedding_std, uniformity
from courier.model.losses import ClickHead, LossOutput, contrastive_reconstruction_sums, courier_loss
from courier.model.reconstruction import (
    ClickSplit,
    Reconstruction,
    masked_softmax,
    reconstruct,
    reconstruct_without_query,
    split_click_sequence,
)

__all__ = [
    "ABLATIONS",
    "BACKBONES",
    "ClickHead",
    "ClickSplit",
    "CourierModel",
    "ImageEncoder",
    "LossConfig",
    "LossOutput",
    "ModelConfig",
    "Reconstruction",
    "WeightLoadReport",
    "alignment",
    "attention_entropy",
    "build_image_encoder",
    "contrastive_reconstruction_sums",
    "courier_loss",
    "embedding_std",
    "load_backbone_weights",
    "masked_softmax",
    "reconstruct",
    "reconstruct_without_query",
    "split_click_sequence",
    "uniformity",
]
