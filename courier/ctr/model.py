"""The DIN-style CTR model of method.md ("Downstream CTR model", paper appendix A).

    item tower   item id + category (+ image feature)              -> [.., Di]
    user tower   [start token; history through the item tower]     [B, L+1, Di]
                 -> self-attention (padding masked) + layer norm
                 -> candidate attention pooling (DIN) and mean pooling, + user id
    head         MLP over [user, candidate item, query, position (, SimScores)] -> logit

The image feature enters as ``ctr.image_usage`` says (appendix B): nothing, the
embedding vector (a frozen table, projected), SimScore (cosine of the candidate's
embedding to each history item's: a bias on the attention and max/mean into the
head) or Cluster-ID (a learned embedding of the id in the item tower, so the
candidate's cluster meets the history's clusters in the attention, and, with
``ctr.history_match``, the share of history items in the candidate's cluster).

The start token is always unmasked: a user without history attends to it alone
instead of to nothing (which is NaN in a softmax).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from courier.config.ctr import CtrConfig
from courier.ctr.data import MAX_POSITION, UNKNOWN, CtrTensors, Vocabularies


class ItemTower(nn.Module):
    """Item id + category (+ Cluster-ID or projected image vector) -> one vector per item."""

    def __init__(self, cfg: CtrConfig, vocab: Vocabularies, image_dim: int) -> None:
        super().__init__()
        d = cfg.embedding_dim
        self.usage = cfg.image_usage
        self.item = nn.Embedding(len(vocab.items), d, padding_idx=0)
        self.category = nn.Embedding(len(vocab.categories), d, padding_idx=0)
        parts = 2
        if self.usage == "cluster_id":
            self.cluster = nn.Embedding(vocab.n_clusters, d, padding_idx=0)
            parts += 1
        elif self.usage == "vector":
            self.image = nn.Linear(image_dim, d)
            parts += 1
        self.out_dim = parts * d

    def forward(
        self,
        item: torch.Tensor,
        category: torch.Tensor,
        cluster: torch.Tensor,
        image: torch.Tensor | None,
    ) -> torch.Tensor:
        """ids [*S] (and image [*S, d_img] for ``vector``) -> [*S, Di]."""
        parts = [self.item(item), self.category(category)]
        if self.usage == "cluster_id":
            parts.append(self.cluster(cluster))
        elif self.usage == "vector":
            assert image is not None
            parts.append(self.image(image))
        return torch.cat(parts, dim=-1)


class UserTower(nn.Module):
    """History [B, L, Di] + candidate [B, Di] -> [B, 2 Di] (DIN pooling, mean pooling)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.start = nn.Parameter(torch.zeros(1, 1, dim))
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.score = nn.Sequential(nn.Linear(4 * dim, dim), nn.ReLU(), nn.Linear(dim, 1))

    def forward(
        self,
        history: torch.Tensor,
        mask: torch.Tensor,
        candidate: torch.Tensor,
        score_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, _, d = history.shape
        seq = torch.cat([self.start.expand(b, 1, d), history], dim=1)  # [B, L+1, Di]
        keep = torch.cat([mask.new_ones(b, 1), mask], dim=1)  # [B, L+1]
        attended, _ = self.attention(seq, seq, seq, key_padding_mask=~keep, need_weights=False)
        seq = self.norm(seq + attended)  # [B, L+1, Di]
        cand = candidate.unsqueeze(1).expand_as(seq)
        # [B, L+1]
        logits = self.score(torch.cat([seq, cand, seq * cand, seq - cand], dim=-1)).squeeze(-1)
        if score_bias is not None:
            logits = logits + torch.cat([score_bias.new_zeros(b, 1), score_bias], dim=1)
        logits = logits.masked_fill(~keep, float("-inf"))
        din = (logits.softmax(dim=1).unsqueeze(-1) * seq).sum(dim=1)  # [B, Di]
        weights = keep.unsqueeze(-1).to(seq.dtype)
        mean = (seq * weights).sum(dim=1) / weights.sum(dim=1)  # [B, Di]
        return torch.cat([din, mean], dim=-1)


class DinCtrModel(nn.Module):
    """Click logit of an impression from its CtrTensors batch."""

    image_table: torch.Tensor  # a buffer, registered for the vector and simscore usages

    def __init__(
        self, cfg: CtrConfig, vocab: Vocabularies, image_vectors: np.ndarray | None = None
    ) -> None:
        super().__init__()
        d = cfg.embedding_dim
        self.usage = cfg.image_usage
        if self.usage in ("vector", "simscore"):
            if image_vectors is None:
                raise ValueError(f"ctr.image_usage={self.usage} needs the item embeddings")
            # frozen: the feature is the encoder's, the CTR model only reads it
            self.register_buffer(
                "image_table", torch.from_numpy(np.asarray(image_vectors, dtype=np.float32))
            )
        image_dim = int(image_vectors.shape[1]) if image_vectors is not None else 0
        self.items = ItemTower(cfg, vocab, image_dim)
        di = self.items.out_dim
        self.user_tower = UserTower(di, 1 if di % cfg.heads else cfg.heads)
        self.user = nn.Embedding(len(vocab.users), d)
        self.query = nn.Embedding(len(vocab.categories), d, padding_idx=0)
        self.position = nn.Embedding(MAX_POSITION + 1, d)
        if self.usage == "simscore":
            self.simscore_scale = nn.Parameter(torch.tensor(1.0))
        self.history_match = self.usage == "cluster_id" and cfg.history_match
        head_in = (
            2 * di
            + di
            + 3 * d
            + (2 if self.usage == "simscore" else 0)
            + (1 if self.history_match else 0)
        )
        layers: list[nn.Module] = []
        for width in cfg.mlp_dims:
            layers += [nn.Linear(head_in, width), nn.ReLU(), nn.Dropout(cfg.dropout)]
            head_in = width
        self.head = nn.Sequential(*layers, nn.Linear(head_in, 1))

    def _image(self, rows: torch.Tensor) -> torch.Tensor | None:
        return self.image_table[rows] if self.usage in ("vector", "simscore") else None

    def forward(self, batch: CtrTensors) -> torch.Tensor:
        """[B] click logits."""
        cand_img, hist_img = self._image(batch.image_row), self._image(batch.history_image_row)
        candidate = self.items(batch.item, batch.category, batch.cluster, cand_img)  # [B, Di]
        history = self.items(
            batch.history_item, batch.history_category, batch.history_cluster, hist_img
        )  # [B, L, Di]
        extra: list[torch.Tensor] = []
        bias = None
        if self.usage == "simscore":
            assert hist_img is not None and cand_img is not None  # simscore reads image_table
            sim = (hist_img * cand_img.unsqueeze(1)).sum(dim=-1)  # [B, L] cosine
            sim = sim.masked_fill(~batch.history_mask, 0.0)
            bias = self.simscore_scale * sim
            has = batch.history_mask.any(dim=1)
            best = sim.masked_fill(~batch.history_mask, -1.0).max(dim=1).values
            mean = sim.sum(dim=1) / batch.history_mask.sum(dim=1).clamp(min=1)
            extra = [torch.where(has, best, torch.zeros_like(best)).unsqueeze(1), mean.unsqueeze(1)]
        if self.history_match:
            same = (
                (batch.history_cluster == batch.cluster.unsqueeze(1))
                & batch.history_mask
                & (batch.cluster > UNKNOWN).unsqueeze(1)
            )  # [B, L]
            extra.append(
                (same.sum(dim=1) / batch.history_mask.sum(dim=1).clamp(min=1)).unsqueeze(1).float()
            )
        user = self.user_tower(history, batch.history_mask, candidate, bias)  # [B, 2 Di]
        features = torch.cat(
            [
                user,
                candidate,
                self.user(batch.user),
                self.query(batch.query),
                self.position(batch.position),
                *extra,
            ],
            dim=-1,
        )
        return self.head(features).squeeze(-1)
