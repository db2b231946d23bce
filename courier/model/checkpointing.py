"""Gradient checkpointing of backbone blocks that keeps ``state_dict`` keys intact.

Wrapping each block in a ``Checkpoint(block)`` module would rename every key
(``features.1.0.x`` -> ``features.1.0.module.x``) and break loading torchvision
weights. Instead a stage's ``nn.Sequential`` is swapped for the subclass below,
which owns the very same child modules under the very same indices.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class CheckpointSequential(nn.Sequential):
    """``nn.Sequential`` whose children are each recomputed in backward when enabled.

    Checkpointing only kicks in while training with grad enabled; in eval or
    ``no_grad`` it would save nothing. Non-reentrant checkpointing restores the
    RNG state on recompute, so stochastic depth / dropout draw the same masks.

    Caveat: BatchNorm layers inside a checkpointed block run their forward twice
    in training, so running statistics get two EMA updates with the same batch
    statistics (an effective momentum of ``1 - (1 - m)**2``); activations and
    gradients are unaffected.
    """

    def __init__(self, *modules: nn.Module, enabled: bool = False) -> None:
        super().__init__(*modules)
        self.checkpointing = enabled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_ckpt = self.checkpointing and self.training and torch.is_grad_enabled()
        for module in self:
            x = checkpoint(module, x, use_reentrant=False) if use_ckpt else module(x)
        return x

    @classmethod
    def from_sequential(cls, seq: nn.Sequential, enabled: bool) -> CheckpointSequential:
        """Same children, same keys, checkpointing switch ``enabled``."""
        out = cls(enabled=enabled)
        for name, module in seq.named_children():
            out.add_module(name, module)
        return out


def set_gradient_checkpointing(model: nn.Module, enabled: bool) -> int:
    """Switch every ``CheckpointSequential`` inside ``model``; returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, CheckpointSequential):
            module.checkpointing = enabled
            count += 1
    return count
