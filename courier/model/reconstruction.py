"""User intention reconstruction (paper eq. 1-3) and its ``no_reconstruction`` ablation.

Parameter-free on purpose: ``R`` must stay a convex combination of the user's
click embeddings (method.md; the paper's research code uses a learned
``MultiheadAttention`` instead, which we do not copy).

Padding convention: a ``False`` entry of a key mask is padding. Padded key
embeddings are zeroed before use, so garbage (even NaN) in padded slots cannot
leak into values or gradients. A row with no valid key has no reconstruction:
its attention weights and ``R`` are all zeros and ``has_history`` is ``False``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Reconstruction:
    """Output of a reconstruction.

    Attributes:
        recon: [B, Q, d] ``R`` for each query; zeros where ``has_history`` is False.
        attn: [B, Q', K] attention weights (rows sum to 1 where valid, else 0).
            Q' = Q for the cross-attention; Q' = K for the self-attention ablation.
        attn_rows: [B, Q'] bool, the rows of ``attn`` that are real attention
            distributions (for the entropy health metric).
        has_history: [B] bool, the row has at least one valid key.
    """

    recon: torch.Tensor
    attn: torch.Tensor
    attn_rows: torch.Tensor
    has_history: torch.Tensor


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim restricted to ``mask``; all-masked rows give zeros (not NaN).

    Args:
        logits: [..., K].
        mask: bool, broadcastable to ``logits``; True = may be attended.
    """
    mask = mask.expand_as(logits)
    any_valid = mask.any(dim=-1, keepdim=True)  # [..., 1]
    # An all-masked row would be softmax(-inf, ..., -inf) = NaN (also in backward);
    # let it attend everywhere (finite) and zero it afterwards instead.
    safe_mask = mask | ~any_valid
    attn = torch.softmax(logits.masked_fill(~safe_mask, float("-inf")), dim=-1)
    return attn.masked_fill(~any_valid, 0.0)


def _zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # masked_fill (not multiplication) so NaN/inf in padded slots cannot survive.
    return x.masked_fill(~mask.unsqueeze(-1), 0.0)


def reconstruct(
    queries: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor
) -> Reconstruction:
    """Cross-attention reconstruction ``R[j] = sum_k softmax_k(<q_j, c_k>/sqrt(d)) c_k``.

    Args:
        queries: [B, Q, d] (PV embeddings, or a click target as Q=1).
        keys: [B, K, d] click embeddings, used as both keys and values.
        key_mask: [B, K] bool, True = valid click.
    """
    d = queries.shape[-1]
    keys = _zero_padding(keys, key_mask)  # [B, K, d]
    logits = torch.matmul(queries, keys.transpose(-1, -2)) / math.sqrt(d)  # [B, Q, K]
    attn = masked_softmax(logits, key_mask.unsqueeze(1))  # [B, Q, K]
    recon = torch.matmul(attn, keys)  # [B, Q, d]
    has_history = key_mask.any(dim=-1)  # [B]
    attn_rows = has_history.unsqueeze(1).expand(-1, queries.shape[1])  # [B, Q]
    return Reconstruction(recon=recon, attn=attn, attn_rows=attn_rows, has_history=has_history)


def reconstruct_without_query(
    num_queries: int, keys: torch.Tensor, key_mask: torch.Tensor
) -> Reconstruction:
    """``no_reconstruction`` ablation: a user vector that never sees the query.

    Parameter-free self-attention over the valid clicks (same scaled dot product
    as ``reconstruct``, clicks as queries), mean-pooled over the valid click
    positions into one user vector ``u``, which every query of the row gets as its
    ``R``. ``u`` is still a convex combination of the clicks, so the only thing
    the ablation removes is the dependence of ``R`` on the query (paper 3.5 /
    table 6), not capacity: neither variant has parameters.

    Args:
        num_queries: Q, how many copies of ``u`` per row.
        keys: [B, K, d] click embeddings.
        key_mask: [B, K] bool, True = valid click.
    """
    d = keys.shape[-1]
    keys = _zero_padding(keys, key_mask)  # [B, K, d]
    logits = torch.matmul(keys, keys.transpose(-1, -2)) / math.sqrt(d)  # [B, K, K]
    attn = masked_softmax(logits, key_mask.unsqueeze(1))  # [B, K, K]
    hidden = torch.matmul(attn, keys)  # [B, K, d]
    weights = key_mask.to(hidden.dtype)  # [B, K]
    n_valid = weights.sum(dim=-1, keepdim=True).clamp(min=1.0)  # [B, 1]
    user = (hidden * weights.unsqueeze(-1)).sum(dim=1) / n_valid  # [B, d]
    recon = user.unsqueeze(1).expand(-1, num_queries, -1)  # [B, Q, d]
    has_history = key_mask.any(dim=-1)  # [B]
    return Reconstruction(
        recon=recon, attn=attn, attn_rows=key_mask.clone(), has_history=has_history
    )


@dataclass
class ClickSplit:
    """Click history split for the user click sequence loss.

    Attributes:
        target_index: [B] long, position of the most recent valid click (0 if none).
        history_mask: [B, K] bool, valid clicks strictly before the target.
        has_target: [B] bool, the row has >= 2 valid clicks (target + non-empty history).
    """

    target_index: torch.Tensor
    history_mask: torch.Tensor
    has_target: torch.Tensor


def split_click_sequence(click_mask: torch.Tensor) -> ClickSplit:
    """Target = last valid click, history = earlier valid clicks (clicks ordered oldest -> newest).

    Works for left padding (the spec) and also for right padding, because the
    target is found as the last valid position rather than assumed at ``K-1``.

    Args:
        click_mask: [B, K] bool, True = valid click.
    """
    k = click_mask.shape[1]
    positions = torch.arange(k, device=click_mask.device).expand_as(click_mask)  # [B, K]
    # [B]
    last = torch.where(click_mask, positions, torch.full_like(positions, -1)).max(dim=1).values
    history_mask = click_mask & (positions < last.unsqueeze(1))  # [B, K]
    has_target = click_mask.sum(dim=1) >= 2  # [B]
    return ClickSplit(
        target_index=last.clamp(min=0), history_mask=history_mask, has_target=has_target
    )
