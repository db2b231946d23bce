"""Same config, same bytes; batches and threads never change what is drawn."""

from __future__ import annotations

import dataclasses

import pyarrow as pa

from courier.world import World, WorldConfig, generate_world


def test_same_seed_gives_identical_tables(
    small_world: World, small_impressions: pa.Table, small_cfg: WorldConfig
) -> None:
    again = generate_world(small_cfg)
    assert again.items.equals(small_world.items)  # includes the PNG bytes
    assert again.item_styles.equals(small_world.item_styles)
    assert again.user_preferences.equals(small_world.user_preferences)
    assert again.impressions().equals(small_impressions)  # includes row order


def test_different_seed_gives_different_tables(
    small_world: World, small_impressions: pa.Table, small_cfg: WorldConfig
) -> None:
    other = generate_world(dataclasses.replace(small_cfg, seed=small_cfg.seed + 1))
    assert not other.items["image"].equals(small_world.items["image"])
    assert not other.item_styles["style_id"].equals(small_world.item_styles["style_id"])
    assert not other.user_preferences["liked_styles"].equals(
        small_world.user_preferences["liked_styles"]
    )
    assert not other.impressions()["clicked"].equals(small_impressions["clicked"])


def test_each_batch_regenerates_alone(small_world: World) -> None:
    streamed = list(small_world.impression_batches())
    assert len(streamed) == len(small_world.batch_specs()) > 1
    for index in (len(streamed) - 1, 0):  # out of order on purpose
        assert small_world.impression_batch(index).equals(streamed[index])


def test_batch_size_does_not_change_items_or_users(
    small_world: World, small_cfg: WorldConfig
) -> None:
    other = generate_world(
        dataclasses.replace(small_cfg, batch_page_views=small_cfg.batch_page_views * 3)
    )
    assert other.items.equals(small_world.items)
    assert other.user_preferences.equals(small_world.user_preferences)
    assert other.impressions().num_rows == small_cfg.n_page_views * small_cfg.items_per_page


def test_render_threads_do_not_change_images() -> None:
    cfg = WorldConfig(
        n_categories=2,
        n_items=300,
        n_users=5,
        n_page_views=5,
        image_size=32,
        items_per_page=5,
        days=1,
        pixel_noise=0.02,
    )
    one = generate_world(dataclasses.replace(cfg, render_threads=1))
    three = generate_world(dataclasses.replace(cfg, render_threads=3))
    assert one.items.equals(three.items)
