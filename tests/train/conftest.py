"""A tiny shop built once for the training tests: real Spark + Delta tables, 32x32 images.

About 1,200 training rows over 4 days, written in files of at most 64 rows, so
holding out 25% of the files holds out (most of) the last day.
"""
from __future__ import annotations

import datetime as dt

import pytest

from courier.config import CourierConfig
from courier.data.snapshot import TrainingSnapshot, pin_training_snapshot

DB = "courier_train_test"
START, END = dt.date(2026, 1, 1), dt.date(2026, 1, 4)


@pytest.fixture(scope="session")
def shop_config(base_config: CourierConfig, tmp_path_factory: pytest.TempPathFactory,
                tiny_shop_overrides) -> CourierConfig:
    """The shop plus training settings sized for a 2-core CPU; MLflow and checkpoints in a tmp folder."""
    tmp = tmp_path_factory.mktemp("train")
    shop = tiny_shop_overrides(DB, items=240, users=150, page_views=2000, days=4, rows_per_row_group=64)
    return base_config.replace([
        *shop,
        f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db",
        "mlflow.experiment=courier-train-test",
        "mlflow.registered_model=courier-train-test-encoder",
        f"train.checkpoint_dir={tmp}/checkpoints",
        "train.batch_size=32", "train.epochs=20", "train.log_every_steps=5", "train.checkpoint_every_steps=20",
        "train.holdout_fraction=0.25", "train.eval_max_rows=512", "train.loader_workers=2",
    ])


@pytest.fixture(scope="session")
def training_table(spark, shop_config: CourierConfig) -> str:
    """courier_training_rows of the tiny shop (qualified name)."""
    from courier.samples.build import build_samples
    from courier.world_tables import write_world

    spark.sql(f"DROP DATABASE IF EXISTS {DB} CASCADE")
    spark.sql(f"CREATE DATABASE {DB}")
    write_world(spark, shop_config)
    build_samples(spark, shop_config, START, END)
    return shop_config.tables.qualified("courier_training_rows")


@pytest.fixture(scope="session")
def snapshot(spark, training_table: str) -> TrainingSnapshot:
    return pin_training_snapshot(spark, training_table)
