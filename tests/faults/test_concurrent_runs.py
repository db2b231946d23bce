"""Two runs at once: Delta's optimistic commits decide, the loser starts over (or, for a new
cluster version, stops with a message naming the conflict), and nothing is lost or duplicated.

The runs of two processes are made to overlap: one is held inside its write's Delta transaction
(courier.tables.HOLD_BEFORE_COMMIT) until the other
has committed, so its own commit comes second."""

from __future__ import annotations

import datetime as dt
import glob
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from delta.tables import DeltaTable
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from courier.config import CourierConfig
from courier.features.assign import ASSIGNMENT_SCHEMA, _merge
from courier.features.cluster import CentroidVersion, _publish, cluster_embeddings
from courier.features.embed import ITEM_EMBEDDINGS_DDL
from courier.features.kmeans import KMeansFit
from courier.samples.build import build_samples
from courier.sql_files import run_sql_file
from courier.tables import (
    HOLD_BEFORE_COMMIT,
    ConcurrentRunError,
    SchemaError,
    WriteConflict,
    committing,
    ensure_table,
    replace_where,
    retry_on_conflict,
)
from courier.tracking import resolve_tracking_uri
from tests.conftest import TRAIN_DB, TRAIN_START
from tests.faults.conftest import CourierProcess, assert_same_rows, built_rows, table_versions

DB = "courier_faults_concurrency"
CLUSTER_DB = "courier_faults_cluster_race"


@pytest.fixture(scope="module")
def db(spark) -> str:
    spark.sql(f"DROP DATABASE IF EXISTS {DB} CASCADE")
    spark.sql(f"CREATE DATABASE {DB}")
    return DB


def test_the_commit_that_comes_second_is_a_write_conflict_naming_the_table(spark, db):
    table = f"{db}.race"
    spark.range(4).write.format("delta").saveAsTable(table)
    slow = F.udf(lambda x: (time.sleep(0.5), x)[1], "long")  # both read the table, then both commit
    errors: list[BaseException] = []

    def merge(first: int) -> None:
        source = spark.range(first, first + 4).select(slow("id").alias("id"))
        try:
            with committing(table):  # a MERGE reads the whole target: the two conflict
                (
                    DeltaTable.forName(spark, table)
                    .alias("t")
                    .merge(source.alias("s"), "t.id = s.id")
                    .whenNotMatchedInsertAll()
                    .execute()
                )
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=merge, args=(first,)) for first in (100, 200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 1 and isinstance(errors[0], WriteConflict), errors
    assert errors[0].table == table
    assert "DELTA_CONCURRENT_APPEND" in str(errors[0]) and "the concurrent commit: MERGE" in str(
        errors[0]
    )
    assert spark.table(table).count() == 8  # the winner's four rows, once


def test_a_stage_starts_over_after_a_conflict_and_gives_up_naming_it():
    attempts = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise WriteConflict(
                "db.t", "[DELTA_CONCURRENT_APPEND] Files were added (the concurrent commit: WRITE)"
            )
        return "done"

    assert (
        retry_on_conflict("stage", flaky, attempts=3, pause_s=0.01) == "done" and len(attempts) == 3
    )

    def always() -> None:
        raise WriteConflict(
            "db.t", "[DELTA_CONCURRENT_APPEND] Files were added (the concurrent commit: WRITE)"
        )

    with pytest.raises(
        ConcurrentRunError,
        match=r"stage: gave up after 2 write conflicts .* on db\.t: "
        r"\[DELTA_CONCURRENT_APPEND\].*run stage again",
    ):
        retry_on_conflict("stage", always, attempts=2, pause_s=0.01)


def test_an_empty_table_left_unregistered_by_a_killed_run_is_moved_aside(spark, db):
    """Creating a table commits it, then registers it:
    a kill in between leaves a folder no table owns."""
    table = f"{db}.orphan"
    location = f"{spark.catalog.getDatabase(db).locationUri.removeprefix('file:')}/orphan"
    # the killed run's remains
    spark.createDataFrame([], "id BIGINT").write.format("delta").save(location)
    replace_where(spark.range(3), table, "id >= 0")
    assert spark.table(table).count() == 3
    assert len(glob.glob(f"{location}.orphaned-*")) == 1

    data = f"{db}.orphan_with_data"
    # not an empty create: not ours to move
    spark.range(5).write.format("delta").save(f"{location}_with_data")
    with pytest.raises(
        SchemaError, match=rf"table {data} is not in the catalog, but its folder .*holds data"
    ):
        ensure_table(spark, data, "id BIGINT")


def test_an_assignment_staged_before_a_concurrent_publish_is_not_applied_twice(spark, db):
    """assign stages its changes, another run publishes
    the same ones, then this run's MERGE runs."""
    features = f"{db}.item_image_features"
    ensure_table(
        spark,
        features,
        "item_id BIGINT, image_cluster_id INT, cluster_similarity FLOAT, "
        "model_version STRING, cluster_version INT, valid_from TIMESTAMP, valid_to TIMESTAMP, "
        "updated_at TIMESTAMP",
    )
    spark.createDataFrame([(1, 7, 0.9), (2, 7, 0.8)], ASSIGNMENT_SCHEMA).selectExpr(
        "*", "'3' AS model_version", "1 AS cluster_version"
    ).createOrReplaceTempView("item_assignments")
    first = dt.datetime(2026, 1, 1)

    def staged(published_at):
        return run_sql_file(
            spark,
            "features/assign_changes",
            {
                "assignments": "item_assignments",
                "item_image_features": features,
                "published_at": published_at,
                "first_valid_from": first,
            },
        ).localCheckpoint(eager=True)

    mine, theirs = staged(first), staged(first)  # both see two new items
    _merge(spark, features, theirs, first, inserts=2, closes=0)
    with pytest.raises(WriteConflict, match="0 of 2 new rows"):
        _merge(spark, features, mine, first, inserts=2, closes=0)
    assert spark.table(features).count() == 2

    # A change staged twice: the first run closes and
    # replaces item 1's row, the second does nothing.
    spark.createDataFrame([(1, 9, 0.7)], ASSIGNMENT_SCHEMA).selectExpr(
        "*", "'3' AS model_version", "2 AS cluster_version"
    ).createOrReplaceTempView("item_assignments")
    later = dt.datetime(2026, 1, 2)
    mine, theirs = staged(later), staged(later)
    _merge(spark, features, theirs, later, inserts=1, closes=1)
    with pytest.raises(WriteConflict, match="0 of 1 new rows and 0 of 1 closings"):
        _merge(spark, features, mine, later, inserts=1, closes=1)
    rows = spark.table(features).where("item_id = 1").orderBy("valid_from").collect()
    assert [(r.image_cluster_id, r.valid_to is None) for r in rows] == [(7, False), (9, True)]


def test_a_cluster_version_number_is_published_once(spark, db):
    table = f"{db}.cluster_centroids"
    k, d = 3, 4
    fit = KMeansFit(
        centroids=np.eye(k, d, dtype=np.float32),
        sizes=np.ones(k, dtype=np.int64),
        objective=0.0,
        iterations=1,
        imbalance_factor=1.0,
        empty_clusters=0,
        n_train=k,
        used_gpu=False,
    )
    version = CentroidVersion(1, "3", np.arange(k), fit.centroids)
    _publish(spark, table, version, fit, "run-a")
    with pytest.raises(
        ConcurrentRunError,
        match=r"cluster version 1 was published by another run .*published nothing",
    ):
        _publish(spark, table, version, fit, "run-b")
    assert [
        tuple(r)
        for r in spark.table(table).groupBy("cluster_version", "mlflow_run_id").count().collect()
    ] == [(1, "run-a", k)]


@pytest.mark.slow
def test_two_runs_of_build_samples_on_the_same_days_at_once(spark, feature_db, tmp_path):
    """Another process starts writing the day's samples and is held inside that Delta transaction
    (COURIER_TEST_HOLD_BEFORE_COMMIT) while this process builds the same day. Released, its commit
    comes second: a write conflict, after which it starts over and finishes (retry_on_conflict).
    The tables equal one run's, with nothing twice."""
    cfg: CourierConfig = feature_db("courier_faults_two_runs")
    samples = cfg.tables.qualified("courier_samples")
    day = TRAIN_START + dt.timedelta(days=1)  # one day: the build's cost is in its days
    release = tmp_path / "release"
    other = CourierProcess(
        cfg,
        tmp_path,
        "build-samples",
        "--start",
        str(day),
        "--end",
        str(day),
        env={HOLD_BEFORE_COMMIT: str(release)},
    )
    other.wait_until(Path(f"{release}.holding").exists, "its hold inside the courier_samples write")
    # the other's transaction read the empty table
    assert table_versions(spark, [samples])[samples] == 0

    build_samples(spark, cfg, day, day)
    # this run's samples, committed during the hold
    assert table_versions(spark, [samples])[samples] == 1
    release.touch()
    assert other.wait() == 0, other.output[-3000:]
    started_over = [line for line in other.lines if "starting over" in line]
    assert len(started_over) == 1 and re.search(
        rf"build_samples: a concurrent run changed {samples} \(\[DELTA_CONCURRENT_APPEND.*"
        r"\(the concurrent commit: WRITE\)\); starting over in .* \(attempt 2 of 3\)",
        started_over[0],
    ), other.output[-3000:]
    # the other's second attempt, after this run's
    assert table_versions(spark, [samples])[samples] == 2

    expected, rebuilt = (
        built_rows(spark, TRAIN_DB, day, day),
        built_rows(spark, cfg.tables.database, day, day),
    )
    for name, rows in expected.items():
        assert_same_rows(rebuilt[name], rows, name)


@pytest.mark.slow
def test_two_cluster_runs_at_once_publish_one_version_and_the_loser_fails(
    spark, base_config, tmp_path
):
    """`courier cluster` in another process is held inside its publishing MERGE while this process
    publishes the same version number. Released, it stops with exit status 2 and a message naming
    the conflict, its MLflow run FAILED; the version holds the winner's centroids only."""
    cfg = base_config.replace(
        [
            f"tables.database={CLUSTER_DB}",
            "cluster.k=4",
            "mlflow.experiment=courier-faults-cluster-race",
        ]
    )
    t = cfg.tables
    spark.sql(f"DROP DATABASE IF EXISTS {CLUSTER_DB} CASCADE")
    spark.sql(f"CREATE DATABASE {CLUSTER_DB}")
    # 64 items of one model version, unit vectors in 8 dimensions: clustering needs no encoder.
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    now = dt.datetime(2026, 1, 1)
    spark.createDataFrame(
        [(i, "7", f"h{i}", x[i].tolist(), now) for i in range(len(x))], ITEM_EMBEDDINGS_DDL
    ).write.format("delta").saveAsTable(t.qualified("item_embeddings"))
    release = tmp_path / "release"
    loser = CourierProcess(cfg, tmp_path, "cluster", env={HOLD_BEFORE_COMMIT: str(release)})
    loser.wait_until(Path(f"{release}.holding").exists, "its hold inside the publishing MERGE")

    won = cluster_embeddings(spark, cfg)
    assert won.version.cluster_version == 1
    release.touch()
    assert loser.wait() == 2, loser.output[-3000:]
    table = t.qualified("cluster_centroids")
    assert re.search(
        rf"courier cluster: error: cluster: {table}: \[DELTA_CONCURRENT_APPEND.*"
        r"\(the concurrent commit: MERGE\); this run published nothing",
        loser.output,
    ), loser.output[-3000:]
    assert [
        tuple(r)
        for r in spark.table(table).groupBy("cluster_version", "mlflow_run_id").count().collect()
    ] == [(1, won.mlflow_run_id, 4)]
    assert spark.table(t.qualified("pipeline_runs")).where("stage = 'cluster'").count() == 1

    client = MlflowClient(resolve_tracking_uri(cfg.mlflow.tracking_uri))
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id], "tags.`courier.cluster_version` = '1'")
    status = {run.info.run_id: run.info.status for run in runs}
    assert len(status) == 2 and status.pop(won.mlflow_run_id) == "FINISHED", status
    assert list(status.values()) == ["FAILED"], status
