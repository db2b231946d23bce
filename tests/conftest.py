"""Shared fixtures: one real local SparkSession (Delta + Derby catalog) for the whole run."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from courier.config import CourierConfig, load_config

# Naive datetimes in tests mean UTC, like the Spark session's time zone.
os.environ["TZ"] = "UTC"
time.tzset()


@pytest.fixture(scope="session")
def warehouse_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="courier-test-wh-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def base_config(warehouse_dir: Path) -> CourierConfig:
    """The local profile pointed at a throw-away warehouse, sized for tests."""
    return load_config(
        "local",
        [
            f"spark.warehouse_dir={warehouse_dir}",
            "spark.master=local[2]",
            "spark.shuffle_partitions=2",
            "spark.ui_enabled=false",
            "spark.driver_memory=3g",
            f"mlflow.tracking_uri=sqlite:///{warehouse_dir}/mlflow.db",
            f"train.checkpoint_dir={warehouse_dir}/checkpoints",
        ],
    )


@pytest.fixture(scope="session")
def spark(base_config: CourierConfig):
    from courier.spark import build_spark_session

    session = build_spark_session(base_config.spark, database=base_config.tables.database)
    yield session
    session.stop()
