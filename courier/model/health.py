"""Representation health metrics: is the embedding collapsing, is attention degenerate?

All functions are detached (``torch.no_grad``) and return 0-dim tensors, so a
training loop can log them without a host sync until it calls ``.item()``.

- ``alignment`` / ``uniformity``: Wang & Isola (2020), on L2-normalised vectors.
  Alignment of positive pairs -> 0 is good; uniformity (log of mean Gaussian
  potential) ~ -4 for well spread 256-d vectors, -> 0 on collapse.
- ``embedding_std``: mean over dimensions of the per-dimension std of the
  L2-normalised embeddings; about ``1/sqrt(d)`` when spread, -> 0 on collapse.
- ``attention_entropy``: mean entropy (nats) of attention rows; ``log(K)`` is
  uniform attention over K clicks, 0 is attending to a single click.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """Mean ``||x_i - y_i||^alpha`` of normalised positive pairs. x, y: [N, d]."""
    x = F.normalize(x.float(), dim=-1)
    y = F.normalize(y.float(), dim=-1)
    if x.shape[0] == 0:
        return x.new_zeros(())
    return (x - y).norm(dim=-1).pow(alpha).mean()


@torch.no_grad()
def uniformity(x: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """``log mean_{i<j} exp(-t ||x_i - x_j||^2)`` of normalised rows. x: [N, d], N >= 2."""
    x = F.normalize(x.float(), dim=-1)
    if x.shape[0] < 2:
        return x.new_zeros(())
    sq_dist = torch.pdist(x, p=2).pow(2)  # [N(N-1)/2]
    return sq_dist.mul(-t).exp().mean().log()


@torch.no_grad()
def embedding_std(x: torch.Tensor) -> torch.Tensor:
    """Mean per-dimension std of normalised rows (collapse detector). x: [N, d]."""
    x = F.normalize(x.float(), dim=-1)
    if x.shape[0] < 2:
        return x.new_zeros(())
    return x.std(dim=0).mean()


@torch.no_grad()
def attention_entropy(attn: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Mean entropy (nats) of attention distributions.

    Args:
        attn: [..., K], rows summing to 1 (or all zeros for "no attention").
        rows: bool [...] selecting real distributions; default all rows.
    """
    ent = -torch.special.xlogy(attn.float(), attn.float()).sum(dim=-1)  # [...]
    if rows is None:
        return ent.mean() if ent.numel() else ent.new_zeros(())
    n = rows.sum()
    return torch.where(rows, ent, torch.zeros_like(ent)).sum() / n.clamp(min=1)
