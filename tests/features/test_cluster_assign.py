"""``courier cluster`` and ``courier assign`` on real Spark + Delta + MLflow + faiss.

One database; the tests run in file order: cluster -> assign -> new items ->
changed embeddings -> as-of join -> re-fit -> views, report, export -> a version whose ids
are not 0..k-1 (assigned, then re-fitted from).
"""

from __future__ import annotations

import datetime as dt

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from courier.features.assign import assign_items
from courier.features.cluster import cluster_embeddings, read_centroid_version
from courier.features.export import export_mmrec
from courier.features.report import write_report
from courier.sql_files import run_sql_file
from courier.tracking import resolve_tracking_uri

DB = "courier_cluster_test"
K = 16


@pytest.fixture(scope="module")
def cfg(feature_db):
    return feature_db(DB).replace([f"cluster.k={K}"])


@pytest.fixture(scope="module")
def clustered(spark, cfg, copy_embeddings):
    copy_embeddings(cfg)
    return cluster_embeddings(spark, cfg)


@pytest.fixture(scope="module")
def assigned(spark, cfg, clustered):
    return assign_items(spark, cfg)


def embeddings(spark, cfg) -> tuple[np.ndarray, np.ndarray]:
    rows = spark.table(cfg.tables.qualified("item_embeddings")).orderBy("item_id").collect()
    return np.array([r["item_id"] for r in rows]), np.array(
        [r["embedding"] for r in rows], dtype=np.float32
    )


def current(spark, cfg) -> dict[int, tuple[int, float]]:
    rows = spark.table(cfg.tables.qualified("item_clusters_current")).collect()
    return {r["item_id"]: (r["image_cluster_id"], r["cluster_similarity"]) for r in rows}


def last_operation(spark, table: str):
    return spark.sql(f"DESCRIBE HISTORY {table} LIMIT 1").first()


def test_a_cluster_version_is_published_whole_and_tracked(
    spark, cfg, clustered, registered_encoder
):
    version = read_centroid_version(spark, cfg.tables.qualified("cluster_centroids"))
    assert version.cluster_version == 1 and version.model_version == registered_encoder
    assert sorted(version.ids.tolist()) == list(range(K))
    np.testing.assert_allclose(np.linalg.norm(version.centroids, axis=1), 1.0, atol=1e-5)
    rows = spark.table(cfg.tables.qualified("cluster_centroids")).collect()
    assert len(rows) == K and sum(r["size"] for r in rows) == clustered.fit.n_train
    history = spark.sql(f"DESCRIBE HISTORY {cfg.tables.qualified('cluster_centroids')}").collect()
    writes = [h for h in history if int(h["operationMetrics"].get("numOutputRows", 0)) > 0]
    # one commit
    assert len(writes) == 1 and int(writes[0]["operationMetrics"]["numOutputRows"]) == K

    uri = resolve_tracking_uri(cfg.mlflow.tracking_uri)
    run = MlflowClient(uri).get_run(clustered.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert {"k", "d", "niter", "model_version"} <= run.data.params.keys()
    assert run.data.params["k"] == str(K) and run.data.params["d"] == str(cfg.model.embedding_dim)
    assert {
        "objective",
        "imbalance_factor",
        "empty_clusters",
        "iterations",
    } <= run.data.metrics.keys()
    assert run.data.tags["courier.model_version"] == registered_encoder
    mlflow.set_tracking_uri(uri)
    local = mlflow.artifacts.download_artifacts(
        run_id=clustered.mlflow_run_id, artifact_path="centroids"
    )
    np.testing.assert_allclose(np.load(f"{local}/centroids.npy"), version.centroids, atol=1e-6)


def test_assignment_equals_brute_force_nearest_centroid(spark, cfg, assigned):
    version = read_centroid_version(spark, cfg.tables.qualified("cluster_centroids"))
    ids, x = embeddings(spark, cfg)
    sims = x @ version.centroids.T  # [n, k]
    expected_ids = version.ids[sims.argmax(axis=1)]
    got = current(spark, cfg)
    assert set(got) == set(ids.tolist())
    np.testing.assert_array_equal([got[i][0] for i in ids], expected_ids)
    np.testing.assert_allclose([got[i][1] for i in ids], sims.max(axis=1), atol=1e-5)
    m = assigned.record.metrics
    assert m["items_in"] == len(ids) and m["new_items"] == len(ids) and m["changed"] == 0


def test_first_rows_are_valid_from_the_configured_start_and_cdf_is_on(spark, cfg, assigned):
    table = cfg.tables.qualified("item_image_features")
    valid_from = {r[0] for r in spark.table(table).select("valid_from").distinct().collect()}
    assert valid_from == {cfg.assign.first_valid_from_ts}
    props = {r["key"]: r["value"] for r in spark.sql(f"SHOW TBLPROPERTIES {table}").collect()}
    assert props.get("delta.enableChangeDataFeed") == "true"


def test_a_rerun_changes_and_commits_nothing(spark, cfg, assigned):
    table = cfg.tables.qualified("item_image_features")
    before = last_operation(spark, table)["version"]
    again = assign_items(spark, cfg)
    assert again.record.metrics["changed"] == 0 and again.record.metrics["new_items"] == 0
    assert last_operation(spark, table)["version"] == before


def test_new_items_go_to_the_existing_centroids_without_a_refit(spark, cfg, assigned):
    emb_table, table = (
        cfg.tables.qualified("item_embeddings"),
        cfg.tables.qualified("item_image_features"),
    )
    n = spark.table(emb_table).count()
    new = (
        spark.table(emb_table)
        .orderBy("item_id")
        .limit(max(1, n // 20))
        .withColumn("item_id", F.col("item_id") + 10_000_000)
    )
    new.writeTo(emb_table).append()
    versions_before = (
        spark.table(cfg.tables.qualified("cluster_centroids"))
        .select("cluster_version")
        .distinct()
        .count()
    )
    run = assign_items(spark, cfg)
    assert run.record.metrics["new_items"] == new.count() and run.record.metrics["changed"] == 0
    assert (
        spark.table(cfg.tables.qualified("cluster_centroids"))
        .select("cluster_version")
        .distinct()
        .count()
        == versions_before
    )
    op = last_operation(spark, table)
    assert op["operation"] == "MERGE"
    assert int(op["operationMetrics"]["numTargetRowsInserted"]) == new.count()
    assert int(op["operationMetrics"]["numTargetRowsUpdated"]) == 0
    # The copies sit on their originals' centroids.
    got = current(spark, cfg)
    for row in new.select("item_id").collect():
        assert got[row["item_id"]][0] == got[row["item_id"] - 10_000_000][0]


@pytest.fixture(scope="module")
def moved(spark, cfg, assigned):
    """Three items whose embedding now equals an item of
    another cluster, re-assigned; (ids, before, at)."""
    emb_table = cfg.tables.qualified("item_embeddings")
    got = current(spark, cfg)
    ids, x = embeddings(spark, cfg)
    by_id = dict(zip(ids.tolist(), x, strict=True))
    items = sorted(i for i in got if i < 10_000_000)
    changed, donors = [], []
    for item in items:
        donor = next(
            (d for d in reversed(items) if got[d][0] != got[item][0] and d not in donors), None
        )
        if donor is not None and len(changed) < 3:
            changed.append(item)
            donors.append(donor)
    before = {i: got[i][0] for i in changed}
    for item, donor in zip(changed, donors, strict=True):
        spark.sql(
            f"UPDATE {emb_table} SET embedding = :e WHERE item_id = :i",
            args={"e": [float(v) for v in by_id[donor]], "i": item},
        )
    at = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    run = assign_items(spark, cfg)
    return changed, donors, before, at, run


def test_merge_touches_only_the_changed_rows(spark, cfg, moved):
    changed, donors, before, _, run = moved
    assert run.record.metrics["changed"] == 3 and run.record.metrics["new_items"] == 0
    table = cfg.tables.qualified("item_image_features")
    op = last_operation(spark, table)
    assert op["operation"] == "MERGE"
    assert int(op["operationMetrics"]["numTargetRowsUpdated"]) == 3  # their open rows closed
    assert int(op["operationMetrics"]["numTargetRowsInserted"]) == 3  # and their new rows
    cdf = (
        spark.read.format("delta")
        .option("readChangeFeed", "true")
        .option("startingVersion", op["version"])
        .table(table)
        .where("_change_type != 'update_preimage'")
        .collect()
    )
    assert {r["item_id"] for r in cdf} == set(changed)
    assert sorted(r["_change_type"] for r in cdf) == ["insert"] * 3 + ["update_postimage"] * 3
    got = current(spark, cfg)
    for item, donor in zip(changed, donors, strict=True):
        assert got[item][0] == got[donor][0] != before[item]
    one_open_row = (
        spark.table(table).where("valid_to IS NULL").groupBy("item_id").count().where("count > 1")
    )
    assert one_open_row.count() == 0


def test_as_of_join_returns_the_value_valid_at_each_time(spark, cfg, moved):
    changed, _, before, at, _ = moved
    item = changed[0]
    now_value = current(spark, cfg)[item][0]
    events = spark.createDataFrame(
        [
            (item, dt.datetime(2026, 1, 2, 12)),
            (item, at - dt.timedelta(seconds=1)),
            (item, dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(hours=1)),
        ],
        "item_id BIGINT, event_ts TIMESTAMP",
    )
    events.createOrReplaceTempView("as_of_events")
    rows = (
        run_sql_file(
            spark,
            "features/item_features_as_of",
            {
                "events": "as_of_events",
                "item_image_features": cfg.tables.qualified("item_image_features"),
            },
        )
        .orderBy("event_ts")
        .collect()
    )
    assert [r["image_cluster_id"] for r in rows] == [before[item], before[item], now_value]


def test_a_warm_refit_keeps_most_ids_and_publishes_a_new_version(spark, cfg, moved):
    refit = cluster_embeddings(spark, cfg)
    assert refit.version.cluster_version == 2 and refit.warm_started_from == 1
    assert sorted(refit.version.ids.tolist()) == list(range(K))
    before = current(spark, cfg)
    run = assign_items(spark, cfg)
    after = current(spark, cfg)
    assert run.record.metrics["changed"] == len(after)  # every item now points at version 2
    kept = np.mean([after[i][0] == before[i][0] for i in after])
    assert kept >= 0.9, kept
    assert {
        r[0]
        for r in spark.table(cfg.tables.qualified("item_clusters_current"))
        .select("cluster_version")
        .distinct()
        .collect()
    } == {2}


def test_each_view_returns_the_expected_rows(spark, cfg, moved):
    q = cfg.tables.qualified
    got = current(spark, cfg)
    n = len(got)
    assert spark.table(q("item_clusters_current")).count() == n
    summary = spark.table(q("cluster_summary")).collect()
    sizes = {}
    for cluster_id, _ in got.values():
        sizes[cluster_id] = sizes.get(cluster_id, 0) + 1
    assert {r["image_cluster_id"]: r["items"] for r in summary} == sizes
    for r in summary:
        assert sum(r["category_mix"].values()) == r["items"]
        assert r["top_category_share"] == pytest.approx(
            max(r["category_mix"].values()) / r["items"]
        )
        assert 1 <= len(r["example_item_ids"]) <= 5
        examples = [got[i][1] for i in r["example_item_ids"]]
        assert examples == sorted(examples, reverse=True)  # the most typical first
    assert sum(r["share_of_items"] for r in summary) == pytest.approx(1.0)

    per_category = (
        spark.table(q("category_clusters"))
        .groupBy("category")
        .agg(F.sum("share_of_category").alias("share"), F.sum("items").alias("items"))
        .collect()
    )
    assert all(r["share"] == pytest.approx(1.0) for r in per_category)
    assert sum(r["items"] for r in per_category) == n

    daily = spark.table(q("cluster_click_share_daily"))
    clicks = spark.table(q("raw_impressions")).where("clicked = 1").groupBy("dt").count().collect()
    assert {
        r["dt"]: r["sum(clicks)"] for r in daily.groupBy("dt").agg(F.sum("clicks")).collect()
    } == {r["dt"]: r["count"] for r in clicks}
    assert all(
        r["s"] == pytest.approx(1.0)
        for r in daily.groupBy("dt").agg(F.sum("share_of_clicks").alias("s")).collect()
    )
    # every clicked item had a feature then
    assert daily.where("image_cluster_id IS NULL").count() == 0


def test_report_writes_both_pictures(spark, cfg, moved):
    files = write_report(spark, cfg)
    for path in (files.cluster_grid, files.embedding_map):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, (path, len(data))


def test_mmrec_export_rows_follow_the_item_order(spark, cfg, moved, tmp_path):
    result = export_mmrec(spark, cfg, tmp_path / "mmrec")
    feats = np.load(tmp_path / "mmrec" / "image_feat.npy")
    lines = (tmp_path / "mmrec" / "i_id_mapping.csv").read_text().splitlines()
    assert lines[0] == "item_id\titemID"
    mapping = [tuple(map(int, line.split("\t"))) for line in lines[1:]]
    ids, x = embeddings(spark, cfg)
    assert feats.shape == (len(ids), cfg.model.embedding_dim) == (result.items, result.dim)
    assert [m[1] for m in mapping] == list(range(len(ids)))
    assert [m[0] for m in mapping] == sorted(ids.tolist())
    np.testing.assert_array_equal(feats, x)


def test_ids_follow_the_centroids_of_a_version_numbered_otherwise(spark, cfg, moved):
    """A version whose ids are not 0..k-1 (as after a shrunk k or a model change), in another order.

    assign must map each item to its nearest centroid's id, not to the centroid's row, and a
    re-fit from that version must match its centroids back to those ids, not number them 0..k-1
    in faiss's order.
    """
    table = cfg.tables.qualified("cluster_centroids")
    base = read_centroid_version(spark, table)
    before = {i: cid for i, (cid, _) in current(spark, cfg).items()}
    # base's clusters under sparse ids in a shuffled order: sorted by id (the order a re-fit
    # starts from) its rows come permuted.
    relabel = dict(
        zip(
            base.ids.tolist(),
            (100 + 7 * np.random.default_rng(5).permutation(K)).tolist(),
            strict=True,
        )
    )
    mapping = spark.createDataFrame(list(relabel.items()), "cluster_id INT, new_id INT")
    (
        spark.table(table)
        .where(F.col("cluster_version") == base.cluster_version)
        .join(mapping, "cluster_id")
        .select(
            F.lit(base.cluster_version + 1).alias("cluster_version"),
            F.col("new_id").alias("cluster_id"),
            "centroid",
            "size",
            "model_version",
            F.lit("relabelled-by-test").alias("mlflow_run_id"),
            "created_at",
        )
        .writeTo(table)
        .append()
    )

    run = assign_items(spark, cfg)
    assert run.version.cluster_version == base.cluster_version + 1
    # The same centroids under other ids: every item keeps its centroid, so its id is relabelled.
    assert {i: cid for i, (cid, _) in current(spark, cfg).items()} == {
        i: relabel[c] for i, c in before.items()
    }
    assert run.record.metrics["changed"] == len(before)

    refit = cluster_embeddings(spark, cfg)
    assert refit.warm_started_from == base.cluster_version + 1
    stored = read_centroid_version(spark, table)
    assert stored.cluster_version == base.cluster_version + 2
    assert sorted(stored.ids.tolist()) == sorted(relabel.values())
    ids, x = embeddings(spark, cfg)
    after = stored.ids[(x @ stored.centroids.T).argmax(axis=1)]
    kept = np.mean([a == relabel[before[i]] for i, a in zip(ids.tolist(), after, strict=True)])
    assert kept >= 0.9, kept
