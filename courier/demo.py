"""The end-to-end demo on the embedded default: every stage that exists, then a summary."""
from __future__ import annotations

import datetime as dt

from pyspark.sql import SparkSession

from courier.config import CourierConfig
from courier.samples.build import build_samples
from courier.train.launch import run_training
from courier.world_tables import write_world

# A demo trains for a few minutes on CPU, not an epoch; set train.max_steps to change it.
DEMO_TRAIN_STEPS = 120


def world_date_range(cfg: CourierConfig) -> tuple[dt.date, dt.date]:
    start = dt.date.fromisoformat(cfg.world.start_date)
    return start, start + dt.timedelta(days=cfg.world.days - 1)


def describe_tables(spark: SparkSession, cfg: CourierConfig) -> str:
    """Where each table lives, its Delta version and row count."""
    lines = [f"{'table':<36} {'rows':>10} {'version':>8}  location"]
    for attr in ("raw_items", "raw_impressions", "item_images", "courier_samples", "courier_training_rows",
                 "rejects", "pipeline_runs", "eval_item_styles", "eval_user_preferences"):
        name = cfg.tables.qualified(attr)
        if not spark.catalog.tableExists(name):
            continue
        detail = spark.sql(f"DESCRIBE DETAIL {name}").select("location").first()
        version = spark.sql(f"DESCRIBE HISTORY {name} LIMIT 1").select("version").first()[0]
        lines.append(f"{name:<36} {spark.table(name).count():>10,} {version:>8}  {detail['location']}")
    return "\n".join(lines)


def run_demo(spark: SparkSession, cfg: CourierConfig) -> str:
    """Generate the synthetic shop, build the samples for its whole date range, train briefly, summarise."""
    world = write_world(spark, cfg)
    start, end = world_date_range(cfg)
    built = build_samples(spark, cfg, start, end)
    train_cfg = cfg if cfg.train.max_steps is not None else cfg.replace([f"train.max_steps={DEMO_TRAIN_STEPS}"])
    trained = run_training(train_cfg, spark=spark)
    example = (
        spark.table(cfg.tables.qualified("courier_samples"))
        .orderBy("event_ts", "request_id")
        .select("request_id", "user_id", "event_ts", "pv_item_ids", "pv_labels", "click_item_ids")
        .first()
    )
    parts = [
        world.summary(),
        built.items.summary(),
        built.samples.summary(),
        trained.summary(),
        "tables:\n" + describe_tables(spark, cfg),
        f"example sample: {example.asDict() if example else None}",
        "query them: .venv/bin/courier sql \"SELECT * FROM "
        f"{cfg.tables.qualified('courier_samples')} LIMIT 5\"",
    ]
    return "\n\n".join(parts)
