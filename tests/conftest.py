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


def _tiny_shop(database: str, *, items: int, users: int, page_views: int, days: int,
               rows_per_row_group: int) -> list[str]:
    """Overrides for a small 32 px shop starting 2026-01-01, with nothing rejected as future."""
    return [
        f"tables.database={database}",
        f"world.n_items={items}", f"world.n_users={users}", f"world.n_page_views={page_views}",
        f"world.days={days}", "world.start_date=2026-01-01", "world.image_size=32",
        "samples.image_size=32", f"samples.rows_per_row_group={rows_per_row_group}",
        "samples.max_event_ts=2026-06-01T00:00:00",
    ]


@pytest.fixture(scope="session")
def tiny_shop_overrides():
    """``tiny_shop_overrides(database, items=, users=, page_views=, days=, rows_per_row_group=)``."""
    return _tiny_shop
