"""Training of the DIN-style CTR model: AdamW on BCE, early stopping on validation AUC.

A run is deterministic for ``ctr.seed`` on one machine: the weights are seeded,
the epochs' shuffles come from a seeded generator, and the rows arrive in the
order ``read_ctr_samples`` sorts them.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from courier.config.ctr import CtrConfig
from courier.ctr.data import CtrTensors, Vocabularies
from courier.ctr.metrics import auc
from courier.ctr.model import DinCtrModel
from courier.progress import Progress

log = logging.getLogger(__name__)
PREDICT_BATCH = 8192


@dataclass
class CtrFit:
    """A trained CTR model and how it got there."""

    model: DinCtrModel
    best_epoch: int
    # per epoch: loss, validation AUC, seconds
    history: list[dict[str, float]] = field(default_factory=list)
    train_rows: int = 0
    seconds: float = 0.0

    @property
    def impressions_per_second(self) -> float:
        epochs = len(self.history)
        return self.train_rows * epochs / self.seconds if self.seconds else float("nan")


def predict(model: DinCtrModel, data: CtrTensors) -> np.ndarray:
    """Click probabilities [N] of ``data`` (eval mode, batched, no gradients)."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(data), PREDICT_BATCH):
            idx = torch.arange(start, min(start + PREDICT_BATCH, len(data)))
            out.append(torch.sigmoid(model(data.take(idx))).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def fit_ctr(
    cfg: CtrConfig,
    vocab: Vocabularies,
    train: CtrTensors,
    validation: CtrTensors,
    image_vectors: np.ndarray | None = None,
    show_progress: bool = False,
) -> CtrFit:
    """Train until the validation AUC stops improving
    for ``cfg.patience`` epochs; keep the best epoch."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = DinCtrModel(cfg, vocab, image_vectors)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    shuffles = torch.Generator().manual_seed(cfg.seed)
    fit = CtrFit(model, best_epoch=0, train_rows=len(train))
    best_auc, best_state, stale = -1.0, copy.deepcopy(model.state_dict()), 0
    started = time.perf_counter()
    for epoch in range(1, cfg.max_epochs + 1):
        t0 = time.perf_counter()
        loss = _train_epoch(model, optimizer, train, cfg.batch_size, shuffles, show_progress, epoch)
        val_auc = auc(validation.label.numpy(), predict(model, validation))
        fit.history.append(
            {
                "epoch": epoch,
                "loss": loss,
                "validation_auc": val_auc,
                "seconds": time.perf_counter() - t0,
            }
        )
        log.info("ctr epoch %d: loss %.4f, validation AUC %.4f", epoch, loss, val_auc)
        if val_auc > best_auc:
            best_auc, best_state, fit.best_epoch, stale = (
                val_auc,
                copy.deepcopy(model.state_dict()),
                epoch,
                0,
            )
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    fit.seconds = time.perf_counter() - started
    model.load_state_dict(best_state)
    return fit


def _train_epoch(
    model: DinCtrModel,
    optimizer: torch.optim.Optimizer,
    train: CtrTensors,
    batch_size: int,
    shuffles: torch.Generator,
    show_progress: bool,
    epoch: int,
) -> float:
    """One pass over ``train`` in a seeded random order; the mean BCE."""
    model.train()
    order = torch.randperm(len(train), generator=shuffles)
    steps = (len(train) + batch_size - 1) // batch_size
    total = 0.0
    progress = (
        Progress(f"ctr epoch {epoch}", total=steps, unit="batches") if show_progress else None
    )
    for step in range(steps):
        batch = train.take(order[step * batch_size : (step + 1) * batch_size])
        loss = F.binary_cross_entropy_with_logits(model(batch), batch.label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
        if progress:
            progress.update(1)
    if progress:
        progress.close()
    return total / len(train)
