"""The benchmark shops: one sizing rule and one session
setup for every bench script that builds a shop."""

from __future__ import annotations

from pathlib import Path

BENCH_DAYS = 14


def session_overrides(
    warehouse: Path,
    master: str = "local[2]",
    shuffle_partitions: int = 8,
    driver_memory: str = "8g",
) -> list[str]:
    """Config overrides for a throw-away warehouse on the local machine."""
    return [
        f"spark.warehouse_dir={warehouse}",
        f"spark.master={master}",
        "spark.ui_enabled=false",
        f"spark.shuffle_partitions={shuffle_partitions}",
        f"spark.driver_memory={driver_memory}",
        f"mlflow.tracking_uri=sqlite:///{warehouse}/mlflow.db",
    ]


def shop_overrides(database: str, page_views: int) -> list[str]:
    """A shop of ``page_views`` page views (~10 impressions each) over BENCH_DAYS days."""
    return [
        f"tables.database={database}",
        f"world.n_page_views={page_views}",
        f"world.n_users={max(2000, page_views // 10)}",
        f"world.n_items={max(3000, page_views // 50)}",
        f"world.days={BENCH_DAYS}",
    ]
