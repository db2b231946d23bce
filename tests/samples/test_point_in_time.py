"""The sample SQL equals a plain-Python reference on random small logs (hypothesis).

Timestamps are drawn from a handful of values so that ties (two page views of
one user at the same instant) are common: the case a point-in-time join gets
wrong first.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from courier.samples.build import sample_views
from courier.world.schema import RAW_IMPRESSIONS_DDL

START = dt.date(2026, 1, 2)
END = dt.date(2026, 1, 3)


@dataclass(frozen=True)
class PageView:
    request_id: str
    user_id: int
    event_ts: dt.datetime
    items: tuple[int, ...]  # by position
    clicks: tuple[int, ...]  # 0/1 per position


@st.composite
def page_views(draw: st.DrawFn) -> list[PageView]:
    # Instants over the day before START (history only) and the requested range.
    instants = [dt.datetime(2026, 1, 1, 12) + dt.timedelta(hours=12 * k) for k in range(6)]
    n = draw(st.integers(1, 14))
    views = []
    for i in range(n):
        n_items = draw(st.integers(1, 7))
        items = draw(st.lists(st.integers(1, 9), min_size=n_items, max_size=n_items, unique=True))
        clicks = draw(st.lists(st.integers(0, 1), min_size=n_items, max_size=n_items))
        views.append(
            PageView(
                f"r{i:03d}",
                draw(st.integers(1, 3)),
                draw(st.sampled_from(instants)),
                tuple(items),
                tuple(clicks),
            )
        )
    return views


def reference(
    views: list[PageView], l_pv: int, l_click: int, lookback_days: int = 60
) -> dict[str, dict]:
    """The samples, written the obvious way: for each page view, scan every click.

    History clicks come from dt >= START - lookback_days (samples.history_lookback_days).
    """
    history_start = START - dt.timedelta(days=lookback_days)
    clicks = sorted(
        (v.event_ts, v.request_id, pos, v.user_id, item)
        for v in views
        for pos, (item, c) in enumerate(zip(v.items, v.clicks, strict=True))
        if c == 1 and v.event_ts.date() >= history_start
    )
    out = {}
    for v in views:
        if not START <= v.event_ts.date() <= END:
            continue
        history = [
            item for ts, _, _, user, item in clicks if user == v.user_id and ts < v.event_ts
        ][-l_click:]
        positives = [item for item, c in zip(v.items, v.clicks, strict=True) if c == 1]
        negatives = [item for item, c in zip(v.items, v.clicks, strict=True) if c == 0]
        shown = (positives + negatives)[:l_pv]
        n_pos_shown = min(len(positives), l_pv)
        out[v.request_id] = {
            "pv_item_ids": shown + [-1] * (l_pv - len(shown)),
            "pv_labels": [1] * n_pos_shown
            + [0] * (len(shown) - n_pos_shown)
            + [-1] * (l_pv - len(shown)),
            "click_item_ids": [-1] * (l_click - len(history)) + history,
            "drop_reason": "no_click" if not positives else ("no_history" if not history else None),
        }
    return out


def _register(spark, views: list[PageView]) -> None:
    rows = [
        (v.request_id, v.user_id, item, pos, "q", v.event_ts, c, v.event_ts.date())
        for v in views
        for pos, (item, c) in enumerate(zip(v.items, v.clicks, strict=True))
    ]
    spark.createDataFrame(rows, RAW_IMPRESSIONS_DDL).createOrReplaceTempView("pit_impressions")
    spark.createDataFrame([(i,) for i in range(1, 10)], "item_id BIGINT").createOrReplaceTempView(
        "pit_items"
    )


@pytest.mark.parametrize(("l_pv", "l_click"), [(3, 2), (5, 5)])
@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(views=page_views())
def test_samples_match_reference(spark, base_config, views, l_pv, l_click):
    _check_against_reference(spark, base_config, views, l_pv, l_click)


T0 = dt.datetime(2026, 1, 2, 9)


def test_a_click_at_the_same_instant_is_not_history(spark, base_config):
    # Same user, same instant: A's click must not be in B's history, nor B's in A's (both
    # have none: no_history); C, an hour later, sees both, in (event_ts, request_id) order.
    views = [
        PageView("a", 1, T0, (1, 2), (1, 0)),
        PageView("b", 1, T0, (3, 4), (1, 0)),
        PageView("c", 1, T0 + dt.timedelta(hours=1), (5, 6), (1, 0)),
    ]
    rows = _check_against_reference(spark, base_config, views, l_pv=3, l_click=3)
    assert rows["a"]["drop_reason"] == rows["b"]["drop_reason"] == "no_history"
    assert rows["c"]["click_item_ids"] == [-1, 1, 3] and rows["c"]["drop_reason"] is None


def test_history_reaches_back_exactly_the_lookback(spark, base_config):
    # history_lookback_days=2 before START (2026-01-02): a click on 2025-12-31 is history,
    # one on 2025-12-30 is not.
    views = [
        PageView("old", 1, dt.datetime(2025, 12, 30, 12), (1,), (1,)),
        PageView("edge", 1, dt.datetime(2025, 12, 31, 0), (2,), (1,)),
        PageView("now", 1, T0, (3, 4), (1, 0)),
    ]
    rows = _check_against_reference(spark, base_config, views, l_pv=2, l_click=3, lookback_days=2)
    assert rows["now"]["click_item_ids"] == [-1, -1, 2]


def _check_against_reference(
    spark, base_config, views: list[PageView], l_pv: int, l_click: int, lookback_days: int = 60
) -> dict[str, dict]:
    """The sample SQL's draft rows for ``views`` equal the reference; returns them by request_id."""
    cfg = base_config.replace(
        [
            f"samples.l_pv={l_pv}",
            f"samples.l_click={l_click}",
            "samples.negative_keep_rate=1.0",
            f"samples.history_lookback_days={lookback_days}",
        ]
    )
    _register(spark, views)
    built = sample_views(
        spark,
        cfg,
        START,
        END,
        dt.datetime(2030, 1, 1),
        raw_impressions="pit_impressions",
        raw_items="pit_items",
        item_images="pit_items",
    )
    try:
        rows = {r["request_id"]: r.asDict() for r in built.draft.collect()}
        impressions = {
            (r["request_id"], r["item_id"]): r["event_ts"] for r in built.checked.collect()
        }
    finally:
        built.unpersist()
    expected = reference(views, l_pv, l_click, lookback_days)
    assert set(rows) == set(expected)
    for request_id, want in expected.items():
        got = rows[request_id]
        assert {k: got[k] for k in want} == want, request_id

    # The property itself, checked on the SQL output directly:
    # no history click at or after the page view.
    click_times: dict[tuple[int, int], list[dt.datetime]] = {}
    for v in views:
        for item, c in zip(v.items, v.clicks, strict=True):
            if c:
                click_times.setdefault((v.user_id, item), []).append(v.event_ts)
    for request_id, got in rows.items():
        for item in got["click_item_ids"]:
            if item != -1:
                assert min(click_times[(got["user_id"], item)]) < got["event_ts"], (
                    request_id,
                    item,
                )
    assert all(ts is not None for ts in impressions.values())
    return rows
