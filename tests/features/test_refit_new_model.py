"""A re-fit after a model change keeps the Cluster-IDs:
the old clusters are carried into the new space."""

from __future__ import annotations

import numpy as np
from pyspark.sql import functions as F

from courier.features.assign import assign_items
from courier.features.cluster import cluster_embeddings, read_centroid_version

DB = "courier_refit_model_test"
K = 12


def _write_rotated_model(spark, cfg, model_version: str, skip: set[int], seed: int = 0) -> None:
    """The same items in another embedding space: every embedding times one random rotation.

    A rotation keeps every cosine, so the clusters are the same sets of items, but no
    coordinate of the old centroids means anything in the new space. The items of
    ``skip`` get no embedding of the new model (not embedded by it yet).
    """
    table = cfg.tables.qualified("item_embeddings")
    rows = spark.table(table).orderBy("item_id").collect()
    x = np.array([r["embedding"] for r in rows], dtype=np.float32)  # [n, d]
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(x.shape[1], x.shape[1])))
    rotated = (x @ q).astype(np.float32)  # [n, d]
    new = spark.createDataFrame(
        [
            (r["item_id"], r["content_hash"], [float(v) for v in e])
            for r, e in zip(rows, rotated, strict=True)
            if r["item_id"] not in skip
        ],
        "item_id BIGINT, content_hash STRING, embedding ARRAY<FLOAT>",
    )
    (
        new.select(
            "item_id",
            F.lit(model_version).alias("model_version"),
            "content_hash",
            "embedding",
            F.current_timestamp().alias("computed_at"),
        )
        .select(*spark.table(table).columns)
        .writeTo(table)
        .append()
    )


def _current_rows(spark, cfg) -> dict[int, tuple[int, str]]:
    """item_id -> (image_cluster_id, model_version) of each item's open row."""
    rows = (
        spark.table(cfg.tables.qualified("item_image_features")).where("valid_to IS NULL").collect()
    )
    return {r["item_id"]: (r["image_cluster_id"], r["model_version"]) for r in rows}


def test_a_refit_on_a_new_model_keeps_each_items_cluster_id(spark, feature_db, copy_embeddings):
    cfg = feature_db(DB).replace([f"cluster.k={K}"])
    copy_embeddings(cfg)
    first = cluster_embeddings(spark, cfg)
    assign_items(spark, cfg)
    before = {i: cid for i, (cid, _) in _current_rows(spark, cfg).items()}

    # The new model has not embedded the items of the lowest id yet: that cluster cannot be
    # carried, so the carried ids are not 0..k-1 and a row's index is not its id. Numbering the
    # new clusters 0..k-1 in faiss's order (identity instead of matching) would shift every id.
    dropped = min(before.values())
    skipped = {i for i, cid in before.items() if cid == dropped}
    _write_rotated_model(spark, cfg, "rotated", skipped)
    refit = cluster_embeddings(spark, cfg)
    assert refit.version.model_version == "rotated"
    assert refit.warm_started_from == first.version.cluster_version
    stored = read_centroid_version(spark, cfg.tables.qualified("cluster_centroids"))
    assert stored.cluster_version == first.version.cluster_version + 1
    # The same id space less the cluster that was not carried; the cluster k-means adds in its
    # place gets a fresh id after the largest carried one.
    carried = sorted(set(before.values()) - {dropped})
    fresh = max(carried) + 1
    assert stored.ids.tolist() == carried + list(range(fresh, fresh + K - len(carried)))

    run = assign_items(spark, cfg)
    after = _current_rows(spark, cfg)
    assert set(after) == set(before)
    # The skipped items keep their rows of the old model; every other item's row moved to the
    # new model and cluster version (a change), none was lost.
    assert {after[i] for i in skipped} == {(dropped, first.version.model_version)}
    moved = [i for i in before if i not in skipped]
    assert {after[i][1] for i in moved} == {"rotated"}
    assert run.record.metrics["changed"] == len(moved) and run.record.metrics["new_items"] == 0
    # Carried ids keep most items; shifted ones (identity, or a row index for an id) would keep
    # about 1 in K. Items split off into the fresh cluster are counted apart. Measured: 87.5% in
    # a fresh clone's suite on 2026-12-07, >= 90% in earlier runs (the test encoder's 30 steps
    # and k-means' refinement vary from run to run): 80% leaves that spread room and still
    # fails a shift by far.
    stayed = [i for i in moved if after[i][0] < fresh]
    same = np.mean([after[i][0] == before[i] for i in stayed])
    assert same >= 0.8, (
        f"only {same:.1%} of the items kept their Cluster-ID across the model change"
    )
    assert len(stayed) >= 0.75 * len(moved), (
        f"{len(moved) - len(stayed)} of {len(moved)} items went to the fresh id"
    )
