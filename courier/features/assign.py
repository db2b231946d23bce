"""``courier assign``: every item onto the nearest centroid of one cluster version.

    read the cluster version (driver) -> broadcast its centroids -> mapInArrow with a
    faiss inner-product index per Python worker (nearest id + cosine) -> stage the changed
    rows (sql/features/assign_changes.sql) -> ONE MERGE into item_image_features
    -> refresh the analyst views

New items go to the existing centroids: nothing is re-fit. The MERGE is a single
Delta commit (a killed run publishes nothing) that touches only changed rows, with
Change Data Feed on, and keeps the history (valid_from / valid_to) that an as-of
join reads. A re-run with nothing new stages nothing and commits nothing. A
concurrent run that publishes first makes this one start over (retry_on_conflict):
the MERGE acts on an item only while its current row is the one staged.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from delta.tables import DeltaTable
from pyspark import Broadcast
from pyspark.sql import Column, DataFrame, SparkSession, functions as F

from courier.config import CourierConfig, config_json
from courier.features.cluster import CentroidVersion, ClusteringError, read_centroid_version
from courier.sql_files import run_sql_file
from courier.tables import (
    RunRecord,
    WriteConflict,
    committing,
    count_by,
    ensure_table,
    one_row,
    reconcile,
    retry_on_conflict,
    timed,
    utc_now,
)

log = logging.getLogger(__name__)

STAGE = "assign"
ITEM_IMAGE_FEATURES_DDL = (
    "item_id BIGINT, image_cluster_id INT, cluster_similarity FLOAT, model_version STRING, "
    "cluster_version INT, valid_from TIMESTAMP, valid_to TIMESTAMP, updated_at TIMESTAMP"
)
ASSIGNMENT_SCHEMA = "item_id BIGINT, image_cluster_id INT, cluster_similarity FLOAT"


def nearest_centroids(
    embeddings: np.ndarray, centroids: np.ndarray, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(cluster id [n], cosine [n]) of the nearest of
    ``centroids`` [k, d] to each unit vector [n, d]."""
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    # [n, 1] each
    sims, nearest = index.search(np.ascontiguousarray(embeddings, dtype=np.float32), 1)
    return ids[nearest[:, 0]].astype(np.int32), sims[:, 0].astype(np.float32)


def _assign_batches(
    centroids_bc: Broadcast[np.ndarray], ids_bc: Broadcast[np.ndarray]
) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """mapInArrow function: batches of (item_id, embedding) ->
    (item_id, image_cluster_id, cluster_similarity)."""

    def assign(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import faiss

        centroids, ids = centroids_bc.value, ids_bc.value
        index = faiss.IndexFlatIP(centroids.shape[1])  # one per task, reused for all its batches
        index.add(centroids)
        d = centroids.shape[1]
        for batch in batches:
            emb = batch.column(1).flatten().to_numpy(zero_copy_only=False).astype(np.float32)
            sims, nearest = index.search(emb.reshape(batch.num_rows, d), 1)  # [n, 1]
            yield pa.RecordBatch.from_arrays(
                [
                    batch.column(0),
                    pa.array(ids[nearest[:, 0]].astype(np.int32)),
                    pa.array(sims[:, 0]),
                ],
                names=["item_id", "image_cluster_id", "cluster_similarity"],
            )

    return assign


def assign_embeddings(
    spark: SparkSession, embeddings: DataFrame, version: CentroidVersion
) -> DataFrame:
    """(item_id, image_cluster_id, cluster_similarity) for
    each row of ``embeddings`` (item_id, embedding)."""
    sc = spark.sparkContext
    centroids_bc = sc.broadcast(np.ascontiguousarray(version.centroids, dtype=np.float32))
    ids_bc = sc.broadcast(version.ids)
    return embeddings.select("item_id", "embedding").mapInArrow(
        _assign_batches(centroids_bc, ids_bc), ASSIGNMENT_SCHEMA
    )


@dataclass
class AssignResult:
    record: RunRecord
    version: CentroidVersion

    def summary(self) -> str:
        m = self.record.metrics
        return (
            f"assign: {m['items_in']:,} items onto cluster version {self.version.cluster_version} "
            f"(model version {self.version.model_version}): {m['new_items']:,} new, "
            f"{m['changed']:,} changed, {m['unchanged']:,} unchanged\n" + self.record.summary()
        )


def assign_items(
    spark: SparkSession,
    cfg: CourierConfig,
    cluster_version: int | None = None,
    run_id: str | None = None,
) -> AssignResult:
    """Assign every embedded item (of the version's model) and publish the changes in one MERGE.

    Raises:
        ClusteringError: no cluster version, or the requested one does not exist.
        ConcurrentRunError: concurrent runs kept publishing first (after 3 attempts).
    """
    run_id = run_id or uuid.uuid4().hex[:12]
    return retry_on_conflict(STAGE, lambda: _assign_once(spark, cfg, cluster_version, run_id))


def _assign_once(
    spark: SparkSession, cfg: CourierConfig, cluster_version: int | None, run_id: str
) -> AssignResult:
    from courier.features.views import create_feature_views

    t = cfg.tables
    started = utc_now()
    timings: dict[str, int] = {}
    centroids_table, features = t.qualified("cluster_centroids"), t.qualified("item_image_features")
    version = read_centroid_version(
        spark, centroids_table, cluster_version or cfg.assign.cluster_version
    )
    if version is None:
        raise ClusteringError(
            f"table {centroids_table} holds no cluster version: run `courier cluster` first"
        )
    embeddings = spark.table(t.qualified("item_embeddings")).where(
        F.col("model_version") == version.model_version
    )
    ensure_table(spark, features, ITEM_IMAGE_FEATURES_DDL, {"delta.enableChangeDataFeed": "true"})

    with timed(timings, "assign"):
        assigned = (
            assign_embeddings(spark, embeddings, version)
            .withColumn("model_version", F.lit(version.model_version))
            .withColumn("cluster_version", F.lit(version.cluster_version))
            .localCheckpoint(eager=True)
        )
    assigned.createOrReplaceTempView("item_assignments")
    published_at = utc_now()
    with timed(timings, "stage_changes"):
        staged = run_sql_file(
            spark,
            "features/assign_changes",
            {
                "assignments": "item_assignments",
                "item_image_features": features,
                "published_at": published_at,
                "first_valid_from": cfg.assign.first_valid_from_ts,
            },
        ).localCheckpoint(eager=True)
    counts = count_by(
        staged.where("role = 'insert'"), "CASE WHEN has_current THEN 'changed' ELSE 'new_items' END"
    )
    items_in = assigned.count()
    metrics = {
        "items_in": items_in,
        "new_items": counts.get("new_items", 0),
        "changed": counts.get("changed", 0),
    }
    metrics["unchanged"] = items_in - metrics["new_items"] - metrics["changed"]
    if metrics["new_items"] + metrics["changed"]:
        with timed(timings, "merge"):
            _merge(
                spark,
                features,
                staged,
                published_at,
                inserts=metrics["new_items"] + metrics["changed"],
                closes=metrics["changed"],
            )
    else:
        log.info("assign: nothing changed; %s is left as it is (no commit)", features)
    reconcile(
        "assign items", items_in, {k: metrics[k] for k in ("new_items", "changed", "unchanged")}
    )
    with timed(timings, "views"):
        create_feature_views(spark, cfg)
    metrics.update({"cluster_version": version.cluster_version, **timings})
    record = RunRecord(run_id, STAGE, None, None, started, metrics, config_json(cfg))
    record.save(spark, t.qualified("pipeline_runs"))
    assigned.unpersist()
    staged.unpersist()
    return AssignResult(record, version)


def _merge(
    spark: SparkSession,
    table: str,
    staged: DataFrame,
    published_at: dt.datetime,
    inserts: int,
    closes: int,
) -> None:
    """Close the changed items' current rows and insert their new ones: one commit.

    Guarded by the current row each item had when staged (``expected_from``): a close row
    matches only that row, an insert row only a *different* current row (then a concurrent
    run published this item first, and the row does nothing), so at most one source row
    meets any target row.

    Raises:
        WriteConflict: a concurrent run committed first, or changed items since they were staged.
    """
    insert: dict[str, str | Column] = {
        c: f"s.{c}"
        for c in (
            "item_id",
            "image_cluster_id",
            "cluster_similarity",
            "model_version",
            "cluster_version",
            "valid_from",
        )
    }
    insert.update({"valid_to": "CAST(NULL AS TIMESTAMP)", "updated_at": "s.updated_at"})
    source = staged.withColumn("updated_at", F.lit(published_at).cast("timestamp"))
    on = (
        "t.item_id = s.item_id AND t.valid_to IS NULL "
        "AND (s.role = 'close') = (t.valid_from <=> s.expected_from)"
    )
    with committing(table):
        done = one_row(
            DeltaTable.forName(spark, table)
            .alias("t")
            .merge(source.alias("s"), on)
            .whenMatchedUpdate(
                condition="s.role = 'close'",
                set={"valid_to": "s.updated_at", "updated_at": "s.updated_at"},
            )
            .whenNotMatchedInsert(condition="s.role = 'insert'", values=insert)
            .execute()
        )
    if (done["num_inserted_rows"], done["num_updated_rows"]) != (inserts, closes):
        raise WriteConflict(
            table,
            f"a concurrent run changed items' current rows after this run read them "
            f"({done['num_inserted_rows']} of {inserts} new rows and "
            f"{done['num_updated_rows']} of {closes} closings applied)",
        )
