"""``CourierModel``: image encoder + COURIER loss on a batch of page-view rows."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from courier.config.model import LossConfig, ModelConfig
from courier.model.backbones import ImageEncoder, build_image_encoder
from courier.model.distributed import Collectives, active_collectives
from courier.model.losses import ClickHead, LossOutput, courier_loss


def _check_batch(batch: Mapping[str, torch.Tensor]) -> None:
    pv_images, pv_labels = batch["pv_images"], batch["pv_labels"]
    click_images, click_mask = batch["click_images"], batch["click_mask"]
    if pv_images.dim() != 5 or click_images.dim() != 5:
        raise ValueError(
            "pv_images/click_images must be [B, L, 3, H, W], got "
            f"{tuple(pv_images.shape)} / {tuple(click_images.shape)}"
        )
    if pv_labels.shape != pv_images.shape[:2]:
        raise ValueError(
            f"pv_labels {tuple(pv_labels.shape)} != pv_images[:2] {tuple(pv_images.shape[:2])}"
        )
    if click_mask.shape != click_images.shape[:2]:
        raise ValueError(
            f"click_mask {tuple(click_mask.shape)} != click_images[:2] "
            f"{tuple(click_images.shape[:2])}"
        )
    if pv_images.shape[0] != click_images.shape[0]:
        raise ValueError("pv and click tensors disagree on the batch size")


def _slot_indices(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of the valid PV slots [n_pv] and valid click slots [n_click] of a batch."""
    pv_idx = (batch["pv_labels"] >= 0).reshape(-1).nonzero().squeeze(1)  # [n_pv]
    click_idx = batch["click_mask"].bool().reshape(-1).nonzero().squeeze(1)  # [n_click]
    if pv_idx.numel() + click_idx.numel() == 0:
        raise ValueError("batch holds no valid image (all PV and click slots are padding)")
    return pv_idx, click_idx


def _image_key_names(batch: Mapping[str, torch.Tensor]) -> tuple[str, str]:
    """The batch keys that tell images apart: the loader's image keys (a hash of each slot's JPEG),
    else the item ids (a batch built from one image per item, e.g. the in-memory trainer's)."""
    if "pv_image_keys" in batch and "click_image_keys" in batch:
        return "pv_image_keys", "click_image_keys"
    return "pv_item_ids", "click_item_ids"


def _distinct_slots(
    batch: Mapping[str, torch.Tensor], pv_idx: torch.Tensor, click_idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which valid slots hold the first copy of each distinct item, and where every slot's copy is.

    Returns:
        first_pv: [U_pv] flat PV slots encoded (the first slot of an item seen first among PV
            slots);
        first_click: [U_click] flat click slots encoded (items that appear only in the history);
        inverse: [n_pv + n_click] row of each valid slot (PV slots first) in
            ``[first_pv; first_click]``.
    """
    pv_key, click_key = _image_key_names(batch)
    ids = torch.cat(
        [
            batch[pv_key].reshape(-1).index_select(0, pv_idx),
            batch[click_key].reshape(-1).index_select(0, click_idx),
        ]
    )  # [n]
    n, n_pv = ids.numel(), pv_idx.numel()
    distinct, inverse = torch.unique(ids, return_inverse=True)  # [U], [n]
    slots = torch.arange(n, device=ids.device)
    # [U] first slot
    first = torch.full_like(distinct, n).scatter_reduce(0, inverse, slots, reduce="amin")
    from_pv = first < n_pv  # [U]
    # Encoded order: distinct items first seen in a PV slot, then those first seen in the history.
    order = torch.cat([from_pv.nonzero().squeeze(1), (~from_pv).nonzero().squeeze(1)])  # [U]
    position = torch.empty_like(order).scatter_(
        0, order, torch.arange(order.numel(), device=ids.device)
    )
    return (
        pv_idx.index_select(0, first[from_pv]),
        click_idx.index_select(0, first[~from_pv] - n_pv),
        position.index_select(0, inverse),
    )


def encode_valid_images(
    encoder: Callable[[torch.Tensor], torch.Tensor],
    batch: Mapping[str, torch.Tensor],
    distinct: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed the valid images of a batch with ``encoder`` ([N, 3, H, W] -> [N, d]), in one call.

    With ``distinct`` (and the batch's ``pv_image_keys`` / ``click_image_keys``, or its item ids),
    each distinct image is encoded once and its embedding gathered into every PV and click slot it
    fills: the loss is the same function of the same embeddings, and its gradient reaches the one
    copy through every slot. Popular items recur across the rows of a
    batch, so at history 20 and batch 256 about half the slots are repeats (docs/BENCHMARKS.md).
    BatchNorm in training mode then normalises over distinct images rather than over slots
    (docs/TRAINING.md); in eval mode, or without BatchNorm, both paths give the same numbers.

    Returns:
        e_pv [B, Lp, d] and e_click [B, Lc, d]; padded slots are zeros.
    """
    _check_batch(batch)
    pv_images, click_images = batch["pv_images"], batch["click_images"]
    b, l_pv = pv_images.shape[:2]
    l_click = click_images.shape[1]
    pv_idx, click_idx = _slot_indices(batch)
    n_pv = pv_idx.numel()
    gather: torch.Tensor | None = None  # [n_pv + n_click]: each slot's row of the encoded images
    pv_src, click_src = pv_idx, click_idx
    if distinct and ("pv_item_ids" in batch or "pv_image_keys" in batch):
        pv_src, click_src, gather = _distinct_slots(batch, pv_idx, click_idx)
    # One call for PV and clicks: BatchNorm statistics see only real images,
    # and the backbone runs once per step.
    images = torch.cat(
        [
            pv_images.flatten(0, 1).index_select(0, pv_src),
            click_images.flatten(0, 1).index_select(0, click_src),
        ]
    )  # [U or n_pv + n_click, 3, H, W]
    emb = encoder(images)  # [U or n_pv + n_click, d]
    if gather is not None:
        emb = emb.index_select(0, gather)  # [n_pv + n_click, d]
    d = emb.shape[1]
    e_pv = emb.new_zeros(b * l_pv, d).index_copy(0, pv_idx, emb[:n_pv]).view(b, l_pv, d)
    e_click = emb.new_zeros(b * l_click, d).index_copy(0, click_idx, emb[n_pv:]).view(b, l_click, d)
    return e_pv, e_click


class CourierModel(nn.Module):
    """COURIER pre-training model.

    Args:
        model_cfg: backbone settings.
        loss_cfg: loss settings.
        collectives: data-parallel collectives for global negatives (the Horovod
            trainer sets ``HorovodCollectives``). ``None`` = ``torch.distributed``'s
            WORLD group when it is initialised with more than one rank, else single
            process. Average the gradients over ranks (DDP, or Horovod's
            DistributedOptimizer); the loss is scaled for it (see ``losses.py``).
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        loss_cfg: LossConfig,
        collectives: Collectives | None = None,
    ) -> None:
        super().__init__()
        self.model_cfg = model_cfg
        self.loss_cfg = loss_cfg
        self.collectives = collectives
        self.encoder: ImageEncoder = build_image_encoder(model_cfg)
        self.click_head: ClickHead | None = (
            ClickHead(model_cfg.embedding_dim) if loss_cfg.click_bce_weight > 0 else None
        )

    def encode_batch(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed only the valid images of a batch,
        in one backbone call (see ``encode_valid_images``)."""
        return encode_valid_images(self.encoder, batch, self.model_cfg.distinct_images)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> LossOutput:
        """batch: ``pv_images`` [B,Lp,3,H,W], ``pv_labels`` [B,Lp] (1/0/-1 padding),
        ``click_images`` [B,Lc,3,H,W], ``click_mask`` [B,Lc] bool (left-padded,
        oldest -> newest). Returns the loss and its logged terms.
        """
        e_pv, e_click = self.encode_batch(batch)
        return courier_loss(
            e_pv,
            batch["pv_labels"],
            e_click,
            batch["click_mask"].bool(),
            self.loss_cfg,
            click_head=self.click_head,
            comm=active_collectives(self.collectives),
        )

    @torch.no_grad()
    def embed(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Inference embeddings: images [N, 3, H, W] -> [N, d].

        Raw backbone output by default (what the loss sees before its cosine);
        ``normalize=True`` L2-normalises. Does not change train/eval mode: call
        ``model.eval()`` first so BatchNorm uses running statistics.
        """
        emb = self.encoder(images)
        if not normalize:
            return emb
        return F.normalize(emb.to(torch.promote_types(emb.dtype, torch.float32)), dim=-1)
