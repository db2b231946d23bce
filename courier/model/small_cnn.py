"""A small conv-bn-relu image encoder for CPU tests and smoke runs (64x64 inputs)."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from courier.model.checkpointing import CheckpointSequential


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Four stride-2 stages, global average pool, linear head to ``embedding_dim``.

    About 43 M multiply-adds per 64x64 image, so a few hundred images per step fit a
    2-core CPU. ``head`` is the replaceable "classification head" (its keys are
    ignored when loading backbone weights, like the other families).
    """

    def __init__(
        self,
        embedding_dim: int,
        widths: tuple[int, ...] = (32, 64, 128, 256),
        *,
        gradient_checkpointing: bool,
    ) -> None:
        super().__init__()
        stages: list[nn.Module] = [_conv_bn_relu(3, widths[0], stride=2)]
        for c_in, c_out in itertools.pairwise(widths):
            stages.append(
                nn.Sequential(_conv_bn_relu(c_in, c_out, 2), _conv_bn_relu(c_out, c_out, 1))
            )
        # Each stage is one checkpoint unit.
        self.features = CheckpointSequential(*stages, enabled=gradient_checkpointing)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(widths[-1], embedding_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] -> embeddings [N, d]."""
        x = self.features(images)  # [N, C, H/16, W/16]
        x = self.pool(x).flatten(1)  # [N, C]
        return self.head(x)  # [N, d]
