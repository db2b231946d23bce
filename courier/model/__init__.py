"""COURIER image model and losses (pure PyTorch).

Public API:
    ModelConfig, LossConfig            -- frozen configs (config.py)
    build_image_encoder                -- images [N,3,H,W] -> embeddings [N,d] (backbones.py)
    reconstruct, reconstruct_without_query, split_click_sequence (reconstruction.py)
    courier_loss, contrastive_reconstruction_sums, LossOutput, ClickHead (losses.py)
    CourierModel                       -- encoder + loss on a batch dict (courier.py)
    alignment, uniformity, embedding_std, attention_entropy (health.py)

The names are loaded on first use (PEP 562), so that ``courier.config``, which needs only
``courier.model.config``, does not import torch: ``courier sql`` and ``courier status`` and the DAG
files never pay for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# public name -> the module of this package that defines it
_MODULE_OF = {
    **dict.fromkeys(("ImageEncoder", "WeightLoadReport", "build_image_encoder", "load_backbone_weights"), "backbones"),
    **dict.fromkeys(("ABLATIONS", "BACKBONES", "LossConfig", "ModelConfig"), "config"),
    "CourierModel": "courier",
    **dict.fromkeys(("alignment", "attention_entropy", "embedding_std", "uniformity"), "health"),
    **dict.fromkeys(("ClickHead", "LossOutput", "contrastive_reconstruction_sums", "courier_loss"), "losses"),
    **dict.fromkeys(("ClickSplit", "Reconstruction", "masked_softmax", "reconstruct", "reconstruct_without_query",
                     "split_click_sequence"), "reconstruction"),
}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    """The public name ``name``, imported from its module on first use."""
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
