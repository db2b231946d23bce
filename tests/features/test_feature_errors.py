"""Bad input to the feature stages: each stops at once
with a message naming the table, version or value."""

from __future__ import annotations

import pytest

from courier.features.assign import assign_items
from courier.features.cluster import ClusteringError, cluster_embeddings
from courier.features.embed import ITEM_EMBEDDINGS_DDL, embed_items
from courier.tracking.models import ModelResolutionError
from jobs.cli import main

DB = "courier_feature_errors_test"


@pytest.fixture(scope="module")
def cfg(feature_db):
    return feature_db(DB)


def test_cluster_without_an_embeddings_table(spark, cfg):
    with pytest.raises(ClusteringError, match=rf"table {DB}.item_embeddings does not exist"):
        cluster_embeddings(spark, cfg)


def test_cluster_on_an_empty_embeddings_table(spark, cfg):
    table = cfg.tables.qualified("item_embeddings")
    spark.createDataFrame([], ITEM_EMBEDDINGS_DDL).write.format("delta").saveAsTable(table)
    try:
        with pytest.raises(ClusteringError, match=rf"table {table} holds no embeddings"):
            cluster_embeddings(spark, cfg)
    finally:
        spark.sql(f"DROP TABLE {table}")


def test_assign_without_any_cluster_version(spark, cfg):
    with pytest.raises(
        ClusteringError, match=rf"{DB}.cluster_centroids does not exist|holds no cluster version"
    ):
        assign_items(spark, cfg)


@pytest.fixture(scope="module")
def embedded(spark, cfg, copy_embeddings) -> int:
    """The number of items embedded."""
    return copy_embeddings(cfg)


def test_k_larger_than_the_items(spark, cfg, embedded):
    n = embedded
    with pytest.raises(ClusteringError, match=rf"cluster.k=100000 is larger than the {n} items"):
        cluster_embeddings(spark, cfg.replace(["cluster.k=100000"]))


def test_cluster_of_a_model_version_that_embedded_nothing(spark, cfg, embedded):
    with pytest.raises(ClusteringError, match="holds no embeddings of model version 77"):
        cluster_embeddings(spark, cfg.replace(["cluster.model_version=77"]))


def test_assign_to_a_missing_cluster_version(spark, cfg, embedded):
    cluster_embeddings(spark, cfg)
    with pytest.raises(
        ClusteringError,
        match=r"cluster version 42 is not in table .*cluster_centroids \(versions: \[1\]\)",
    ):
        assign_items(spark, cfg, cluster_version=42)


def test_a_model_without_its_preprocessing_is_refused(spark, cfg, embedded, tmp_path):
    import mlflow
    import mlflow.pytorch
    import torch

    from courier.tracking import resolve_tracking_uri

    mlflow.set_tracking_uri(resolve_tracking_uri(cfg.mlflow.tracking_uri))
    with mlflow.start_run(
        experiment_id=mlflow.get_experiment_by_name(cfg.mlflow.experiment).experiment_id
    ):
        info = mlflow.pytorch.log_model(
            torch.nn.Flatten(), name="bare", serialization_format="pickle"
        )
    with pytest.raises(ModelResolutionError, match="carries no 'courier_preprocessing' metadata"):
        embed_items(spark, cfg, model_uri=info.model_uri)


def test_the_cli_prints_one_line_and_exits_2(spark, cfg, embedded, capsys):
    overrides = [
        f"spark.warehouse_dir={cfg.spark.warehouse_dir}",
        f"spark.master={cfg.spark.master}",
        f"tables.database={DB}",
        f"mlflow.tracking_uri={cfg.mlflow.tracking_uri}",
        f"mlflow.registered_model={cfg.mlflow.registered_model}",
    ]
    code = main(
        [
            "embed",
            "--model",
            f"models:/{cfg.mlflow.registered_model}/999",
            *[a for o in overrides for a in ("--set", o)],
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "courier embed: error: model models:/" in err and "has no version 999" in err
    assert "Traceback" not in err
