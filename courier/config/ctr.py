"""Typed, frozen configuration of the downstream CTR evaluation:
samples, model, training (courier/ctr/).

Each section is validated here, where it is defined. The defaults suit the
embedded demo shop (14 days, 40k page views); the model is small enough to
train in seconds per epoch on 2 CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from courier.checks import choices, coerce_choices, require


class ImageUsage(StrEnum):
    """``ctr.image_usage``: how the image feature enters the CTR model (paper appendix B)."""

    NONE = "none"  # no image feature: the baseline
    VECTOR = "vector"  # the embedding
    SIMSCORE = "simscore"  # cosine of the candidate to each history item
    CLUSTER_ID = "cluster_id"  # an embedding of the Cluster-ID, for the candidate and the history


IMAGE_USAGES: tuple[str, ...] = choices(ImageUsage)


@dataclass(frozen=True)
class CtrSamplesConfig:
    """``courier ctr-samples``: impressions with point-in-time history and as-of image features.

    Attributes:
        l_click: the user's latest clicks kept as history, strictly before the page view.
            Longer than COURIER's own history: the CTR model attends over it.
        history_lookback_days: how far before the range the history may reach.
        validation_days: the days before the test days, for early stopping.
        test_days: the last days of the built range, never trained or early-stopped on.
    """

    l_click: int = 20
    history_lookback_days: int = 60
    validation_days: int = 2
    test_days: int = 3

    def __post_init__(self) -> None:
        require(self.l_click >= 1, f"ctr_samples.l_click must be >= 1, got {self.l_click}")
        require(
            self.history_lookback_days >= 0,
            f"ctr_samples.history_lookback_days must be >= 0, got {self.history_lookback_days}",
        )
        require(
            self.validation_days >= 1,
            f"ctr_samples.validation_days must be >= 1, got {self.validation_days}",
        )
        require(self.test_days >= 1, f"ctr_samples.test_days must be >= 1, got {self.test_days}")


@dataclass(frozen=True)
class CtrConfig:
    """The DIN-style CTR model (method.md, "Downstream CTR model") and its training.

    Attributes:
        image_usage: how the image feature enters the model (paper appendix B): ``none``,
            ``vector`` (the embedding), ``simscore`` (cosine of the candidate to each history
            item) or ``cluster_id`` (an embedding of the id, for the candidate and the history).
        embedding_dim: width of every id embedding (item, category, user, cluster, position).
        heads: attention heads of the history's self-attention.
        mlp_dims: hidden widths of the final MLP.
        dropout: on the MLP's hidden layers.
        batch_size, lr, weight_decay: AdamW on BCE. Sparse id embeddings want the large lr: on the
            demo shop 2e-3 reached a validation AUC of 0.55 after 4 epochs where 1e-2 reached 0.57.
        max_epochs, patience: early stopping on the validation AUC (best epoch's weights kept).
        seed: seeds initialisation and shuffling; a run is deterministic for a seed.
        history_match: with ``cluster_id``, also give the head the share of history items in the
            candidate's cluster: the relation of the candidate to the history's clusters that the
            attention would otherwise have to discover (synthetic-shop.md, point 4).
        min_item_count: items seen fewer times in training share the "rare item" id, so a
            test item unseen in training is not a random vector.
        threads: torch intra-op threads; 0 = torch's default.
    """

    image_usage: ImageUsage = ImageUsage.CLUSTER_ID
    embedding_dim: int = 16
    heads: int = 2
    mlp_dims: tuple[int, ...] = (64, 32)
    dropout: float = 0.1
    batch_size: int = 2048
    lr: float = 1.0e-2
    weight_decay: float = 1.0e-5
    max_epochs: int = 8
    patience: int = 2
    seed: int = 0
    history_match: bool = True
    min_item_count: int = 1
    threads: int = 0

    def __post_init__(self) -> None:
        coerce_choices(self, "ctr", {"image_usage": ImageUsage})
        require(
            self.embedding_dim >= 2, f"ctr.embedding_dim must be >= 2, got {self.embedding_dim}"
        )
        require(
            self.heads >= 1 and self.embedding_dim % self.heads == 0,
            f"ctr.heads must divide ctr.embedding_dim ({self.embedding_dim}), got {self.heads}",
        )
        require(
            len(self.mlp_dims) >= 1 and all(d >= 1 for d in self.mlp_dims),
            f"ctr.mlp_dims must be positive widths, got {self.mlp_dims}",
        )
        require(0.0 <= self.dropout < 1.0, f"ctr.dropout must be in [0, 1), got {self.dropout}")
        require(self.batch_size >= 1, f"ctr.batch_size must be >= 1, got {self.batch_size}")
        require(
            self.lr > 0 and self.weight_decay >= 0, "ctr.lr must be > 0 and ctr.weight_decay >= 0"
        )
        require(
            self.max_epochs >= 1 and self.patience >= 1,
            "ctr.max_epochs and ctr.patience must be >= 1",
        )
        require(
            self.min_item_count >= 1, f"ctr.min_item_count must be >= 1, got {self.min_item_count}"
        )
        require(self.threads >= 0, f"ctr.threads must be >= 0, got {self.threads}")
