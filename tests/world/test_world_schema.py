"""Table contracts the Spark writer relies on."""

from __future__ import annotations

import datetime as dt
import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from courier.world import World, WorldConfig, schema


def test_schemas_are_exact(small_world: World, small_impressions: pa.Table) -> None:
    assert small_world.items.schema.equals(schema.RAW_ITEMS)
    assert small_world.item_styles.schema.equals(schema.EVAL_ITEM_STYLES)
    assert small_world.user_preferences.schema.equals(schema.EVAL_USER_PREFERENCES)
    assert small_impressions.schema.equals(schema.RAW_IMPRESSIONS)
    assert schema.RAW_IMPRESSIONS.names == [
        "request_id",
        "user_id",
        "item_id",
        "position",
        "query",
        "event_ts",
        "clicked",
        "dt",
    ]
    assert schema.RAW_ITEMS.field("updated_at").type == pa.timestamp("us")
    assert schema.EVAL_USER_PREFERENCES.field("liked_styles").type == pa.list_(pa.int32())


def test_no_nulls(small_world: World, small_impressions: pa.Table) -> None:
    for table in (
        small_world.items,
        small_world.item_styles,
        small_world.user_preferences,
        small_impressions,
    ):
        assert all(column.null_count == 0 for column in table.columns)


def test_ids_unique_and_consistent(
    small_world: World, small_impressions: pa.Table, small_cfg: WorldConfig
) -> None:
    item_ids = small_world.items["item_id"].to_numpy()
    assert len(np.unique(item_ids)) == small_cfg.n_items
    assert small_world.item_styles["item_id"].equals(small_world.items["item_id"])
    assert small_world.item_styles["category"].equals(small_world.items["category"])
    user_ids = small_world.user_preferences["user_id"].to_numpy()
    assert len(np.unique(user_ids)) == small_cfg.n_users
    assert np.isin(small_impressions["item_id"].to_numpy(), item_ids).all()
    assert np.isin(small_impressions["user_id"].to_numpy(), user_ids).all()


def test_pages_are_full_distinct_and_of_the_queried_category(
    small_world: World, small_impressions: pa.Table, small_cfg: WorldConfig
) -> None:
    k = small_cfg.items_per_page
    imp = small_impressions
    assert imp.num_rows == small_cfg.n_page_views * k
    request = imp["request_id"].to_numpy(zero_copy_only=False).reshape(-1, k)
    assert (request == request[:, :1]).all()  # a page's rows are contiguous
    assert len(np.unique(request[:, 0])) == small_cfg.n_page_views
    assert (imp["position"].to_numpy().reshape(-1, k) == np.arange(k)).all()
    items = imp["item_id"].to_numpy().reshape(-1, k)
    assert (np.diff(np.sort(items, axis=1), axis=1) > 0).all()
    category_of = dict(
        zip(
            small_world.items["item_id"].to_pylist(),
            small_world.items["category"].to_pylist(),
            strict=True,
        )
    )
    shown = np.array([category_of[i] for i in imp["item_id"].to_pylist()])
    assert (shown == imp["query"].to_numpy(zero_copy_only=False)).all()
    for column in ("user_id", "query", "event_ts"):
        values = imp[column].to_numpy(zero_copy_only=False).reshape(-1, k)
        assert (values == values[:, :1]).all()


def test_time_window_order_and_dt(small_impressions: pa.Table, small_cfg: WorldConfig) -> None:
    ts = small_impressions["event_ts"]
    start = small_cfg.start
    assert pc.min(ts).as_py() >= start
    assert pc.max(ts).as_py() < start + dt.timedelta(days=small_cfg.days)
    assert (np.diff(ts.to_numpy().astype(np.int64)) >= 0).all()  # streamed in time order
    assert pc.all(pc.equal(pc.cast(ts, pa.date32()), small_impressions["dt"])).as_py()
    assert len(pc.unique(small_impressions["dt"])) == small_cfg.days


def test_batches_respect_the_row_bound(small_world: World, small_cfg: WorldConfig) -> None:
    bound = small_cfg.batch_page_views * small_cfg.items_per_page
    assert all(b.num_rows <= bound for b in small_world.impression_batches())


def test_items_updated_before_the_window(small_world: World, small_cfg: WorldConfig) -> None:
    assert pc.max(small_world.items["updated_at"]).as_py() < small_cfg.start


def test_images_are_png_of_the_configured_size(small_world: World, small_cfg: WorldConfig) -> None:
    for png in small_world.items["image"].to_pylist():
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG"
        assert image.mode == "RGB"
        assert image.size == (small_cfg.image_size, small_cfg.image_size)
    # Not blank: every image has an object on a background.
    first = np.asarray(Image.open(io.BytesIO(small_world.items["image"][0].as_py())))
    assert first.reshape(-1, 3).std(axis=0).max() > 10


def test_user_preferences_shape(small_world: World, small_cfg: WorldConfig) -> None:
    prefs = small_world.user_preferences
    liked = prefs["liked_styles"].to_pylist()
    assert all(len(set(s)) == len(s) == small_cfg.styles_per_user for s in liked)
    cats = set(small_world.items["category"].to_pylist())
    liked_cats = prefs["liked_categories"].to_pylist()
    assert all(
        len(set(c)) == len(c) == small_cfg.categories_per_user and set(c) <= cats
        for c in liked_cats
    )
