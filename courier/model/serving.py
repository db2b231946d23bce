"""The registered image encoder: decoded images in, L2-normalised embeddings out.

``EmbeddingModel`` is what ``courier train`` logs to MLflow and what
``courier embed`` runs. It owns its preprocessing: it takes the decoded RGB
image tensor (uint8, as torchvision's ``decode_jpeg`` returns it) at the size
it was trained on, and applies its own mean/std buffers, so inference never
copies the loader's constants by hand. The size, mean and std also travel in
the MLflow model's metadata (``PreprocessingSpec``) for callers that must
prepare the input (decode, resize) before calling the model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

METADATA_KEY = "courier_preprocessing"


@dataclass(frozen=True)
class PreprocessingSpec:
    """What the model expects: uint8 RGB images [N, 3, image_size, image_size].

    ``mean``/``std`` are the training loader's normalisation (courier.data.decode),
    taken from it when the model is exported.
    """

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input: str = "uint8 RGB [N, 3, S, S], 0..255, resized + center-cropped to S"
    output: str = "float32 [N, d], L2-normalised"

    def to_metadata(self) -> dict[str, Any]:
        return {METADATA_KEY: {**asdict(self), "mean": list(self.mean), "std": list(self.std)}}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None, where: str) -> "PreprocessingSpec":
        """The spec stored with a logged model; ValueError naming ``where`` if it has none."""
        spec = (metadata or {}).get(METADATA_KEY)
        if not spec:
            raise ValueError(
                f"{where} carries no {METADATA_KEY!r} metadata: it was logged before models became "
                "self-describing (or by another tool). Re-train with `courier train` to register a model "
                "that takes decoded images and knows its own preprocessing.")
        return cls(image_size=int(spec["image_size"]), mean=tuple(spec["mean"]), std=tuple(spec["std"]))


class EmbeddingModel(nn.Module):
    """Trained encoder + its preprocessing: uint8 images [N, 3, S, S] -> unit embeddings [N, d]."""

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
