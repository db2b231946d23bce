"""One small built shop for the loader tests
(database courier_data_test), built once per session."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest

from courier.config import CourierConfig
from courier.data import TrainingSnapshot, pin_training_snapshot
from courier.samples.build import build_samples
from courier.world.warehouse import write_world

DB = "courier_data_test"
START, END = dt.date(2026, 1, 1), dt.date(2026, 1, 3)
ROWS_PER_GROUP = 16


@dataclass(frozen=True)
class Shop:
    cfg: CourierConfig
    db: str
    rows_per_group: int
    table: str  # qualified courier_training_rows
    snapshot: TrainingSnapshot  # its version after the build


@pytest.fixture(scope="session")
def shop(spark, base_config: CourierConfig, tiny_shop_overrides) -> Shop:
    cfg = base_config.replace(
        tiny_shop_overrides(
            DB, items=100, users=60, page_views=500, days=3, rows_per_row_group=ROWS_PER_GROUP
        )
    )
    spark.sql(f"DROP DATABASE IF EXISTS {DB} CASCADE")
    spark.sql(f"CREATE DATABASE {DB}")
    write_world(spark, cfg)
    build_samples(spark, cfg, START, END)
    table = cfg.tables.qualified("courier_training_rows")
    return Shop(cfg, DB, ROWS_PER_GROUP, table, pin_training_snapshot(spark, table))
