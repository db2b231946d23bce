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

# `X as X`: re-exported for type checkers (the names are loaded lazily below).
if TYPE_CHECKING:
    from courier.config.model import (
        ABLATIONS as ABLATIONS,
        BACKBONES as BACKBONES,
        LossConfig as LossConfig,
        ModelConfig as ModelConfig,
    )
    from courier.model.backbones import (
        ImageEncoder as ImageEncoder,
        WeightLoadReport as WeightLoadReport,
        build_image_encoder as build_image_encoder,
        load_backbone_weights as load_backbone_weights,
    )
    from courier.model.courier import CourierModel as CourierModel
    from courier.model.health import (
        alignment as alignment,
        attention_entropy as attention_entropy,
        embedding_std as embedding_std,
        uniformity as uniformity,
    )
    from courier.model.losses import (
        ClickHead as ClickHead,
        LossOutput as LossOutput,
        contrastive_reconstruction_sums as contrastive_reconstruction_sums,
        courier_loss as courier_loss,
    )
    from courier.model.reconstruction import (
        ClickSplit as ClickSplit,
        Reconstruction as Reconstruction,
        masked_softmax as masked_softmax,
        reconstruct as reconstruct,
        reconstruct_without_query as reconstruct_without_query,
        split_click_sequence as split_click_sequence,
    )

# public name -> the module that defines it: one of this package, or an absolute name
_MODULE_OF = {
    **dict.fromkeys(
        ("ImageEncoder", "WeightLoadReport", "build_image_encoder", "load_backbone_weights"),
        "backbones",
    ),
    **dict.fromkeys(
        ("ABLATIONS", "BACKBONES", "LossConfig", "ModelConfig"), "courier.config.model"
    ),
    "CourierModel": "courier",
    **dict.fromkeys(("alignment", "attention_entropy", "embedding_std", "uniformity"), "health"),
    **dict.fromkeys(
        ("ClickHead", "LossOutput", "contrastive_reconstruction_sums", "courier_loss"), "losses"
    ),
    **dict.fromkeys(
        (
            "ClickSplit",
            "Reconstruction",
            "masked_softmax",
            "reconstruct",
            "reconstruct_without_query",
            "split_click_sequence",
        ),
        "reconstruction",
    ),
}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    """The public name ``name``, imported from its module on first use."""
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = _MODULE_OF[name]
    return getattr(
        importlib.import_module(module if "." in module else f"{__name__}.{module}"), name
    )
