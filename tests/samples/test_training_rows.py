"""Attaching images to samples: the Arrow lookup and its errors
(real Spark for the DataFrame path)."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from courier.samples.training_rows import (
    ImageIndex,
    MissingImageError,
    referenced_images,
    training_rows,
)

INDEX = ImageIndex.from_table(
    pa.table(
        {
            "item_id": pa.array([3, 7, 11], pa.int64()),
            "jpeg": pa.array([b"three", b"seven", b"eleven"], pa.binary()),
        }
    )
)


def test_lookup_maps_each_slot_and_pads_with_empty_bytes():
    ids = pa.array([[7, 3, -1], [11, -1, -1]], pa.list_(pa.int64()))
    images = INDEX.lookup(ids)
    assert images.to_pylist() == [[b"seven", b"three", b""], [b"eleven", b"", b""]]


def test_lookup_respects_a_sliced_list_array():
    ids = pa.array([[3], [7, 11], [11, 3]], pa.list_(pa.int64())).slice(1, 2)
    assert INDEX.lookup(ids).to_pylist() == [[b"seven", b"eleven"], [b"eleven", b"three"]]


def test_lookup_raises_on_an_unknown_item():
    ids = pa.array([[3, 5]], pa.list_(pa.int64()))
    with pytest.raises(MissingImageError, match=r"item_id \[5\]"):
        INDEX.lookup(ids)


def test_lookup_with_only_padding_and_no_images():
    ids = pa.array([[-1, -1]], pa.list_(pa.int64()))
    empty = ImageIndex.from_table(
        pa.table({"item_id": pa.array([], pa.int64()), "jpeg": pa.array([], pa.binary())})
    )
    assert empty.lookup(ids).to_pylist() == [[b"", b""]]


SAMPLES_DDL = (
    "request_id STRING, user_id BIGINT, event_ts TIMESTAMP, query STRING, pv_item_ids "
    "ARRAY<BIGINT>, pv_labels ARRAY<INT>, click_item_ids ARRAY<BIGINT>, n_history INT, dt DATE"
)


def _samples(spark, rows):
    ts = dt.datetime(2026, 1, 1, 12)
    return spark.createDataFrame(
        [
            (rid, 1, ts, "q", pv, [1] * len(pv), clicks, len(clicks), dt.date(2026, 1, 1))
            for rid, pv, clicks in rows
        ],
        SAMPLES_DDL,
    )


def test_training_rows_attach_images_through_spark(spark):
    images = spark.createDataFrame(
        [(3, b"three"), (7, b"seven"), (9, b"unused")], "item_id BIGINT, jpeg BINARY"
    )
    samples = _samples(spark, [("r2", [7, -1], [-1, 3]), ("r1", [3, 7], [7, 7])])
    built = training_rows(samples, images, "test.item_images", num_partitions=2, images_per_row=4)
    rows = built.rows
    try:
        got = {r["request_id"]: (r["pv_images"], r["click_images"]) for r in rows.collect()}
    finally:
        built.release()
    assert got == {
        "r1": ([b"three", b"seven"], [b"seven", b"seven"]),
        "r2": ([b"seven", b""], [b"", b"three"]),
    }
    assert rows.columns == [
        "request_id",
        "user_id",
        "event_ts",
        "query",
        "pv_item_ids",
        "pv_labels",
        "click_item_ids",
        "pv_images",
        "click_images",
        "dt",
    ]


def test_a_sample_naming_an_item_without_image_is_an_error_naming_it(spark):
    images = spark.createDataFrame([(3, b"three")], "item_id BIGINT, jpeg BINARY")
    samples = _samples(spark, [("r1", [3, 42], [-1, 3])])
    with pytest.raises(MissingImageError, match=r"test\.item_images.*42"):
        referenced_images(samples, images, "test.item_images")
