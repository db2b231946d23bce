"""torchvision Swin-T with its classification head replaced by ``Linear(768, d)``."""

from __future__ import annotations

from torch import nn

from courier.model.checkpointing import CheckpointSequential


def build_swin_t(embedding_dim: int, gradient_checkpointing: bool) -> nn.Module:
    """Random-init Swin-T (``weights=None``: never downloads) mapping [N,3,H,W] -> [N,d].

    ``model.features`` alternates patch embedding / patch merging (even indices)
    with stages (odd indices, ``nn.Sequential`` of ``SwinTransformerBlock``). Each
    block (window attention + MLP, the paper's "attention layers") is one
    checkpoint unit. Input sides that are multiples of 32 (64, 224) avoid the
    internal padding torchvision applies otherwise.
    """
    from torchvision.models import swin_t  # lazy: see resnet.py

    model = swin_t(weights=None)
    in_features = model.head.in_features  # 768
    model.head = nn.Linear(in_features, embedding_dim)
    for idx in range(1, len(model.features), 2):
        stage = model.features[idx]
        model.features[idx] = CheckpointSequential.from_sequential(stage, gradient_checkpointing)
    return model
