"""The whole sample build on a small synthetic shop with bad rows injected:
rejects, reconciliation, the table contracts, idempotent re-runs."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from pyspark.sql import functions as F

from courier.config import CourierConfig
from courier.samples.build import _sample_metrics, build_samples, sample_views
from courier.tables import ReconciliationError, date_range_predicate
from courier.world.schema import RAW_IMPRESSIONS_DDL
from courier.world.warehouse import write_world

START, END = dt.date(2026, 1, 1), dt.date(2026, 1, 4)
DB = "courier_build_test"


def _decompression_bomb() -> bytes:
    """A PNG of a few KB whose header claims 9000 x 9000 = 81 M pixels
    (samples.max_image_pixels: 40 M)."""
    buf = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buf, format="PNG")
    return buf.getvalue()


BAD_ITEMS = {  # item_id -> (image bytes, expected reason)
    990001: (b"", "empty_image"),
    990002: (b"this is not an image", "undecodable_image"),
    990003: (_decompression_bomb(), "image_too_large"),
}


@pytest.fixture(scope="module")
def cfg(base_config: CourierConfig, tiny_shop_overrides) -> CourierConfig:
    return base_config.replace(
        tiny_shop_overrides(
            DB, items=240, users=150, page_views=1500, days=4, rows_per_row_group=64
        )
    )


def _inject_bad_rows(spark, cfg: CourierConfig) -> dict[str, int]:
    """Append one row per reject reason to the raw tables; returns expected counts per reason."""
    t = cfg.tables
    items = spark.table(t.qualified("raw_items"))
    some_item = items.orderBy("item_id").first()
    bad_items = [
        (item_id, "tops", "bad", image, dt.datetime(2025, 12, 1))
        for item_id, (image, _) in BAD_ITEMS.items()
    ]
    bad_items.append(
        (
            some_item["item_id"],
            some_item["category"],
            "older copy",
            some_item["image"],
            some_item["updated_at"] - dt.timedelta(days=1),
        )
    )  # duplicate_key
    # null_key
    bad_items.append((None, "tops", "no id", some_item["image"], dt.datetime(2025, 12, 1)))
    spark.createDataFrame(bad_items, items.schema).write.format("delta").mode("append").saveAsTable(
        t.qualified("raw_items")
    )

    impressions = spark.table(t.qualified("raw_impressions"))
    good = impressions.where("dt = DATE'2026-01-02'").orderBy("request_id", "position").first()
    ts = dt.datetime(2026, 1, 2, 10)
    d = ts.date()
    rows = [
        ("bad-null", None, good["item_id"], 0, "q", ts, 0, d),  # null_key
        ("bad-label", 1, good["item_id"], 0, "q", ts, 2, d),  # invalid_label
        (
            "bad-future",
            1,
            good["item_id"],
            0,
            "q",
            dt.datetime(2099, 1, 1),
            0,
            d,
        ),  # future_timestamp
        ("bad-dt", 1, good["item_id"], 0, "q", ts, 0, dt.date(2026, 1, 3)),  # dt_mismatch
        ("bad-unknown", 1, 123456789, 0, "q", ts, 0, d),  # unknown_item
        ("bad-image", 1, 990002, 0, "q", ts, 1, d),  # item_without_image
        ("bad-mixed", 1, good["item_id"], 0, "q", ts, 0, d),  # inconsistent_page_view
        ("bad-mixed", 2, some_item["item_id"], 1, "q", ts, 0, d),  # inconsistent_page_view
        (
            good["request_id"],
            good["user_id"],
            good["item_id"],
            good["position"],
            good["query"],
            good["event_ts"],
            good["clicked"],
            good["dt"],
        ),  # duplicate_key
    ]
    spark.createDataFrame(rows, RAW_IMPRESSIONS_DDL).write.format("delta").mode(
        "append"
    ).saveAsTable(t.qualified("raw_impressions"))
    good_item, other = good["item_id"], some_item["item_id"]
    impressions_expected = {  # rejects key (request_id/item_id) -> reason
        f"bad-null/{good_item}": "null_key",
        f"bad-label/{good_item}": "invalid_label",
        f"bad-future/{good_item}": "future_timestamp",
        f"bad-dt/{good_item}": "dt_mismatch",
        "bad-unknown/123456789": "unknown_item",
        "bad-image/990002": "item_without_image",
        f"bad-mixed/{good_item}": "inconsistent_page_view",
        f"bad-mixed/{other}": "inconsistent_page_view",
        f"{good['request_id']}/{good_item}": "duplicate_key",
    }
    items_expected = {str(item_id): reason for item_id, (_, reason) in BAD_ITEMS.items()}
    items_expected.update({str(other): "duplicate_key", "NULL": "null_key"})
    return {"build_samples": impressions_expected, "item_images": items_expected}


@pytest.fixture(scope="module")
def built(spark, cfg):
    spark.sql(f"DROP DATABASE IF EXISTS {DB} CASCADE")
    spark.sql(f"CREATE DATABASE {DB}")
    write_world(spark, cfg)
    expected_rejects = _inject_bad_rows(spark, cfg)
    result = build_samples(spark, cfg, START, END)
    return result, expected_rejects


def _rejects(spark, cfg, stage: str) -> dict[str, str]:
    """key -> reason of a stage's rejects (a key rejected twice would fail the length check)."""
    rows = (
        spark.table(cfg.tables.qualified("rejects"))
        .where(F.col("stage") == stage)
        .select("key", "reason")
        .collect()
    )
    mapping = {r["key"]: r["reason"] for r in rows}
    assert len(mapping) == len(rows), f"a key was rejected twice by {stage}"
    return mapping


def _by_reason(mapping: dict[str, str]) -> dict[str, int]:
    return {reason: list(mapping.values()).count(reason) for reason in set(mapping.values())}


def test_every_bad_impression_is_rejected_with_its_reason(spark, cfg, built):
    result, expected = built
    # Each bad row under its own key with its own reason: two swapped reasons fail here.
    assert _rejects(spark, cfg, "build_samples") == expected["build_samples"]
    for reason, n in _by_reason(expected["build_samples"]).items():
        assert result.samples.metrics[f"impressions_rejected.{reason}"] == n


def test_every_bad_item_is_rejected_with_its_reason(spark, cfg, built):
    result, expected = built
    assert _rejects(spark, cfg, "item_images") == expected["item_images"]
    images = spark.table(cfg.tables.qualified("item_images"))
    assert images.where(F.col("item_id").isin(list(BAD_ITEMS))).count() == 0
    n_raw = spark.table(cfg.tables.qualified("raw_items")).count()
    m = result.items.metrics
    assert (
        m["items_in"]
        == n_raw
        == m["prepared"] + sum(v for k, v in m.items() if k.startswith("rejected."))
    )
    assert images.count() == m["prepared"]


def test_counts_reconcile(spark, cfg, built):
    result, _ = built
    m = result.samples.metrics
    raw_in_range = (
        spark.table(cfg.tables.qualified("raw_impressions"))
        .where(f"dt BETWEEN DATE'{START}' AND DATE'{END}'")
        .count()
    )
    assert m["impressions_in"] == raw_in_range
    assert m["impressions_in"] == m["impressions_rejected"] + m["impressions_valid"]
    assert m["impressions_valid"] == (
        m["impressions_in_samples"]
        + m["impressions_downsampled"]
        + m["impressions_truncated"]
        + m["impressions_in_dropped_page_views"]
    )
    assert m["page_views_in"] == (
        m["page_views_kept"] + m["page_views_dropped_no_click"] + m["page_views_dropped_no_history"]
    )
    assert m["page_views_dropped_no_click"] > 0 and m["page_views_dropped_no_history"] > 0
    samples = spark.table(cfg.tables.qualified("courier_samples"))
    assert samples.count() == m["page_views_kept"] > 100
    shown = samples.selectExpr("sum(size(filter(pv_labels, x -> x >= 0)))").first()[0]
    assert shown == m["impressions_in_samples"]
    runs = spark.table(cfg.tables.qualified("pipeline_runs")).where("stage = 'build_samples'")
    assert runs.where(F.col("run_id") == result.samples.run_id).first()["metrics"] == m


def test_a_lost_page_view_fails_the_reconciliation(spark, cfg, built):
    # The real views of the build, with one kept page view dropped between the checked
    # impressions and the draft samples: the job's own reconciliation must refuse it.
    t = cfg.tables
    views = sample_views(
        spark,
        cfg,
        START,
        END,
        dt.datetime.fromisoformat(cfg.samples.max_event_ts),
        raw_impressions=t.qualified("raw_impressions"),
        raw_items=t.qualified("raw_items"),
        item_images=t.qualified("item_images"),
    )
    try:
        in_range = date_range_predicate(START, END)
        checked = views.checked.where(in_range)
        _sample_metrics(checked, views.draft)  # as built: reconciles
        lost = views.draft.where("drop_reason IS NULL").orderBy("request_id").first()["request_id"]
        with pytest.raises(
            ReconciliationError, match=r"valid impressions: (\d+) in, but (?!\1)\d+ accounted for"
        ):
            _sample_metrics(checked, views.draft.where(F.col("request_id") != lost))
    finally:
        views.unpersist()


def test_samples_contract(spark, cfg, built):
    l_pv, l_click = cfg.samples.l_pv, cfg.samples.l_click
    samples = spark.table(cfg.tables.qualified("courier_samples"))
    bad = samples.where(
        f"size(pv_item_ids) <> {l_pv} OR size(pv_labels) <> {l_pv} OR size(click_item_ids) <> "
        f"{l_click}"
        # positives first: no 1 after a 0 or -1; padding last; padded ids and labels agree
        " OR array_join(pv_labels, ',') RLIKE '(0|-1),1' OR array_join(pv_labels, ',') RLIKE '-1,0'"
        " OR NOT pv_labels[0] = 1"
        " OR size(filter(pv_item_ids, x -> x = -1)) <> size(filter(pv_labels, x -> x = -1))"
        # history: left-padded, at least one click
        " OR click_item_ids[" + str(l_click - 1) + "] = -1"
        " OR n_history <> size(filter(click_item_ids, x -> x <> -1)) OR "
        "array_join(transform(click_item_ids, x -> CASE WHEN x = -1 THEN 'p' ELSE 'c' END), '') "
        "RLIKE 'cp'"
    )
    assert bad.count() == 0
    assert samples.where("dt < DATE'2026-01-01' OR dt > DATE'2026-01-04'").count() == 0
    assert samples.groupBy("request_id").count().where("count > 1").count() == 0
    # Point in time, against the raw log:
    # every history item was clicked by that user strictly earlier.
    spark.table(cfg.tables.qualified("raw_impressions")).where(
        "clicked = 1"
    ).createOrReplaceTempView("all_clicks")
    samples.createOrReplaceTempView("built_samples")
    violations = spark.sql("""
        WITH history AS (
          SELECT s.request_id, s.user_id, s.event_ts, h.item_id
          FROM built_samples s
            LATERAL VIEW explode(filter(click_item_ids, x -> x <> -1)) h AS item_id
        )
        SELECT h.request_id, h.item_id
        FROM history h
        LEFT JOIN all_clicks c
          ON c.user_id = h.user_id AND c.item_id = h.item_id AND c.event_ts < h.event_ts
        GROUP BY h.request_id, h.item_id
        HAVING count(c.item_id) = 0
    """)
    assert violations.count() == 0


def test_training_rows_hold_the_images_of_their_items(spark, cfg, built):
    t = cfg.tables
    samples = spark.table(t.qualified("courier_samples")).select(
        "request_id",
        "user_id",
        "event_ts",
        "query",
        "pv_item_ids",
        "pv_labels",
        "click_item_ids",
        "dt",
    )
    rows = spark.table(t.qualified("courier_training_rows"))
    # Row for row the samples, nothing lost or duplicated.
    assert rows.count() == samples.count()
    assert rows.select(*samples.columns).exceptAll(samples).isEmpty()
    images = {
        r["item_id"]: bytes(r["jpeg"]) for r in spark.table(t.qualified("item_images")).collect()
    }
    checked = 0
    for row in rows.collect():
        for ids, blobs in (
            (row["pv_item_ids"], row["pv_images"]),
            (row["click_item_ids"], row["click_images"]),
        ):
            assert len(ids) == len(blobs)
            for item_id, blob in zip(ids, blobs, strict=True):
                assert bytes(blob) == (images[item_id] if item_id != -1 else b"")
                checked += 1
    assert checked == samples.count() * (cfg.samples.l_pv + cfg.samples.l_click)


def test_training_rows_are_written_in_bounded_row_groups(spark, cfg, built):
    location = spark.sql(
        f"DESCRIBE DETAIL {cfg.tables.qualified('courier_training_rows')}"
    ).first()["location"]
    files = list(Path(location.removeprefix("file:")).rglob("*.parquet"))
    assert files
    for path in files:
        meta = pq.ParquetFile(path).metadata
        assert meta.num_row_groups == 1
        assert meta.num_rows <= cfg.samples.rows_per_row_group


def test_rerun_replaces_exactly_its_partitions(spark, cfg, built):
    t = cfg.tables
    first, _expected_rejects = built
    before = {
        name: spark.table(t.qualified(name)).count()
        for name in ("courier_samples", "courier_training_rows", "rejects", "item_images")
    }
    day2 = spark.table(t.qualified("courier_samples")).where("dt = DATE'2026-01-02'").count()
    again = build_samples(spark, cfg, START, END)
    after = {name: spark.table(t.qualified(name)).count() for name in before}
    assert after == before

    def counts(m: dict[str, int]) -> dict[str, int]:  # the metrics but the timings (ms.*)
        return {k: v for k, v in m.items() if not k.startswith("ms.")}

    assert counts(again.samples.metrics) == counts(first.samples.metrics)
    assert again.items.metrics["unchanged"] == first.items.metrics["prepared"]  # nothing re-decoded

    # One day of the range: only that partition is rewritten.
    partitioned = ("courier_samples", "courier_training_rows")
    files_before = {name: set(spark.table(t.qualified(name)).inputFiles()) for name in partitioned}
    build_samples(spark, cfg, dt.date(2026, 1, 2), dt.date(2026, 1, 2))
    for name in partitioned:
        files_after = set(spark.table(t.qualified(name)).inputFiles())

        def day(files: set[str]) -> set[str]:
            return {f for f in files if "dt=2026-01-02" in f}

        # The other days' data files are the very same files (not rewritten); the day's are all new.
        assert files_after - day(files_after) == files_before[name] - day(files_before[name]), name
        assert day(files_after) and not day(files_after) & day(files_before[name]), name
    assert spark.table(t.qualified("courier_samples")).count() == before["courier_samples"]
    assert (
        spark.table(t.qualified("courier_samples")).where("dt = DATE'2026-01-02'").count() == day2
    )
    assert spark.table(t.qualified("rejects")).count() == before["rejects"]
    runs = spark.table(t.qualified("pipeline_runs")).where("stage = 'build_samples'").count()
    assert runs == 3
