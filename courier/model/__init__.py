"""COURIER image model and losses (pure PyTorch).

Public API:
    ModelConfig, LossConfig            -- frozen configs (defined in courier/config/model.py)
    build_image_encoder                -- images [N,3,H,W] -> embeddings [N,d] (backbones.py)
    reconstruct, reconstruct_without_query, split_click_sequence (reconstruction.py)
    courier_loss, contrastive_reconstruction_sums, LossOutput, ClickHead (losses.py)
    CourierModel                       -- encoder + loss on a batch dict (courier.py)
    alignment, uniformity, embedding_std, attention_entropy (health.py)

The names are loaded on first use (PEP 562): importing this package, or one of its modules,
does not import the others (nor torch, until a name that needs it is used).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from courier.model.backbones import ImageEncoder, WeightLoadReport, build_image_encoder, load_backbone_weights
    from courier.config.model import ABLATIONS, BACKBONES, LossConfig, ModelConfig
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

# public name -> the module that defines it: one of this package, or an absolute name
_MODULE_OF = {
    **dict.fromkeys(("ImageEncoder", "WeightLoadReport", "build_image_encoder", "load_backbone_weights"), "backbones"),
    **dict.fromkeys(("ABLATIONS", "BACKBONES", "LossConfig", "ModelConfig"), "courier.config.model"),
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
    module = _MODULE_OF[name]
    return getattr(importlib.import_module(module if "." in module else f"{__name__}.{module}"), name)
