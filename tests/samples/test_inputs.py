"""Bad input that must stop the build (structural) or be prepared correctly (images),
and the down-sampling's determinism."""

from __future__ import annotations

import datetime as dt
import io
import time

import pytest
from PIL import Image

from courier.config import CourierConfig
from courier.samples.build import build_item_images, build_samples, sample_views
from courier.samples.images import ImageLimits, prepare_image, read_image_uri
from courier.tables import SchemaError
from courier.world.schema import RAW_IMPRESSIONS_DDL, RAW_ITEMS_DDL

DB = "courier_inputs_test"


LIMITS = ImageLimits(max_bytes=1_000_000, max_pixels=1_000_000)


def _png(width: int, height: int, colour=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def cfg(base_config: CourierConfig, spark) -> CourierConfig:
    spark.sql(f"DROP DATABASE IF EXISTS {DB} CASCADE")
    spark.sql(f"CREATE DATABASE {DB}")
    return base_config.replace(
        [
            f"tables.database={DB}",
            "samples.image_size=16",
            "samples.max_event_ts=2026-06-01T00:00:00",
        ]
    )


def _write(spark, rows, schema: str, table: str) -> None:
    spark.createDataFrame(rows, schema).write.format("delta").mode("overwrite").option(
        "overwriteSchema", "true"
    ).saveAsTable(table)


# --- images -------------------------------------------------------------------------------------


def test_prepare_image_resizes_and_center_crops():
    # A 40x20 image: left half red, right half blue; the center crop keeps the middle 20x20.
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    prepared = prepare_image(buf.getvalue(), size=10, quality=95, limits=LIMITS)
    assert prepared.error is None
    assert (prepared.source_width, prepared.source_height) == (40, 20)
    out = Image.open(io.BytesIO(prepared.jpeg))
    assert out.format == "JPEG" and out.size == (10, 10)
    left, right = out.getpixel((1, 5)), out.getpixel((8, 5))
    assert left[0] > 200 and left[2] < 60 and right[2] > 200 and right[0] < 60
    assert (
        prepared.content_hash
        == prepare_image(buf.getvalue(), size=32, quality=50, limits=LIMITS).content_hash
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (None, "empty_image"),
        (b"", "empty_image"),
        (b"\x89PNG\r\n\x1a\nbroken", "undecodable_image"),
    ],
)
def test_prepare_image_reports_bad_images(data, reason):
    prepared = prepare_image(data, size=8, quality=90, limits=LIMITS)
    assert prepared.jpeg is None and prepared.error == reason and prepared.error_detail


def test_prepare_image_refuses_sources_beyond_the_limits():
    png = _png(200, 100)  # 20,000 pixels
    assert (
        prepare_image(png, 8, 90, ImageLimits(max_bytes=len(png), max_pixels=20_000)).error is None
    )
    too_big = prepare_image(png, 8, 90, ImageLimits(max_bytes=len(png) - 1, max_pixels=20_000))
    assert (too_big.error, too_big.jpeg) == ("image_too_large", None)
    assert f"{len(png):,} bytes > samples.max_image_bytes" in too_big.error_detail
    too_many = prepare_image(png, 8, 90, ImageLimits(max_bytes=len(png), max_pixels=19_999))
    assert too_many.error == "image_too_large" and (
        too_many.source_width,
        too_many.source_height,
    ) == (200, 100)
    assert "200x100 = 20,000 pixels > samples.max_image_pixels 19,999" in too_many.error_detail


def test_a_decompression_bomb_is_refused_from_its_header():
    # 9000 x 9000 mode-1 pixels: a ~10 KB file that would decode to 81 M RGB pixels (243 MB).
    buf = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buf, format="PNG")
    limits = ImageLimits(max_bytes=1_000_000, max_pixels=40_000_000)
    started = time.perf_counter()
    prepared = prepare_image(buf.getvalue(), 8, 90, limits)
    assert prepared.error == "image_too_large" and "81,000,000 pixels" in prepared.error_detail
    assert time.perf_counter() - started < 5  # not decoded (a safety net, not a benchmark)


def test_uris_are_read_no_further_than_the_byte_limit(tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 10_000)
    assert len(read_image_uri(str(big), max_bytes=100)) == 101


def test_item_images_from_uris(spark, cfg, tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(_png(24, 24))
    rows = [
        (1, "tops", "a", str(good), dt.datetime(2026, 1, 1)),
        (2, "tops", "b", str(tmp_path / "missing.png"), dt.datetime(2026, 1, 1)),
    ]
    _write(
        spark,
        rows,
        "item_id bigint, category string, title string, image_uri string, updated_at timestamp",
        cfg.tables.qualified("raw_items"),
    )
    spark.sql(f"DROP TABLE IF EXISTS {cfg.tables.qualified('item_images')}")
    record = build_item_images(spark, cfg, "uri-test")
    assert record.metrics["prepared"] == 1 and record.metrics["rejected.unreadable_image_uri"] == 1
    jpeg = spark.table(cfg.tables.qualified("item_images")).where("item_id = 1").first()["jpeg"]
    assert Image.open(io.BytesIO(jpeg)).size == (16, 16)


# --- structural errors stop the job, naming table and column -----------------------------------


def _valid_items(spark, cfg) -> None:
    _write(
        spark,
        [(1, "tops", "a", _png(8, 8), dt.datetime(2026, 1, 1))],
        RAW_ITEMS_DDL,
        cfg.tables.qualified("raw_items"),
    )
    spark.sql(f"DROP TABLE IF EXISTS {cfg.tables.qualified('item_images')}")


def test_missing_table_is_named(spark, cfg):
    _valid_items(spark, cfg)
    spark.sql(f"DROP TABLE IF EXISTS {cfg.tables.qualified('raw_impressions')}")
    with pytest.raises(SchemaError, match=f"table {DB}.raw_impressions does not exist"):
        build_samples(spark, cfg, dt.date(2026, 1, 1), dt.date(2026, 1, 1))


def test_missing_column_is_named(spark, cfg):
    _valid_items(spark, cfg)
    _write(
        spark,
        [("r1", 1, 1, 0, "q", dt.datetime(2026, 1, 1), 1)],
        RAW_IMPRESSIONS_DDL.replace(", dt DATE", ""),
        cfg.tables.qualified("raw_impressions"),
    )
    with pytest.raises(SchemaError, match=f"table {DB}.raw_impressions has no column 'dt'"):
        build_samples(spark, cfg, dt.date(2026, 1, 1), dt.date(2026, 1, 1))


def test_wrong_type_is_named(spark, cfg):
    _valid_items(spark, cfg)
    _write(
        spark,
        [("r1", "u1", 1, 0, "q", dt.datetime(2026, 1, 1), 1, dt.date(2026, 1, 1))],
        RAW_IMPRESSIONS_DDL.replace("user_id BIGINT", "user_id STRING"),
        cfg.tables.qualified("raw_impressions"),
    )
    with pytest.raises(
        SchemaError, match=f"table {DB}.raw_impressions column 'user_id' has type string"
    ):
        build_samples(spark, cfg, dt.date(2026, 1, 1), dt.date(2026, 1, 1))


def test_items_without_image_column_are_named(spark, cfg):
    _write(
        spark,
        [(1, "tops", "a", dt.datetime(2026, 1, 1))],
        "item_id bigint, category string, title string, updated_at timestamp",
        cfg.tables.qualified("raw_items"),
    )
    with pytest.raises(SchemaError, match="neither an 'image'"):
        build_item_images(spark, cfg, "x")


def test_end_before_start_is_refused(spark, cfg):
    with pytest.raises(ValueError, match="before --start"):
        build_samples(spark, cfg, dt.date(2026, 1, 2), dt.date(2026, 1, 1))


# --- negative down-sampling ---------------------------------------------------------------------


def _many_negatives(spark) -> None:
    ts = dt.datetime(2026, 1, 2, 12)
    rows = []
    for r in range(400):
        user = r % 40
        for pos in range(10):
            rows.append(
                (
                    f"p{r:04d}",
                    user,
                    pos + 1,
                    pos,
                    "q",
                    ts + dt.timedelta(minutes=r),
                    int(pos == 0),
                    ts.date(),
                )
            )
    spark.createDataFrame(rows, RAW_IMPRESSIONS_DDL).createOrReplaceTempView("ds_impressions")
    spark.createDataFrame([(i,) for i in range(1, 11)], "item_id BIGINT").createOrReplaceTempView(
        "ds_items"
    )


def _kept_negatives(spark, cfg: CourierConfig) -> dict[str, list[int]]:
    views = sample_views(
        spark,
        cfg,
        dt.date(2026, 1, 2),
        dt.date(2026, 1, 2),
        dt.datetime(2030, 1, 1),
        "ds_impressions",
        "ds_items",
        "ds_items",
    )
    try:
        return {
            r["request_id"]: [*list(r["kept_negative_item_ids"]), -len(r["clicked_item_ids"])]
            for r in views.page_views.collect()
        }
    finally:
        views.unpersist()


def test_downsampling_is_deterministic_and_near_its_rate(spark, cfg):
    _many_negatives(spark)
    half = cfg.replace(["samples.negative_keep_rate=0.3", "samples.sampling_seed=1"])
    first, second = _kept_negatives(spark, half), _kept_negatives(spark, half)
    assert first == second
    kept = sum(len(v) - 1 for v in first.values())
    assert 0.25 < kept / (400 * 9) < 0.35
    assert all(v[-1] == -1 for v in first.values())  # the one positive per page is never dropped
    reseeded = _kept_negatives(spark, half.replace(["samples.sampling_seed=2"]))
    assert reseeded != first
    everything = _kept_negatives(spark, half.replace(["samples.negative_keep_rate=1.0"]))
    assert sum(len(v) - 1 for v in everything.values()) == 400 * 9
