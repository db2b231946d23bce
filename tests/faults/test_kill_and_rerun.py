"""kill -9 part-way through a stage, then the same command again: the tables equal an
uninterrupted run's, with no duplicates, and what the killed run left is whole Delta
versions only (training: tests/train/test_train_resume.py and test_train_horovod.py)."""
from __future__ import annotations

import datetime as dt

import pytest

from courier.config import CourierConfig
from courier.features.assign import assign_items
from courier.features.cluster import cluster_embeddings
from courier.features.embed import embed_items
from courier.samples.build import build_samples
from tests.conftest import TRAIN_DB, TRAIN_START
from tests.faults.conftest import (CourierProcess, assert_same_rows, built_rows, commits, delta_log, restore,
                                   table_rows, table_versions, torch_workers)

pytestmark = pytest.mark.slow

# Two of the training shop's four days: the build's cost is in its days.
START, END = TRAIN_START, TRAIN_START + dt.timedelta(days=1)


@pytest.fixture(scope="module")
def build_cfg(spark, feature_db) -> CourierConfig:
    """A copy of the training shop's raw tables, nothing built yet."""
    cfg = feature_db("courier_faults_build")
    spark.sql(f"DROP TABLE {cfg.tables.qualified('item_images')}")
    return cfg


def test_build_samples_killed_after_writing_samples_then_rerun(spark, build_cfg: CourierConfig, tmp_path):
    """Killed between courier_samples and courier_training_rows; the reference is the training
    shop, built by the same code and config from the same raw tables."""
    t = build_cfg.tables
    job = CourierProcess(build_cfg, tmp_path, "build-samples", "--start", str(START), "--end", str(END))
    samples_log = delta_log(spark, build_cfg, "courier_samples")
    job.kill_when(lambda: 1 in commits(samples_log))  # version 0 is the empty table, 1 its data

    # What the killed run left: whole commits. Its samples are all there, its training rows are not.
    assert not spark.catalog.tableExists(t.qualified("courier_training_rows"))
    reference = built_rows(spark, TRAIN_DB, START, END)
    assert_same_rows(table_rows(spark, t.qualified("courier_samples")), reference["courier_samples"],
                     "courier_samples after the kill")
    finished = {r["stage"] for r in spark.table(t.qualified("pipeline_runs")).collect()}
    assert finished == {"item_images"}, "the killed build must not be recorded as finished"

    build_samples(spark, build_cfg, START, END)
    rebuilt = built_rows(spark, t.database, START, END)
    for name, rows in reference.items():
        assert_same_rows(rebuilt[name], rows, name)


@pytest.fixture(scope="module")
def features_cfg(spark, feature_db, registered_encoder: str) -> CourierConfig:
    """A copy of the training shop with its item_images, and the test encoder registered."""
    return feature_db("courier_faults_features")


def test_embed_killed_while_embedding_then_rerun(spark, features_cfg: CourierConfig, tmp_path):
    t = features_cfg.tables
    tables = [t.qualified(name) for name in ("item_embeddings", "rejects", "pipeline_runs")]
    before = table_versions(spark, tables)
    embed_items(spark, features_cfg)
    expected = table_rows(spark, t.qualified("item_embeddings"))
    restore(spark, before)

    job = CourierProcess(features_cfg, tmp_path, "embed")
    # The model is resolved and the UDF's job has started: its workers are loading or running it.
    # Killed while its Python workers run the model over the images.
    job.kill_when(lambda: bool(torch_workers(job.proc.pid)))
    assert spark.table(t.qualified("item_embeddings")).count() == 0  # nothing half-published

    embed_items(spark, features_cfg)
    assert_same_rows(table_rows(spark, t.qualified("item_embeddings")), expected, "item_embeddings")


def test_assign_killed_after_its_merge_then_rerun(spark, features_cfg: CourierConfig, tmp_path):
    t = features_cfg.tables
    if not spark.catalog.tableExists(t.qualified("item_embeddings")):
        embed_items(spark, features_cfg)
    cluster_embeddings(spark, features_cfg)
    features = t.qualified("item_image_features")
    before = table_versions(spark, [features])
    assign_items(spark, features_cfg)
    expected = table_rows(spark, features)
    restore(spark, before)

    job = CourierProcess(features_cfg, tmp_path, "assign")
    log = delta_log(spark, features_cfg, "item_image_features")
    # Killed right after its one MERGE committed (version 1: version 0 is the empty table),
    # before the views and its pipeline_runs row.
    job.kill_when(lambda: 1 in commits(log))
    assert_same_rows(table_rows(spark, features), expected, "item_image_features after the kill")

    result = assign_items(spark, features_cfg)
    assert result.record.metrics["unchanged"] == result.record.metrics["items_in"]  # nothing left to do
    assert_same_rows(table_rows(spark, features), expected, "item_image_features")
    current = spark.table(features).where("valid_to IS NULL")
    assert current.count() == current.select("item_id").distinct().count()
