"""`courier status` on a warehouse that ran embed, cluster and assign (one with rejects)."""

from __future__ import annotations

import pytest

from courier.features.assign import assign_items
from courier.features.cluster import cluster_embeddings
from courier.features.embed import embed_items
from courier.status import (
    current_clusters,
    latest_stage_runs,
    model_aliases,
    status_report,
    table_states,
)
from courier.tables import delta_version

DB = "courier_status_test"


@pytest.fixture(scope="module")
def ran(spark, feature_db):
    cfg = feature_db(DB)
    t = cfg.tables
    # One item without a prepared image, so the embed run has a reject to report.
    spark.sql(
        f"INSERT INTO {t.qualified('raw_items')} (item_id, category, updated_at) "
        "VALUES (990001, 'hats', TIMESTAMP'2026-01-01 00:00:00')"
    )
    embedded = embed_items(spark, cfg)
    clustered = cluster_embeddings(spark, cfg)
    assigned = assign_items(spark, cfg)
    return cfg, embedded, clustered, assigned


def test_the_latest_run_of_each_stage_with_its_counts_and_rejects(spark, ran):
    cfg, embedded, _, assigned = ran
    runs = {r.stage: r for r in latest_stage_runs(spark, cfg)}
    assert {"embed", "cluster", "assign"} <= set(runs)
    assert runs["embed"].run_id == embedded.record.run_id
    assert runs["embed"].metrics == embedded.record.metrics
    assert runs["embed"].rejects == {"item_without_image": 1}
    assert runs["assign"].run_id == assigned.record.run_id and runs["assign"].seconds >= 0
    # A second embed run (nothing new) becomes the latest, with its own rejects only.
    again = embed_items(spark, cfg)
    latest = {r.stage: r for r in latest_stage_runs(spark, cfg)}["embed"]
    assert latest.run_id == again.record.run_id != embedded.record.run_id


def test_tables_models_and_clusters(spark, ran, registered_encoder):
    cfg, _, clustered, _ = ran
    states = {s.name: s for s in table_states(spark, cfg)}
    features = cfg.tables.qualified("item_image_features")
    assert states[features].version == delta_version(spark, features)
    assert states[features].rows == spark.table(features).count() > 0
    assert model_aliases(cfg)[cfg.mlflow.alias] == registered_encoder
    clusters = current_clusters(spark, cfg)
    assert clusters == {
        "cluster_version": clustered.version.cluster_version,
        "model_version": registered_encoder,
        "k": cfg.cluster.k,
    }
    text = status_report(spark, cfg)
    for needle in (
        "latest run of each stage:",
        "rejects: item_without_image 1",
        features,
        f"{cfg.mlflow.alias:<12} version {registered_encoder}",
        f"current version {clusters['cluster_version']} (k {cfg.cluster.k}",
    ):
        assert needle in text, (needle, text)
