"""The registered image encoder: decoded images in, L2-normalised embeddings out.

``EmbeddingModel`` is what ``courier train`` logs to MLflow and what
``courier embed`` runs. It owns its preprocessing: it takes the decoded RGB
image tensor (uint8, as torchvision's ``decode_jpeg`` returns it) at the size
it was trained on, and applies its own mean/std buffers, so inference never
copies the loader's constants by hand. The size, mean and std also travel in
the MLflow model's metadata (``PreprocessingSpec``, courier/tracking/models.py) for callers that
must prepare the input (decode, resize) before calling the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from courier.tracking.models import PreprocessingSpec


class EmbeddingModel(nn.Module):
    """Trained encoder + its preprocessing: uint8 images [N, 3, S, S] -> unit embeddings [N, d]."""

    scale: torch.Tensor  # buffers, registered in __init__
    shift: torch.Tensor

    def __init__(self, encoder: nn.Module, spec: PreprocessingSpec) -> None:
        super().__init__()
        self.encoder = encoder
        self.spec = spec
        # Scale and shift of (x / 255 - mean) / std, shaped to broadcast over [N, 3, S, S].
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", -mean / std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images uint8 (or 0..255 float) [N, 3, S, S] -> float32 [N, d], unit L2 norm."""
        x = images.to(torch.float32) * self.scale + self.shift  # [N, 3, S, S]
        emb = self.encoder(x)  # [N, d]
        return F.normalize(emb.to(torch.float32), dim=-1)
