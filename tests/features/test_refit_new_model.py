"""A re-fit after a model change keeps the Cluster-IDs: the old clusters are carried into the new space."""
from __future__ import annotations

import numpy as np
from pyspark.sql import functions as F

from courier.features.assign import assign_items
from courier.features.cluster import cluster_embeddings, read_centroid_version
from courier.features.embed import embed_items

DB = "courier_refit_model_test"
K = 12


def _write_rotated_model(spark, cfg, model_version: str, seed: int = 0) -> None:
    """The same items in another embedding space: every embedding times one random rotation.

    A rotation keeps every cosine, so the clusters are the same sets of items, but no
    coordinate of the old centroids means anything in the new space.
    """
    table = cfg.tables.qualified("item_embeddings")
    rows = spark.table(table).orderBy("item_id").collect()
    x = np.array([r["embedding"] for r in rows], dtype=np.float32)          # [n, d]
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(x.shape[1], x.shape[1])))
    rotated = (x @ q).astype(np.float32)                                   # [n, d]
    new = spark.createDataFrame(
        [(r["item_id"], r["content_hash"], [float(v) for v in e]) for r, e in zip(rows, rotated)],
        "item_id BIGINT, content_hash STRING, embedding ARRAY<FLOAT>")
    (new.select("item_id", F.lit(model_version).alias("model_version"), "content_hash", "embedding",
                F.current_timestamp().alias("computed_at"))
     .select(*spark.table(table).columns).writeTo(table).append())


def _current_ids(spark, cfg) -> dict[int, int]:
    rows = spark.table(cfg.tables.qualified("item_image_features")).where("valid_to IS NULL").collect()
    return {r["item_id"]: r["image_cluster_id"] for r in rows}


def test_a_refit_on_a_new_model_keeps_each_items_cluster_id(spark, feature_db):
    cfg = feature_db(DB).replace([f"cluster.k={K}"])
    embed_items(spark, cfg)
    first = cluster_embeddings(spark, cfg)
    assign_items(spark, cfg)
    before = _current_ids(spark, cfg)

    _write_rotated_model(spark, cfg, "rotated")
    refit = cluster_embeddings(spark, cfg)
    assert refit.version.model_version == "rotated"
    assert refit.warm_started_from == first.version.cluster_version
    stored = read_centroid_version(spark, cfg.tables.qualified("cluster_centroids"))
    assert stored.cluster_version == first.version.cluster_version + 1
    assert sorted(stored.ids.tolist()) == sorted(first.version.ids.tolist())   # the same id space

    run = assign_items(spark, cfg)
    after = _current_ids(spark, cfg)
    assert set(after) == set(before)
    same = np.mean([after[i] == before[i] for i in before])
    # Fresh ids would agree on about 1/K of the items; carried ones on (nearly) all of them.
    assert same >= 0.9, f"only {same:.1%} of the items kept their Cluster-ID across the model change"
    # Every item's row moved to the new model and cluster version (a change), none was lost.
    assert run.record.metrics["changed"] == len(before) and run.record.metrics["new_items"] == 0
