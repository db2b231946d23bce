"""Train COURIER from a training set in memory and score its Cluster-IDs on the validation days.

The search for a training recipe (docs/CTR.md, "The recipe") needs many encoders, each scored
as a shop would score it: k-means Cluster-IDs in the CTR model, lift on days the encoder never
saw. ``courier experiment`` does that through every warehouse stage (minutes of Spark per
encoder); this module does the same computation on a ``TrainingSet`` in memory:

    images decoded once (the catalogue fits: 3,000 items x 3 x 64 x 64 bytes = 37 MB)
    -> batches of rows by item index (random, or query-grouped like train.batch_grouping=query)
    -> CourierModel (the same model, loss and Adam settings as `courier train`)
    -> at each evaluation step: every item embedded, spherical k-means (cluster.k),
       the DIN CTR model with those Cluster-IDs trained on the CTR training days but the last,
       early-stopped on that day, scored on the validation days: the test days are never read.

The validation share of the oracle = (AUC - AUC none) / (AUC oracle - AUC none), each the mean
over ``ctr_seeds`` CTR models.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from courier.config import CourierConfig
from courier.ctr.data import DateSplit, ImageFeatureOverride
from courier.ctr.evaluate import CtrDataset, evaluate_variant, with_usage
from courier.data.decode import normalise_images
from courier.experiment.style_metrics import knn_style_accuracy, normalized_mutual_information
from courier.experiment.trainset import TrainingSet
from courier.features.kmeans import fit_spherical_kmeans
from courier.train.loop import build_model

log = logging.getLogger(__name__)


@dataclass
class Scored:
    """One encoder scored at one point of its training."""

    step: int
    k: int  # clusters of the Cluster-IDs scored
    images_encoded: int  # distinct images through the backbone so far (the compute axis)
    seconds: float  # training seconds so far
    validation_auc: float  # mean over CTR seeds
    share: float | None  # of the oracle's validation lift
    style_knn10: float
    style_nmi: float
    category_nmi: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Selection:
    """The CTR rows of a recipe search: trained on the CTR training days but the last, early-stopped
    on that last day, scored on the validation days."""

    data: CtrDataset
    ctr_seeds: tuple[int, ...]
    none_auc: float = math.nan
    oracle_auc: float = math.nan

    @classmethod
    def from_trainset(
        cls,
        ts: TrainingSet,
        cfg: CourierConfig,
        ctr_seeds: tuple[int, ...],
        cache: Path | None = None,
    ) -> Selection:
        """The selection rows of ``ts`` with the none and oracle AUCs
        (read from ``cache`` when it holds
        them for the same training set, CTR config and seeds; written there otherwise)."""
        split = ts.split
        selection = DateSplit(
            (split.train[0], split.train[1] - dt.timedelta(days=1)),
            (split.train[1], split.train[1]),
            split.validation,
        )
        out = cls(CtrDataset.from_arrays(ts.ctr_arrays(), selection), ctr_seeds)
        key = json.dumps(
            {
                "trainset": ts.meta.get("written"),
                "split": ts.meta["split"],
                "seeds": list(ctr_seeds),
                "ctr": dataclasses.asdict(cfg.ctr),
            },
            sort_keys=True,
        )
        known = json.loads(cache.read_text()) if cache is not None and cache.is_file() else {}
        if key in known:
            out.none_auc, out.oracle_auc = known[key]
        else:
            out.none_auc = out._mean_auc(cfg, "none", None)
            out.oracle_auc = out._mean_auc(
                cfg, "cluster_id", ImageFeatureOverride("oracle", ts.item_ids, ts.style)
            )
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(
                    json.dumps({**known, key: [out.none_auc, out.oracle_auc]}, indent=1)
                )
        log.info(
            "recipe selection: validation AUC none %.4f, oracle %.4f", out.none_auc, out.oracle_auc
        )
        return out

    def _mean_auc(
        self, cfg: CourierConfig, usage: str, override: ImageFeatureOverride | None
    ) -> float:
        data = self.data.with_override(override) if override is not None else self.data
        # The selection split's "test" is the validation days: this is the validation AUC.
        return float(
            np.mean(
                [
                    evaluate_variant(data, with_usage(cfg.ctr, usage, s), usage).test_auc
                    for s in self.ctr_seeds
                ]
            )
        )

    def share(
        self, cfg: CourierConfig, clusters: ImageFeatureOverride
    ) -> tuple[float, float | None]:
        """(validation AUC, share of the oracle's validation lift) of these Cluster-IDs."""
        value = self._mean_auc(cfg, "cluster_id", clusters)
        return value, share_of_oracle(value, self.none_auc, self.oracle_auc)


def share_of_oracle(auc: float, none_auc: float, oracle_auc: float) -> float | None:
    """(auc - none) / (oracle - none); None when the oracle lifts nothing (no ceiling to share)."""
    lift = oracle_auc - none_auc
    return (auc - none_auc) / lift if lift > 0 else None


class MemoryBatches:
    """Batches of a TrainingSet's rows with their images gathered from the decoded catalogue."""

    def __init__(
        self,
        ts: TrainingSet,
        batch_size: int,
        grouping: str,
        shuffle_window: int,
        device: torch.device,
        seed: int,
    ) -> None:
        if len(ts.pv_items) < batch_size:
            raise ValueError(f"{len(ts.pv_items)} training rows: not one batch of {batch_size}")
        self.ts, self.batch_size, self.grouping = ts, batch_size, grouping
        self.window_rows = shuffle_window * batch_size
        self.rng = np.random.default_rng(seed)
        catalogue = normalise_images(ts.images)  # [I, 3, S, S] float32
        # One zero image at index I: padding slots gather it (the loader's zero padding).
        self.catalogue = torch.from_numpy(
            np.concatenate([catalogue, np.zeros_like(catalogue[:1])])
        ).to(device)
        self.item_ids = torch.from_numpy(ts.item_ids).to(device)
        self.device = device

    def _order(self) -> np.ndarray:
        order = self.rng.permutation(len(self.ts.pv_items))
        if self.grouping != "query":
            return order
        # Within each window of rows, one query after another (train.batch_grouping=query).
        chunks = [order[i : i + self.window_rows] for i in range(0, len(order), self.window_rows)]
        return np.concatenate([c[np.argsort(self.ts.group_keys[c], kind="stable")] for c in chunks])

    def row_batches(self) -> Iterator[np.ndarray]:
        """Row indices of each batch, epoch after epoch (batches of an epoch in random order)."""
        while True:
            order = self._order()
            starts = self.rng.permutation(len(order) // self.batch_size) * self.batch_size
            for start in starts:
                yield order[start : start + self.batch_size]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return (self.batch(rows) for rows in self.row_batches())

    def batch(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """The loader's batch keys for ``rows``
        (pv/click images [B, L, 3, S, S], labels, masks, ids)."""
        ts, dev = self.ts, self.device
        pv = torch.from_numpy(ts.pv_items[rows].astype(np.int64)).to(dev)  # [B, Lp]
        clicks = torch.from_numpy(ts.click_items[rows].astype(np.int64)).to(dev)  # [B, Lc]
        pad = len(self.catalogue) - 1
        return {
            "pv_images": self.catalogue[torch.where(pv >= 0, pv, pad)],
            "pv_labels": torch.from_numpy(ts.pv_labels[rows].astype(np.int64)).to(dev),
            "click_images": self.catalogue[torch.where(clicks >= 0, clicks, pad)],
            "click_mask": clicks >= 0,
            "pv_item_ids": torch.where(pv >= 0, self.item_ids[pv.clamp(min=0)], -1),
            "click_item_ids": torch.where(clicks >= 0, self.item_ids[clicks.clamp(min=0)], -1),
        }


def lr_factor(step: int, total: int, warmup: int, decay: str) -> float:
    """Learning-rate multiplier: linear warm-up over
    ``warmup`` steps, then constant or cosine to 0."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if decay == "cosine":
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return 1.0


@torch.no_grad()
def embed_catalogue(model: Any, batches: MemoryBatches, chunk: int = 1024) -> np.ndarray:
    """L2-normalised embeddings [I, d] of every item (eval mode: BatchNorm's running statistics)."""
    model.eval()
    images = batches.catalogue[:-1]
    out = torch.cat(
        [model.embed(images[i : i + chunk], normalize=True) for i in range(0, len(images), chunk)]
    )
    model.train()
    return out.float().cpu().numpy()


def score_embeddings(
    cfg: CourierConfig,
    ts: TrainingSet,
    selection: Selection,
    x: np.ndarray,
    step: int,
    images_encoded: int,
    seconds: float,
    k: int | None = None,
) -> Scored:
    """k-means Cluster-IDs of ``x`` (k: cluster.k unless given) scored by the CTR model on the
    validation days, plus style metrics."""
    k = k or cfg.cluster.k
    fit = fit_spherical_kmeans(x, dataclasses.replace(cfg.cluster, k=k))
    ids = np.argmax(x @ fit.centroids.T, axis=1).astype(np.int64)  # nearest centroid (cosine)
    auc, share = selection.share(cfg, ImageFeatureOverride("courier", ts.item_ids, ids))
    known = ts.style >= 0
    return Scored(
        step,
        k,
        images_encoded,
        seconds,
        auc,
        share,
        knn_style_accuracy(x[known], ts.style[known], ts.category[known]),
        normalized_mutual_information(ids[known], ts.style[known]),
        normalized_mutual_information(ids, ts.category),
    )


def score_all_k(
    cfg: CourierConfig,
    ts: TrainingSet,
    selection: Selection,
    x: np.ndarray,
    step: int,
    images_encoded: int,
    seconds: float,
    k_values: tuple[int, ...],
) -> list[Scored]:
    """``score_embeddings`` for cluster.k and each of ``k_values``."""
    ks = dict.fromkeys((cfg.cluster.k, *k_values))
    return [score_embeddings(cfg, ts, selection, x, step, images_encoded, seconds, k) for k in ks]


def _train_step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    precision: Any,
    batch: dict[str, torch.Tensor],
    device: torch.device,
) -> float:
    """One step of `courier train`'s optimisation (autocast, scaled backward, Adam); its loss."""
    optimizer.zero_grad()
    with precision.autocast(device.type):
        out = model(batch)
    scaler.scale(out.loss).backward()
    scaler.step(optimizer)
    scaler.update()
    if device.type == "cuda":
        torch.cuda.synchronize()  # the step's time is the GPU's, not the launch's
    return float(out.loss.detach())


def distinct_images(batch: dict[str, torch.Tensor]) -> int:
    """Distinct items of a batch: the images the backbone encodes (one image per item here)."""
    return int(
        torch.cat([batch["pv_item_ids"].flatten(), batch["click_item_ids"].flatten()])
        .unique()
        .ge(0)
        .sum()
    )


def train_recipe(
    cfg: CourierConfig,
    ts: TrainingSet,
    eval_steps: tuple[int, ...],
    selection: Selection | None,
    device: torch.device | None = None,
    seconds_budget: float | None = None,
    warmup: int = 0,
    decay: str = "none",
    k_values: tuple[int, ...] = (),
    on_scored: Callable[[Scored], None] | None = None,
) -> tuple[Any, list[Scored]]:
    """Train ``cfg``'s COURIER model on ``ts`` up to max(eval_steps) steps (or ``seconds_budget``),
    scoring the encoder at each of ``eval_steps`` (0: before the first step) and at the end of the
    time budget, when ``selection`` is given; ``on_scored`` sees each score as it comes (a long
    search keeps what it measured when it is stopped).

    cfg.train: batch_size, lr, weight_decay, seed, batch_grouping, shuffle_window, mixed_precision,
    history_clicks (else cfg.samples.l_click): the newest clicks of each row kept; cfg.model,
    cfg.loss as `courier train`.
    """
    from courier.train.precision import resolve_precision

    device = device or torch.device("cpu")
    tc = cfg.train
    ts = ts.with_history(tc.history_clicks or cfg.samples.l_click)
    model = build_model(cfg, device, tc.seed).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    precision = resolve_precision(tc.mixed_precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.use_scaler)
    batches = MemoryBatches(
        ts, tc.batch_size, tc.batch_grouping, tc.shuffle_window, device, tc.seed
    )
    total = max(eval_steps)
    scored: list[Scored] = []

    def score(step: int, images: int, seconds: float) -> None:
        assert selection is not None
        for s in score_all_k(
            cfg, ts, selection, embed_catalogue(model, batches), step, images, seconds, k_values
        ):
            log.info(
                "step %d, k %d: validation AUC %.4f, share %s, style 10-NN %.3f",
                step,
                s.k,
                s.validation_auc,
                f"{s.share:.0%}" if s.share is not None else "-",
                s.style_knn10,
            )
            scored.append(s)
            if on_scored is not None:
                on_scored(s)

    images_encoded, seconds = 0, 0.0
    if selection is not None and 0 in eval_steps:  # the network at its initial weights: random init
        score(0, 0, 0.0)
    for step, batch in enumerate(batches, start=1):  # step: the steps done after this batch
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = tc.lr * lr_factor(step - 1, total, warmup, decay)
        loss = _train_step(model, optimizer, scaler, precision, batch, device)
        seconds += time.perf_counter() - started
        images_encoded += distinct_images(batch)
        if step % 50 == 0:
            log.info(
                "step %d/%d loss %.4f, %.0f distinct images/s",
                step,
                total,
                loss,
                images_encoded / seconds,
            )
        out_of_time = seconds_budget is not None and seconds >= seconds_budget
        if selection is not None and (step in eval_steps or out_of_time):
            score(step, images_encoded, seconds)
        if step >= total or out_of_time:
            break
    return model, scored
