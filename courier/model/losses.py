"""COURIER losses on embeddings: PV contrastive loss (eq. 4-6, batched), user click
sequence loss (section 3.4), their ablations and an optional BCE click head.

Everything takes embeddings, not images, so it can be tested and reused without
a backbone. Shapes: ``B`` rows (page views), ``Lp`` PV slots, ``Lc`` click slots.

Global batch and normalisation (read this before changing anything)
-------------------------------------------------------------------
With collectives (``distributed.py``), negatives are the PV items (resp. UCS targets) of ALL
ranks: each rank all-gathers its normalised item embeddings (with gradients,
see ``distributed.py``) and computes the loss columns of its OWN positives
against all gathered rows. Each column's loss is divided by the GLOBAL number of
loss-carrying columns, and the local sum is multiplied by the world size ``W``
because DDP (and Horovod's DistributedOptimizer) average gradients over ranks. Then, summed over
ranks, the gradients equal those of one process on the concatenated batch, also when ranks
hold different numbers of rows/valid items/positives.

The returned ``loss`` has the value of the global loss on every rank (a
detached correction is added), while its gradient is the rank's share above.
So ``loss.item()`` can be logged from any rank, and ``loss.backward()`` under
DDP (mean reduction) gives exactly the single-process gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import _pytree as pytree

from courier.config.model import Ablation, LossConfig
from courier.model.distributed import Collectives, all_reduce_sum, gather_rows, world_size
from courier.model.reconstruction import (
    Reconstruction,
    reconstruct,
    reconstruct_without_query,
    split_click_sequence,
)

# Finite stand-in for -inf in the column softmax: exp(-1e9 - lse) is exactly 0 in
# float32/64, and an all-masked column stays finite (no NaN in backward).
_MASKED_LOGIT = -1e9


class ClickHead(nn.Module):
    """Optional BCE click predictor on ``[R, E_pv]`` (from the paper's research code).

    Two-layer MLP 2d -> d -> 1. Only created when ``click_bce_weight > 0``, so the
    default model has no parameters that the paper does not describe.
    """

    def __init__(self, embedding_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2 * embedding_dim, embedding_dim),
            nn.ReLU(inplace=True),
            nn.Linear(embedding_dim, 1),
        )

    def forward(self, recon: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """recon [N, d], items [N, d] -> click logits [N]."""
        return self.mlp(torch.cat([recon, items], dim=-1)).squeeze(-1)


@dataclass
class LossOutput:
    """Loss to optimise plus detached, globally reduced terms for logging.

    Attributes:
        loss: scalar to ``backward()``; value = global ``w_pv L_pv + w_ucs L_ucs (+ w_bce L_bce)``.
        loss_pv: global PV loss (mean over positive PV items that have a reconstruction).
        loss_ucs: global UCS loss (mean over rows with >= 2 clicks); computed for
            logging even when its weight is 0 (``no_ucs``), without gradient.
        loss_click_bce: global BCE of the optional click head (0 when off).
        n_pos_pv: global number of PV columns carrying loss.
        n_ucs: global number of UCS targets.
        attn_entropy: mean entropy (nats) of the PV reconstruction attention.
        pv_pos_cos: mean cos(E[b], R[b]) over PV positives.
        ucs_pos_cos: mean cos(target, R) over UCS targets.
    """

    loss: torch.Tensor
    loss_pv: torch.Tensor
    loss_ucs: torch.Tensor
    loss_click_bce: torch.Tensor
    n_pos_pv: torch.Tensor
    n_ucs: torch.Tensor
    attn_entropy: torch.Tensor
    pv_pos_cos: torch.Tensor
    ucs_pos_cos: torch.Tensor

    def metrics(self) -> dict[str, float]:
        """All fields as Python floats (a single host sync)."""
        names = [f.name for f in fields(self)]
        values = torch.stack([getattr(self, n).detach().to(torch.float64) for n in names]).tolist()
        return dict(zip(names, values, strict=True))


# DDP flattens a module's output with pytree when find_unused_parameters or
# static_graph is on; registering keeps the tensors of LossOutput visible to it.
pytree.register_dataclass(LossOutput)


@dataclass
class ContrastiveSums:
    """Local (this rank's) sums of one contrastive term.

    Attributes:
        loss_sum: scalar, sum of per-column losses of this rank's columns (with grad).
        cos_sum: scalar, detached sum of cos(E[b], R[b]) over the same columns.
    """

    loss_sum: torch.Tensor
    cos_sum: torch.Tensor


def contrastive_reconstruction_sums(
    items: torch.Tensor,
    recons: torch.Tensor,
    columns: torch.Tensor,
    pool: torch.Tensor,
    tau: float,
    contrast: bool = True,
    comm: Collectives | None = None,
) -> ContrastiveSums:
    """``L_contrast`` of the paper, unnormalised: per-column losses summed over local columns.

    Column b (an item with a reconstruction that should match it) has loss
    ``-log softmax_a(cos(E[a], R[b]) / tau)[b]`` where ``a`` runs over the pool
    of ALL ranks (all valid PV items, or only positives for ``no_neg_pv``).

    Args:
        items: [N, d] this rank's item embeddings E (padding rows arbitrary but finite).
        recons: [N, d] reconstruction R of each item (only used for columns).
        columns: [N] bool, items whose own loss column counts (y=1 and R exists).
        pool: [N] bool, items allowed in softmax denominators (must contain ``columns``).
        tau: temperature.
        contrast: False = ``no_contrast`` ablation, per-column loss ``1 - cos(E[b], R[b])``.
        comm: collectives to gather negatives over; None = this process only.
    """
    e = F.normalize(items, dim=-1)  # [N, d]
    r = F.normalize(recons, dim=-1)  # [N, d]; zero rows stay zero
    diag_cos = (e * r).sum(dim=-1)  # [N]
    zero = torch.zeros_like(diag_cos)
    cos_sum = torch.where(columns, diag_cos, zero).sum().detach()
    if not contrast:
        return ContrastiveSums(torch.where(columns, 1.0 - diag_cos, zero).sum(), cos_sum)

    # The pool flag travels in the same gather as the embeddings (one collective).
    packed = torch.cat([e, pool.to(e.dtype).unsqueeze(1)], dim=1)  # [N, d+1]
    gathered = gather_rows(packed, comm)
    e_all = gathered.rows[:, :-1]  # [N_all, d]
    pool_all = gathered.rows[:, -1] > 0.5  # [N_all]
    logits = torch.matmul(e_all, r.transpose(0, 1)) / tau  # [N_all, N]: rows a, columns b
    logits = logits.masked_fill(~pool_all.unsqueeze(1), _MASKED_LOGIT)
    log_norm = torch.logsumexp(logits, dim=0)  # [N], softmax over a (column-wise)
    local = torch.arange(items.shape[0], device=items.device)
    own = logits[gathered.offset + local, local]  # [N], S[b, b]
    per_column = log_norm - own  # [N]
    return ContrastiveSums(torch.where(columns, per_column, zero).sum(), cos_sum)


def _entropy_sum(rec: Reconstruction) -> tuple[torch.Tensor, torch.Tensor]:
    attn = rec.attn.detach()
    ent = -torch.special.xlogy(attn, attn).sum(dim=-1)  # [B, Q']
    rows = rec.attn_rows
    return torch.where(rows, ent, torch.zeros_like(ent)).sum(), rows.sum().to(ent.dtype)


def courier_loss(
    e_pv: torch.Tensor,
    pv_labels: torch.Tensor,
    e_click: torch.Tensor,
    click_mask: torch.Tensor,
    cfg: LossConfig,
    *,
    click_head: ClickHead | None = None,
    comm: Collectives | None = None,
) -> LossOutput:
    """Full COURIER loss from embeddings.

    Args:
        e_pv: [B, Lp, d] PV item embeddings (raw, not normalised).
        pv_labels: [B, Lp] int, 1 clicked, 0 not clicked, -1 padding.
        e_click: [B, Lc, d] click history embeddings, oldest -> newest.
        click_mask: [B, Lc] bool, True = valid click.
        cfg: loss settings (tau, weights, ablation).
        click_head: required iff ``cfg.click_bce_weight > 0``.
        comm: data-parallel collectives for global negatives; None = single process.
            Every rank must call this with the same ``cfg``.

    Rows without any valid click have no reconstruction: their PV items carry
    no loss column, but as valid embeddings they still serve as negatives for
    other rows' columns (also in ``no_neg_pv``, if clicked). Rows with fewer
    than 2 clicks do not enter the UCS loss. Padded embeddings are ignored
    entirely (zeroed, masked from every softmax and count).
    """
    if cfg.click_bce_weight > 0 and click_head is None:
        raise ValueError("click_bce_weight > 0 needs a click_head")
    # Losses in at least float32 whatever autocast did to the embeddings: cos/tau
    # reaches 1/tau = 20 and the softmax over tens of thousands of items needs it.
    with torch.autocast(device_type=e_pv.device.type, enabled=False):
        return _courier_loss(e_pv, pv_labels, e_click, click_mask, cfg, click_head, comm)


@dataclass
class _Terms:
    """What the loss terms compare on this rank (PV masks flattened to B*Lp rows).

    The embeddings stay [B, Lp, d]: each use flattens its own view, so that autograd sums their
    gradients in the same order as one function did (bit-identical gradients).
    """

    e_pv: torch.Tensor  # [B, Lp, d] PV item embeddings (padding zeroed)
    pv_recon: torch.Tensor  # [B, Lp, d] each PV item reconstructed from the row's clicks
    pv_pos: torch.Tensor  # [B*Lp] clicked
    pv_cols: torch.Tensor  # [B*Lp] positives of the PV term (clicked, with a history)
    # [B*Lp] candidates of the PV term (every valid item, or the clicked ones: no_neg_pv)
    pv_pool: torch.Tensor
    bce_items: torch.Tensor  # [B*Lp] items of the click BCE (valid, with a history)
    ucs_targets: torch.Tensor  # [B, d] the most recent click
    ucs_recon: torch.Tensor  # [B, d] it, reconstructed from the earlier clicks
    ucs_cols: torch.Tensor  # [B] rows with a UCS target
    rec: Reconstruction  # the PV reconstruction (attention entropy)


def _loss_terms(
    e_pv: torch.Tensor,
    pv_labels: torch.Tensor,
    e_click: torch.Tensor,
    click_mask: torch.Tensor,
    cfg: LossConfig,
    dtype: torch.dtype,
) -> _Terms:
    """Reconstruct every PV item from the row's clicks,
    and each row's latest click from the earlier ones."""
    b, l_pv, _d = e_pv.shape
    click_mask = click_mask.bool()
    pv_valid = pv_labels >= 0  # [B, Lp]
    pv_pos = pv_labels == 1  # [B, Lp]
    e_pv = e_pv.to(dtype).masked_fill(~pv_valid.unsqueeze(-1), 0.0)  # [B, Lp, d]
    e_click = e_click.to(dtype).masked_fill(~click_mask.unsqueeze(-1), 0.0)  # [B, Lc, d]
    no_rec = cfg.ablation == Ablation.NO_RECONSTRUCTION

    # --- PV term: reconstruct every PV item from the row's clicks.
    rec = (
        reconstruct_without_query(l_pv, e_click, click_mask)
        if no_rec
        else reconstruct(e_pv, e_click, click_mask)
    )
    pv_cols = pv_pos & rec.has_history.unsqueeze(1)  # [B, Lp]
    pv_pool = pv_pos if cfg.ablation == Ablation.NO_NEG_PV else pv_valid  # [B, Lp]

    # --- UCS term: most recent click reconstructed from the earlier ones.
    split = split_click_sequence(click_mask)
    targets = e_click[torch.arange(b, device=e_click.device), split.target_index]  # [B, d]
    if no_rec:
        ucs_rec = reconstruct_without_query(1, e_click, split.history_mask)
    else:
        ucs_rec = reconstruct(targets.unsqueeze(1), e_click, split.history_mask)
    return _Terms(
        e_pv=e_pv,
        pv_recon=rec.recon,
        pv_pos=pv_pos.reshape(-1),
        pv_cols=pv_cols.reshape(-1),
        pv_pool=pv_pool.reshape(-1),
        bce_items=(pv_valid & rec.has_history.unsqueeze(1)).reshape(-1),
        ucs_targets=targets,
        ucs_recon=ucs_rec.recon[:, 0],
        ucs_cols=split.has_target,
        rec=rec,
    )


def _click_bce_sum(
    t: _Terms, click_head: ClickHead | None, w_bce: float, dtype: torch.dtype
) -> torch.Tensor:
    """Summed BCE of the optional click head on ``[R, E_pv]``
    over ``bce_items``; 0 when its weight is 0."""
    if w_bce <= 0:
        return t.e_pv.new_zeros(())
    assert click_head is not None
    head_dtype = next(click_head.parameters()).dtype
    d = t.e_pv.shape[-1]
    logits = click_head(
        t.pv_recon.reshape(-1, d).to(head_dtype), t.e_pv.reshape(-1, d).to(head_dtype)
    ).to(dtype)  # [B*Lp]
    bce = F.binary_cross_entropy_with_logits(logits, t.pv_pos.to(dtype), reduction="none")
    return torch.where(t.bce_items, bce, torch.zeros_like(bce)).sum()


def _courier_loss(
    e_pv: torch.Tensor,
    pv_labels: torch.Tensor,
    e_click: torch.Tensor,
    click_mask: torch.Tensor,
    cfg: LossConfig,
    click_head: ClickHead | None,
    comm: Collectives | None,
) -> LossOutput:
    dtype = torch.promote_types(torch.promote_types(e_pv.dtype, e_click.dtype), torch.float32)
    t = _loss_terms(e_pv, pv_labels, e_click, click_mask, cfg, dtype)
    contrast = cfg.ablation != Ablation.NO_CONTRAST
    w_pv, w_ucs = cfg.w_pv, cfg.effective_w_ucs
    grad_on = torch.is_grad_enabled()

    # Global normalisers must exist before the loss is built (one small all-reduce).
    local_counts = torch.stack([t.pv_cols.sum(), t.ucs_cols.sum(), t.bce_items.sum()]).to(dtype)
    counts = all_reduce_sum(local_counts, comm)

    # A term with weight 0 is still computed for logging, but without autograd
    # (so it also issues no backward collective, consistently on every rank).
    with torch.set_grad_enabled(grad_on and w_pv > 0):
        d = t.e_pv.shape[-1]
        pv = contrastive_reconstruction_sums(
            t.e_pv.reshape(-1, d),
            t.pv_recon.reshape(-1, d),
            t.pv_cols,
            t.pv_pool,
            cfg.tau,
            contrast,
            comm,
        )
    with torch.set_grad_enabled(grad_on and w_ucs > 0):
        ucs = contrastive_reconstruction_sums(
            t.ucs_targets, t.ucs_recon, t.ucs_cols, t.ucs_cols, cfg.tau, contrast, comm
        )
    bce_sum = _click_bce_sum(t, click_head, cfg.click_bce_weight, dtype)
    return _combine(pv, ucs, bce_sum, _entropy_sum(t.rec), counts, cfg, comm)


def _combine(
    pv: ContrastiveSums,
    ucs: ContrastiveSums,
    bce_sum: torch.Tensor,
    entropy: tuple[torch.Tensor, torch.Tensor],
    counts: torch.Tensor,
    cfg: LossConfig,
    comm: Collectives | None,
) -> LossOutput:
    """This rank's sums -> the global means
    (logged) and the loss whose gradient is the global one."""
    w_pv, w_ucs, w_bce = cfg.w_pv, cfg.effective_w_ucs, cfg.click_bce_weight
    n_pv, n_ucs, n_bce = counts.unbind()
    ent_sum, ent_count = entropy
    local_stats = torch.stack(
        [
            pv.loss_sum.detach(),
            ucs.loss_sum.detach(),
            bce_sum.detach(),
            ent_sum,
            ent_count,
            pv.cos_sum,
            ucs.cos_sum,
        ]
    )
    g_pv, g_ucs, g_bce, g_ent, g_ent_n, g_pv_cos, g_ucs_cos = all_reduce_sum(
        local_stats, comm
    ).unbind()
    n_pv1, n_ucs1, n_bce1 = n_pv.clamp(min=1), n_ucs.clamp(min=1), n_bce.clamp(min=1)
    loss_pv, loss_ucs, loss_bce = g_pv / n_pv1, g_ucs / n_ucs1, g_bce / n_bce1
    total_global = w_pv * loss_pv + w_ucs * loss_ucs + w_bce * loss_bce

    # x W: DDP / hvd.DistributedOptimizer divide the summed gradients by the world size.
    world = world_size(comm)
    total_local = world * (
        w_pv * pv.loss_sum / n_pv1 + w_ucs * ucs.loss_sum / n_ucs1 + w_bce * bce_sum / n_bce1
    )
    loss = total_local + (total_global - total_local).detach()

    return LossOutput(
        loss=loss,
        loss_pv=loss_pv.detach(),
        loss_ucs=loss_ucs.detach(),
        loss_click_bce=loss_bce.detach(),
        n_pos_pv=n_pv.detach(),
        n_ucs=n_ucs.detach(),
        attn_entropy=(g_ent / g_ent_n.clamp(min=1)).detach(),
        pv_pos_cos=(g_pv_cos / n_pv1).detach(),
        ucs_pos_cos=(g_ucs_cos / n_ucs1).detach(),
    )
