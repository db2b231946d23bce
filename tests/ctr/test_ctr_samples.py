"""``courier ctr-samples`` on real Spark + Delta:
point-in-time history, as-of features, reconciliation.

The shop, its planted cases and the session's build are in conftest.py.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from courier.ctr.samples import build_ctr_samples
from courier.features.assign import ITEM_IMAGE_FEATURES_DDL
from courier.tables import ReconciliationError
from tests.ctr.conftest import CHANGE_AT, END, L_CLICK, START, expected_cluster


@pytest.fixture(scope="module")
def cfg(ctr_cfg):
    return ctr_cfg


@pytest.fixture(scope="module")
def built(ctr_built):
    return ctr_built


def test_every_valid_impression_is_a_row_and_the_rest_are_rejected(spark, cfg, built):
    record, samples = built
    m = record.metrics
    raw = spark.table(cfg.tables.qualified("raw_impressions")).count()
    rejected = {k: v for k, v in m.items() if k.startswith("impressions_rejected.")}
    assert m["impressions_in"] == raw == len(samples) + sum(rejected.values())
    assert rejected == {
        "impressions_rejected.null_key": 1,
        "impressions_rejected.invalid_label": 1,
        "impressions_rejected.unknown_item": 1,
    }
    rejects = spark.table(cfg.tables.qualified("rejects")).where("stage = 'ctr_samples'").toPandas()
    assert sorted(rejects["key"].str.split("/").str[0]) == ["bad-1", "bad-2", "bad-3"]
    assert set(samples["label"]) == {0, 1}


def test_history_is_the_latest_clicks_strictly_before_the_page_view(spark, cfg, built):
    _, samples = built
    raw = (
        spark.table(cfg.tables.qualified("raw_impressions"))
        .where("clicked = 1 AND user_id IS NOT NULL AND item_id < 1000000000")
        .toPandas()
    )
    clicks = raw.sort_values(["event_ts", "request_id", "position"])
    # iter(): a GroupBy has a `keys` attribute, so dict() would take it for a mapping
    by_user = dict(iter(clicks.groupby("user_id")))
    pages = samples.drop_duplicates("request_id")
    # a third keeps the Python check short
    pages = pages[(pages.index % 3 == 0) | (pages["request_id"] == "planted-same-instant")]
    checked_with_earlier = 0
    for row in pages.itertuples():
        user_clicks = by_user.get(row.user_id, clicks.iloc[:0])
        earlier = user_clicks[user_clicks["event_ts"] < row.event_ts]
        expected = earlier["item_id"].tolist()[-L_CLICK:]
        assert list(row.history_item_ids) == expected, row.request_id
        checked_with_earlier += bool(expected)
    assert checked_with_earlier > 100
    pages = samples.drop_duplicates("request_id")
    planted = pages[pages["request_id"] == "planted-same-instant"].iloc[0]
    twin = pages[
        (pages["user_id"] == planted.user_id)
        & (pages["event_ts"] == planted.event_ts)
        & (pages["request_id"] != planted.request_id)
    ].iloc[0]
    # neither sees the other's clicks: same instant is not "before"
    assert list(planted.history_item_ids) == list(twin.history_item_ids)


def test_features_are_the_values_valid_at_the_impression_time(built):
    _, samples = built
    samples = samples.astype({"image_cluster_id": "Int64"})
    expected = [
        expected_cluster(i, ts)
        for i, ts in zip(samples["item_id"], samples["event_ts"], strict=True)
    ]
    got = [None if pd.isna(c) else int(c) for c in samples["image_cluster_id"]]
    assert got == expected
    # the range really straddles both switch times, and some features are missing
    assert (
        samples["image_cluster_id"].isna().sum() > 0
        and (samples["image_cluster_id"] >= 100).sum() > 0
    )
    for row in samples.drop_duplicates("request_id").itertuples():
        want = [expected_cluster(i, row.event_ts) for i in row.history_item_ids]
        got = [None if pd.isna(c) else int(c) for c in row.history_cluster_ids]
        assert got == want, row.request_id
        assert len(row.history_categories) == len(row.history_item_ids)


def test_rerun_replaces_the_range_and_overlapping_features_fail_before_writing(spark, cfg, built):
    _, samples = built
    table = cfg.tables.qualified("ctr_samples")
    again = build_ctr_samples(spark, cfg, START, END)
    assert spark.table(table).count() == len(samples) == again.metrics["rows_written"]
    version_before = spark.sql(f"DESCRIBE HISTORY {table} LIMIT 1").first()["version"]
    # A copy of the feature history with a second row valid at the same time: the join duplicates.
    overlapping = cfg.tables.qualified("item_image_features") + "_overlapping"
    overlap = spark.createDataFrame(
        [
            (
                int(samples["item_id"].iloc[0]),
                5,
                0.5,
                "1",
                3,
                dt.datetime(1970, 1, 1),
                None,
                CHANGE_AT,
            )
        ],
        ITEM_IMAGE_FEATURES_DDL,
    )
    spark.table(cfg.tables.qualified("item_image_features")).unionByName(overlap).write.format(
        "delta"
    ).saveAsTable(overlapping)
    broken = cfg.replace([f"tables.item_image_features={overlapping.split('.')[1]}"])
    with pytest.raises(ReconciliationError, match="ctr_samples impressions"):
        build_ctr_samples(spark, broken, START, END)
    assert spark.sql(f"DESCRIBE HISTORY {table} LIMIT 1").first()["version"] == version_before
