"""The CTR tests' shop and its ctr_samples, built once for the session.

A small 32 px shop (240 items, 300 users, 8,000 page views over 6 days: enough
test impressions for a planted feature's lift to stand out of the bootstrap
noise), with planted cases: a page view at the very instant of another clicking
page view of the same user, three invalid impressions, and an
item_image_features history written by hand, with items whose Cluster-ID
changes mid-range and items without a feature before a later time, so the
as-of join has something to get wrong. Only item_images is built of the sample
tables: ctr_samples needs nothing else.
"""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F

from courier.ctr.samples import build_ctr_samples
from courier.features.assign import ITEM_IMAGE_FEATURES_DDL
from courier.samples.build import build_item_images
from courier.world.warehouse import write_world

DB = "courier_ctr_test"
L_CLICK = 8
START, END = dt.date(2026, 1, 1), dt.date(2026, 1, 6)
CHANGE_AT = dt.datetime(2026, 1, 4, 12)  # half the items change cluster here
LATE_FROM = dt.datetime(2026, 1, 2, 6)  # a tenth of the items only get a feature from here


@pytest.fixture(scope="session")
def ctr_cfg(spark, base_config, tiny_shop_overrides):
    shop = tiny_shop_overrides(
        DB, items=240, users=300, page_views=8000, days=6, rows_per_row_group=64
    )
    # 6 days: 4 to train, 1 to validate, 1 to test
    cfg = base_config.replace(
        [
            *shop,
            f"ctr_samples.l_click={L_CLICK}",
            "ctr_samples.validation_days=1",
            "ctr_samples.test_days=1",
        ]
    )
    spark.sql(f"DROP DATABASE IF EXISTS {DB} CASCADE")
    spark.sql(f"CREATE DATABASE {DB}")
    write_world(spark, cfg)
    impressions = cfg.tables.qualified("raw_impressions")
    _planted_impressions(spark, spark.table(impressions)).write.format("delta").mode(
        "append"
    ).saveAsTable(impressions)
    build_item_images(spark, cfg, "ctr-test")
    _feature_history(spark, cfg.tables.qualified("item_image_features"))
    return cfg


def _planted_impressions(spark, raw):
    """A clicking page view at the instant of the shop's first click,
    by the same user, + three invalid impressions."""
    first = raw.where("clicked = 1").orderBy("event_ts", "request_id").first()
    same_instant = (
        raw.where(F.col("request_id") == first["request_id"])
        .withColumn("request_id", F.lit("planted-same-instant"))
        .withColumn("clicked", F.lit(1))
    )
    bad = spark.createDataFrame(
        [
            ("bad-1", None, first["item_id"], 0, first["query"], first["event_ts"], 0, first["dt"]),
            (
                "bad-2",
                first["user_id"],
                first["item_id"],
                0,
                first["query"],
                first["event_ts"],
                7,
                first["dt"],
            ),
            (
                "bad-3",
                first["user_id"],
                10**9,
                0,
                first["query"],
                first["event_ts"],
                0,
                first["dt"],
            ),
        ],
        raw.schema,
    )
    return same_instant.unionByName(bad)


def _feature_history(spark, table: str) -> None:
    items = [r["item_id"] for r in spark.table(f"{DB}.raw_items").select("item_id").collect()]
    rows = []
    for item in items:
        if item % 10 == 3:  # no feature before LATE_FROM
            rows.append((item, item % 7, 0.9, "1", 1, LATE_FROM, None, LATE_FROM))
        elif item % 2 == 0:  # changes cluster at CHANGE_AT
            rows.append(
                (item, item % 7, 0.9, "1", 1, dt.datetime(1970, 1, 1), CHANGE_AT, CHANGE_AT)
            )
            rows.append((item, 100 + item % 7, 0.8, "1", 2, CHANGE_AT, None, CHANGE_AT))
        else:
            rows.append((item, item % 7, 0.9, "1", 1, dt.datetime(1970, 1, 1), None, CHANGE_AT))
    spark.createDataFrame(rows, ITEM_IMAGE_FEATURES_DDL).write.format("delta").saveAsTable(table)


def expected_cluster(item: int, ts: dt.datetime) -> int | None:
    if item % 10 == 3:
        return item % 7 if ts >= LATE_FROM else None
    if item % 2 == 0:
        return 100 + item % 7 if ts >= CHANGE_AT else item % 7
    return item % 7


@pytest.fixture(scope="session")
def ctr_built(spark, ctr_cfg):
    """(the build's RunRecord, ctr_samples as pandas)."""
    cfg = ctr_cfg
    record = build_ctr_samples(spark, cfg, START, END)
    return record, spark.table(cfg.tables.qualified("ctr_samples")).toPandas()
