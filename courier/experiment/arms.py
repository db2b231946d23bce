"""The arms of the CTR comparison and the warehouse tables each one reads or writes.

An arm is (variant, image usage, k). Encoder variants write their own feature
tables, prefixed ``exp_<variant>_`` in the warehouse database, so the comparison
never touches the tables `courier assign` publishes; ``published`` reads those.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from courier.config import CourierConfig
from courier.config.experiment import ExperimentConfig, encoder_variants

FEATURE_TABLES = (
    "item_embeddings",
    "cluster_centroids",
    "item_image_features",
    "ctr_samples",
    "item_clusters_current",
    "cluster_summary",
    "category_clusters",
    "cluster_click_share_daily",
)
PER_K_TABLES = (
    "cluster_centroids",
    "item_image_features",
    "ctr_samples",
    "item_clusters_current",
    "cluster_summary",
    "category_clusters",
    "cluster_click_share_daily",
)


@dataclass(frozen=True)
class Arm:
    """One row of the results table."""

    variant: str
    usage: str  # ctr.image_usage
    k: int | None = None  # None: cluster.k, or no clustering (none, oracle)

    @property
    def name(self) -> str:
        parts = [self.variant]
        if self.usage not in ("none", "cluster_id") or self.variant in ("courier", "published"):
            parts.append(self.usage)
        if self.k is not None:
            parts.append(f"k{self.k}")
        return "/".join(parts)

    @property
    def key(self) -> str:
        """File-name safe name."""
        return self.name.replace("/", "__")


def arms(exp: ExperimentConfig) -> list[Arm]:
    """Every arm the experiment runs, ``none`` first."""
    out = [Arm("none", "none")]
    for variant in exp.variants:
        if variant == "none":
            continue
        out.append(Arm(variant, "cluster_id"))
        if variant in ("courier", "published"):
            out += [Arm(variant, usage) for usage in exp.usages]
            if variant == "courier":
                out += [Arm(variant, "cluster_id", k) for k in exp.k_values]
    known = {a.variant for a in out}
    # courier_steps<N>
    out += [Arm(v, "cluster_id") for v in encoder_variants(exp) if v not in known]
    return out


def variant_config(
    cfg: CourierConfig, variant: str, k: int | None = None, seed: int | None = None
) -> CourierConfig:
    """``cfg`` pointed at the variant's own tables and registered model (``published``: unchanged).

    ``seed``: the encoder of that seed (train.seed = seed, tables ``exp_<variant>_s<seed>_``);
    None: the variant's one encoder, trained with train.seed. ``k``: the cluster count of an
    extra-k arm, with its own clustering tables ``exp_<variant>[_s<seed>]_k<k>_``.
    """
    variants = encoder_variants(cfg.experiment)
    if variant not in variants:
        return cfg
    spec, exp = variants[variant], cfg.experiment
    name = variant if seed is None else f"{variant}_s{seed}"
    prefix = f"exp_{name}_"
    tables = {t: f"{prefix}{t}" for t in FEATURE_TABLES}
    if k is not None:
        tables |= {t: f"{prefix}k{k}_{t}" for t in PER_K_TABLES}
    suffix = "" if seed is None else f"-s{seed}"
    train = cfg.train if seed is None else dataclasses.replace(cfg.train, seed=seed)
    return dataclasses.replace(
        cfg,
        tables=dataclasses.replace(cfg.tables, **tables),
        mlflow=dataclasses.replace(
            cfg.mlflow, registered_model=f"{cfg.mlflow.registered_model}-exp-{variant}{suffix}"
        ),
        report=dataclasses.replace(
            cfg.report,
            out_dir=f"{exp.out_dir}/{variant}" + ("" if seed is None else f"/seed{seed}"),
        ),
        train=spec.on_train(train, exp.train_steps),
        model=spec.on_model(cfg.model),
        loss=spec.on_loss(cfg.loss),
        cluster=cfg.cluster if k is None else dataclasses.replace(cfg.cluster, k=k),
    )


def base_config(cfg: CourierConfig) -> CourierConfig:
    """Tables of the feature-less ctr_samples that ``none`` and ``oracle`` read."""
    return dataclasses.replace(
        cfg,
        tables=dataclasses.replace(
            cfg.tables,
            ctr_samples="exp_base_ctr_samples",
            item_image_features="exp_base_no_item_image_features",
        ),
    )
