"""The feature stages' fixtures: one short registered encoder, and feature databases copied from the training shop.

The encoder trains 30 steps on the shared training shop (tests/conftest.py) and is
registered under its own name. Each test module gets its own database holding
copies of the shop's raw_items, raw_impressions, item_images and eval_item_styles,
so modules that change images or re-fit clusters never see each other's state.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from courier.config import CourierConfig

ENCODER = "courier-features-test-encoder"
COPIED_TABLES = ("raw_items", "raw_impressions", "item_images", "eval_item_styles")


@pytest.fixture(scope="session")
def encoder_config(shop_config: CourierConfig) -> CourierConfig:
    # lr 1e-3 as in the training tests: 30 steps of 1e-4 leave the embeddings nearly collapsed.
    return shop_config.replace(["train.max_steps=30", "train.lr=0.001", f"mlflow.registered_model={ENCODER}",
                                "mlflow.experiment=courier-features-test", "cluster.k=16"])


@pytest.fixture(scope="session")
def registered_encoder(spark, encoder_config: CourierConfig, training_table: str) -> str:
    """The registered model version of a 30-step encoder (alias ``candidate``)."""
    from courier.train import run_training

    result = run_training(encoder_config, spark=spark, run_name="features-encoder", distributed=False)
    assert result.model_version is not None
    return result.model_version


@pytest.fixture(scope="session")
def feature_db(spark, shop_config: CourierConfig, encoder_config: CourierConfig, registered_encoder: str,
               tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], CourierConfig]:
    """``feature_db(name)``: a fresh database with copies of the shop's inputs; its config."""

    def make(name: str) -> CourierConfig:
        spark.sql(f"DROP DATABASE IF EXISTS {name} CASCADE")
        spark.sql(f"CREATE DATABASE {name}")
        for table in COPIED_TABLES:
            spark.table(shop_config.tables.qualified(table)).write.format("delta").saveAsTable(f"{name}.{table}")
        reports: Path = tmp_path_factory.mktemp(f"{name}-reports")
        return encoder_config.replace([f"tables.database={name}", f"report.out_dir={reports}"])

    return make
