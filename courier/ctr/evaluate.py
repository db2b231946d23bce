"""One CTR evaluation: ctr_samples split by date -> a DIN model per variant -> test metrics.

``CtrDataset`` reads the table once; every variant and seed then trains on the
same rows, so their test scores are paired impression by impression (what the
bootstrap of a lift needs).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

import numpy as np
from pyspark.sql import SparkSession

from courier.checks import one_of
from courier.config import CourierConfig, ImageUsage
from courier.config.ctr import CtrConfig
from courier.ctr.data import (
    CtrArrays,
    CtrDataError,
    DateSplit,
    ImageFeatureOverride,
    ImageVectors,
    Vocabularies,
    encode,
    read_ctr_samples,
)
from courier.ctr.metrics import Gauc, auc, auc_by_category, gauc
from courier.ctr.train import fit_ctr, predict


@dataclass
class CtrDataset:
    """ctr_samples of one date range, split by date."""

    split: DateSplit
    train: CtrArrays
    validation: CtrArrays
    test: CtrArrays

    @classmethod
    def load(
        cls, spark: SparkSession, cfg: CourierConfig, start: dt.date, end: dt.date
    ) -> CtrDataset:
        """Read ``[start, end]`` of ctr_samples; the last ``ctr_samples.test_days`` are the test."""
        s = cfg.ctr_samples
        split = DateSplit.last_days(start, end, s.validation_days, s.test_days)
        arrays = read_ctr_samples(spark, cfg.tables.qualified("ctr_samples"), start, end, s.l_click)
        return cls.from_arrays(arrays, split)

    @classmethod
    def from_arrays(cls, arrays: CtrArrays, split: DateSplit) -> CtrDataset:
        def rows(days: tuple[dt.date, dt.date], what: str) -> CtrArrays:
            lo, hi = (np.datetime64(d, "D") for d in days)
            part = arrays.rows((arrays.dt >= lo) & (arrays.dt <= hi))
            if len(part) == 0 or part.label.min() == part.label.max():
                raise CtrDataError(
                    f"ctr_samples {what} days {days[0]}..{days[1]} need clicks and non-clicks, "
                    f"got {len(part)} rows with {int(part.label.sum()) if len(part) else 0} clicks"
                )
            return part

        return cls(
            split,
            rows(split.train, "train"),
            rows(split.validation, "validation"),
            rows(split.test, "test"),
        )

    def with_override(self, override: ImageFeatureOverride) -> CtrDataset:
        """The same rows with ``override``'s Cluster-IDs (the oracle, a planted feature)."""
        return CtrDataset(
            self.split,
            self.train.with_override(override),
            self.validation.with_override(override),
            self.test.with_override(override),
        )

    def n_clusters(self) -> int:
        """Cluster-ID table rows needed: the largest id in any split + 1 (ids are not labels)."""
        return 1 + max(
            int(max(a.cluster_id.max(initial=-1), a.history_cluster.max(initial=-1)))
            for a in (self.train, self.validation, self.test)
        )

    @property
    def model_versions(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.train.model_versions) | set(self.test.model_versions)))


@dataclass
class CtrEvaluation:
    """Test metrics of one trained CTR model, and its test scores (for paired comparisons)."""

    name: str
    config: CtrConfig
    test_auc: float
    validation_auc: float
    gauc: Gauc
    auc_by_category: dict[str, float]
    best_epoch: int
    epochs: int
    impressions_per_second: float
    scores: np.ndarray  # [N_test], aligned with CtrDataset.test

    def metrics(self) -> dict[str, float]:
        """Flat metrics for MLflow / the report."""
        out = {
            "test_auc": self.test_auc,
            "validation_auc": self.validation_auc,
            "test_gauc": self.gauc.weighted,
            "test_gauc_unweighted": self.gauc.unweighted,
            "test_gauc_page_views": float(self.gauc.groups_used),
            "best_epoch": float(self.best_epoch),
            "epochs": float(self.epochs),
            "impressions_per_second": self.impressions_per_second,
        }
        out.update({f"test_auc.{c}": v for c, v in self.auc_by_category.items()})
        return out


def evaluate_variant(
    data: CtrDataset,
    cfg: CtrConfig,
    name: str,
    images: ImageVectors | None = None,
    show_progress: bool = False,
) -> CtrEvaluation:
    """Train the CTR model of ``cfg`` on ``data.train``
    (early stopping on validation); score the test days."""
    if cfg.image_usage in ("vector", "simscore") and images is None:
        raise CtrDataError(
            f"variant {name}: ctr.image_usage={cfg.image_usage} needs item embeddings"
        )
    vocab = Vocabularies.fit(data.train, cfg.min_item_count, n_clusters=data.n_clusters())
    train, validation, test = (
        encode(a, vocab, images) for a in (data.train, data.validation, data.test)
    )
    fit = fit_ctr(cfg, vocab, train, validation, images.matrix if images else None, show_progress)
    scores = predict(fit.model, test)
    labels = data.test.label
    val_best = max(h["validation_auc"] for h in fit.history)
    return CtrEvaluation(
        name=name,
        config=cfg,
        test_auc=auc(labels, scores),
        validation_auc=val_best,
        gauc=gauc(labels, scores, data.test.request_id),
        auc_by_category=auc_by_category(labels, scores, data.test.category),
        best_epoch=fit.best_epoch,
        epochs=len(fit.history),
        impressions_per_second=fit.impressions_per_second,
        scores=scores,
    )


def with_usage(cfg: CtrConfig, usage: str, seed: int | None = None) -> CtrConfig:
    """``cfg`` with another image usage (and seed)."""
    return dataclasses.replace(
        cfg,
        image_usage=one_of(ImageUsage, usage, "ctr.image_usage"),
        seed=cfg.seed if seed is None else seed,
    )
