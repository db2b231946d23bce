"""Held-out evaluation: reconstruction retrieval and representation health.

Reconstruction retrieval (within a page view): for every held-out row with a
click history, each shown item ``j`` gets the score ``cos(E_pv[j], R[j])``, ``R[j]``
reconstructed from the row's clicks with ``E_pv[j]`` as the query (method.md,
eq. 1-3). A model that learned what the user reacts to scores the clicked
items above the unclicked ones of the same page. Rows hold their positives
first, so every comparison treats ties as half a win: a collapsed model (all
scores equal) gets chance values, never a perfect score from the ordering.

Reported (all over rows with >= 1 clicked and >= 1 unclicked item):
    hit1            top-scored item is clicked (ties: 0.5)
    hit1_chance     the same for random scores: mean n_clicked / n_shown
    row_auc         P(score clicked > score unclicked) within a row, mean over rows
    rank_clicked    normalised rank (0 = top, 1 = bottom) of clicked items; 0.5 = chance
    rank_unclicked  the same for unclicked items
    cos_clicked / cos_unclicked   mean score of each
    inbatch_top1    the training objective held out: for a clicked item's R, is its own
                    image the nearest of all shown items of the evaluation batch
    inbatch_top1_chance           mean 1 / (valid items in the batch)
    inbatch_rank    normalised rank of the clicked item's own image among them; 0.5 = chance
    loss, loss_pv, loss_ucs       COURIER loss on the held-out batches (single process)
    alignment, uniformity, embedding_std, attention_entropy  (courier.model.health)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from courier.config.model import LossConfig
from courier.data.decode import newest_clicks
from courier.data.source import BatchSource
from courier.model import alignment, attention_entropy, embedding_std, uniformity
from courier.model.losses import ClickHead, courier_loss
from courier.model.reconstruction import reconstruct

# The held-out rows are read in a fixed way, whatever the run's train.shuffle_window and
# train.batch_grouping: windows of 4 files, rows in random order, so that a candidate and
# the production model (courier evaluate) score the same first eval_max_rows rows.
EVAL_SHUFFLE_WINDOW = 4

log = logging.getLogger(__name__)

# Caps on the embeddings kept for the health metrics: pdist is O(N^2).
_MAX_HEALTH_ROWS = 4096
_MAX_UNIFORMITY_ROWS = 1024


class Reconstructor(Protocol):
    """What the held-out evaluation reads of a model: a CourierModel, or the registered encoder
    that ``courier evaluate`` scores (courier.train.promotion)."""

    training: bool

    @property
    def loss_cfg(self) -> LossConfig: ...

    @property
    def click_head(self) -> ClickHead | None: ...

    def encode_batch(
        self, batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def modules(self) -> Iterator[nn.Module]: ...

    def eval(self) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...


@dataclass
class _Totals:
    rows: int = 0
    rows_scored: int = 0
    hit1: float = 0.0
    hit1_chance: float = 0.0
    row_auc: float = 0.0
    rank_clicked: float = 0.0
    n_clicked: int = 0
    rank_unclicked: float = 0.0
    n_unclicked: int = 0
    cos_clicked: float = 0.0
    cos_unclicked: float = 0.0
    inbatch_top1: float = 0.0
    inbatch_chance: float = 0.0
    inbatch_rank: float = 0.0
    inbatch_queries: int = 0
    loss: float = 0.0
    loss_pv: float = 0.0
    loss_ucs: float = 0.0
    batches: int = 0
    ent_sum: float = 0.0
    ent_rows: int = 0
    embeddings: list[torch.Tensor] = field(default_factory=list)
    pos_items: list[torch.Tensor] = field(default_factory=list)
    pos_recons: list[torch.Tensor] = field(default_factory=list)
    n_kept: int = 0


def _within_row(scores: torch.Tensor, valid: torch.Tensor, pos: torch.Tensor, t: _Totals) -> None:
    """scores/valid/pos: [B, Lp]; accumulates the within-page metrics."""
    neg = valid & ~pos
    scored = pos.any(1) & neg.any(1)  # [B]
    if not scored.any():
        return
    s, valid, pos, neg = scores[scored], valid[scored], pos[scored], neg[scored]
    diff = s.unsqueeze(2) - s.unsqueeze(1)  # [b, Lp(i), Lp(j)] = s_i - s_j
    win = (diff > 0).float() + 0.5 * (diff == 0).float()  # i beats j
    pair = pos.unsqueeze(2) & neg.unsqueeze(1)  # [b, Lp, Lp] (i clicked, j unclicked)
    t.row_auc += ((win * pair).sum((1, 2)) / pair.sum((1, 2))).sum().item()

    # Rank of i among the valid items: those above it, plus half the ties (not itself).
    # [b, Lp(i), Lp(j)]
    others = valid.unsqueeze(1) & ~torch.eye(s.shape[1], dtype=torch.bool, device=s.device)
    beaten_by = ((diff < 0) & others).sum(2).float()  # [b, Lp]
    tied_with = ((diff == 0) & others).sum(2).float()  # [b, Lp]
    above = beaten_by + 0.5 * tied_with
    n_valid = valid.sum(1, keepdim=True).float()  # [b, 1]
    rank = above / (n_valid - 1).clamp(min=1)  # [b, Lp]
    t.rank_clicked += rank[pos].sum().item()
    t.rank_unclicked += rank[neg].sum().item()
    t.n_clicked += int(pos.sum())
    t.n_unclicked += int(neg.sum())
    t.cos_clicked += s[pos].sum().item()
    t.cos_unclicked += s[neg].sum().item()

    best_pos = s.masked_fill(~pos, float("-inf")).max(1).values
    best_neg = s.masked_fill(~neg, float("-inf")).max(1).values
    t.hit1 += ((best_pos > best_neg).float() + 0.5 * (best_pos == best_neg).float()).sum().item()
    t.hit1_chance += (pos.sum(1).float() / n_valid.squeeze(1)).sum().item()
    t.rows_scored += int(scored.sum())


def _in_batch(
    e_items: torch.Tensor, recon: torch.Tensor, valid: torch.Tensor, query: torch.Tensor, t: _Totals
) -> None:
    """e_items, recon: [B*Lp, d] normalised; valid, query: [B*Lp] bool."""
    items = e_items[valid]  # [P, d]
    if query.sum() == 0 or items.shape[0] < 2:
        return
    index_in_items = torch.cumsum(valid.long(), 0) - 1  # position of each valid slot in `items`
    q = recon[query]  # [Q, d]
    own = index_in_items[query]  # [Q]
    sims = q @ items.T  # [Q, P]
    own_sim = sims.gather(1, own.unsqueeze(1))  # [Q, 1]
    greater = (sims > own_sim).sum(1).float()
    ties = (sims == own_sim).sum(1).float() - 1  # minus itself
    t.inbatch_top1 += ((greater == 0).float() / (1 + ties)).sum().item()
    t.inbatch_rank += ((greater + 0.5 * ties) / (items.shape[0] - 1)).sum().item()
    t.inbatch_chance += q.shape[0] / items.shape[0]
    t.inbatch_queries += q.shape[0]


@contextmanager
def _batch_norm_mode(model: Reconstructor, batch_stats: bool) -> Iterator[None]:
    """Eval mode; with ``batch_stats`` BatchNorm normalises with each batch's own statistics.

    A randomly initialised network's running statistics are the defaults (mean 0,
    var 1), which leaves its activations unnormalised and its embeddings nearly
    collinear; at step 0 training normalised with batch statistics, so that is
    the fair way to look at the initial model. Momentum 0 keeps the running
    statistics untouched meanwhile.
    """
    was_training = model.training
    model.eval()
    norms = (
        [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if batch_stats
        else []
    )
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.train()
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)


@torch.no_grad()
def evaluate_reconstruction(
    model: Reconstructor,
    source: BatchSource,
    device: torch.device,
    max_rows: int,
    epoch: int = 0,
    batch_norm_stats: str = "running",
    history_clicks: int | None = None,
) -> dict[str, float]:
    """Evaluate ``model`` on up to ``max_rows`` rows of ``source`` (one pass of ``epoch``), on the
    newest ``history_clicks`` clicks of each history (train.history_clicks; None = all).

    Runs single-process (no collectives) and in fp32, in eval mode; BatchNorm
    uses its running statistics (``batch_norm_stats="running"``, how the trained
    model is used) or each batch's statistics (``"batch"``, for a model at
    initialisation). The model's modes are restored afterwards. Returns the
    metrics named in the module docstring.
    """
    if batch_norm_stats not in ("running", "batch"):
        raise ValueError(f"batch_norm_stats must be 'running' or 'batch', got {batch_norm_stats!r}")
    t = _Totals()
    with (
        _batch_norm_mode(model, batch_norm_stats == "batch"),
        closing(source.batches(epoch)) as batches,
    ):
        for batch in batches:
            if t.rows >= max_rows:
                break
            batch = {
                k: v.to(device, non_blocking=True)
                for k, v in newest_clicks(batch, history_clicks).items()
            }
            _evaluate_batch(model, batch, t)
    return _finish(t)


def _evaluate_batch(model: Reconstructor, batch: dict[str, torch.Tensor], t: _Totals) -> None:
    labels = batch["pv_labels"]  # [B, Lp]
    click_mask = batch["click_mask"].bool()  # [B, Lc]
    e_pv, e_click = model.encode_batch(batch)  # [B, Lp, d], [B, Lc, d]
    e_pv, e_click = e_pv.float(), e_click.float()
    b, l_pv, d = e_pv.shape
    rec = reconstruct(e_pv, e_click, click_mask)  # recon [B, Lp, d]
    has_history = rec.has_history.unsqueeze(1)  # [B, 1]
    valid = (labels >= 0) & has_history
    pos = (labels == 1) & valid
    scores = F.cosine_similarity(e_pv, rec.recon, dim=-1)  # [B, Lp]
    t.rows += b
    _within_row(scores, valid, pos, t)
    _in_batch(
        F.normalize(e_pv.reshape(b * l_pv, d), dim=-1),
        F.normalize(rec.recon.reshape(b * l_pv, d), dim=-1),
        valid.reshape(-1),
        pos.reshape(-1),
        t,
    )
    out = courier_loss(
        e_pv, labels, e_click, click_mask, model.loss_cfg, click_head=model.click_head, comm=None
    )
    t.loss += out.loss.item()
    t.loss_pv += out.loss_pv.item()
    t.loss_ucs += out.loss_ucs.item()
    t.batches += 1

    attn_rows = rec.attn_rows & valid  # [B, Lp]
    t.ent_sum += attention_entropy(rec.attn, attn_rows).item() * int(attn_rows.sum())
    t.ent_rows += int(attn_rows.sum())
    if t.n_kept < _MAX_HEALTH_ROWS:
        t.embeddings.append(e_pv[labels >= 0].cpu())  # [n_valid, d]
        t.pos_items.append(e_pv[pos].cpu())
        t.pos_recons.append(rec.recon[pos].cpu())
        t.n_kept += int((labels >= 0).sum())


def _finish(t: _Totals) -> dict[str, float]:
    if t.rows_scored == 0:
        raise ValueError(
            f"evaluation saw {t.rows} rows but none with a clicked and an unclicked item"
        )
    emb = torch.cat(t.embeddings)[:_MAX_HEALTH_ROWS]
    pos_items, pos_recons = torch.cat(t.pos_items), torch.cat(t.pos_recons)
    n = t.rows_scored
    return {
        "rows": float(t.rows),
        "rows_scored": float(n),
        "hit1": t.hit1 / n,
        "hit1_chance": t.hit1_chance / n,
        "row_auc": t.row_auc / n,
        "rank_clicked": t.rank_clicked / max(1, t.n_clicked),
        "rank_unclicked": t.rank_unclicked / max(1, t.n_unclicked),
        "cos_clicked": t.cos_clicked / max(1, t.n_clicked),
        "cos_unclicked": t.cos_unclicked / max(1, t.n_unclicked),
        "inbatch_top1": t.inbatch_top1 / max(1, t.inbatch_queries),
        "inbatch_top1_chance": t.inbatch_chance / max(1, t.inbatch_queries),
        "inbatch_rank": t.inbatch_rank / max(1, t.inbatch_queries),
        "loss": t.loss / max(1, t.batches),
        "loss_pv": t.loss_pv / max(1, t.batches),
        "loss_ucs": t.loss_ucs / max(1, t.batches),
        "alignment": alignment(pos_items, pos_recons).item(),
        "uniformity": uniformity(emb[:_MAX_UNIFORMITY_ROWS]).item(),
        "embedding_std": embedding_std(emb).item(),
        "attention_entropy": t.ent_sum / max(1, t.ent_rows),
    }
