"""The click model: CTR level, and style driving clicks beyond category (trap 3)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

from courier.world import World, WorldConfig, generate_world
from courier.world.stats import click_stats


def _stats(world: World, impressions: pa.Table):
    return click_stats(world.item_styles, world.user_preferences, [impressions])


def test_ctr_is_realistic(small_world: World, small_impressions: pa.Table) -> None:
    assert 0.05 <= _stats(small_world, small_impressions).ctr <= 0.15


def test_liked_styles_clicked_far_more_within_every_category(
    small_world: World, small_impressions: pa.Table, small_cfg: WorldConfig
) -> None:
    stats = _stats(small_world, small_impressions)
    assert len(stats.ratio_by_category) == small_cfg.n_categories
    for category, ratio in stats.ratio_by_category.items():
        assert ratio >= 2.0, category
    assert 3.5 <= stats.liked_ratio <= 7.0


def test_share_of_clicks_on_liked_styles(small_world: World, small_impressions: pa.Table) -> None:
    assert 0.42 <= _stats(small_world, small_impressions).liked_click_share <= 0.65


def test_style_effect_is_the_knob(small_cfg: WorldConfig) -> None:
    # Without b_style the same world shows no preference for liked styles.
    flat = generate_world(dataclasses.replace(small_cfg, b_style=0.0, image_size=32))
    stats = _stats(flat, flat.impressions())
    assert 0.8 <= stats.liked_ratio <= 1.25


def test_histories_accumulate(small_impressions: pa.Table, small_cfg: WorldConfig) -> None:
    # COURIER needs clicks before a page view: most page views must have some.
    k = small_cfg.items_per_page
    users = small_impressions["user_id"].to_numpy().reshape(-1, k)[:, 0]
    clicks = small_impressions["clicked"].to_numpy().reshape(-1, k).sum(axis=1)
    seen: dict[int, int] = {}
    with_history = 0
    for user, n_clicks in zip(
        users.tolist(), clicks.tolist(), strict=True
    ):  # rows are in time order
        with_history += seen.get(user, 0) > 0
        seen[user] = seen.get(user, 0) + n_clicks
    assert with_history / len(users) >= 0.7
    # Activity is skewed: heavy users see many times the median user's pages.
    per_user = np.bincount(np.unique(users, return_inverse=True)[1])
    assert per_user.max() >= 4 * np.median(per_user)


def test_queries_follow_category_preferences(
    small_world: World, small_impressions: pa.Table, small_cfg: WorldConfig
) -> None:
    k = small_cfg.items_per_page
    liked = dict(
        zip(
            small_world.user_preferences["user_id"].to_pylist(),
            small_world.user_preferences["liked_categories"].to_pylist(),
            strict=True,
        )
    )
    users = small_impressions["user_id"].to_pylist()[::k]
    queries = small_impressions["query"].to_pylist()[::k]
    share = np.mean([q in liked[u] for u, q in zip(users, queries, strict=True)])
    # category_focus plus the chance that a random query hits a liked category.
    focus = small_cfg.category_focus
    expected = focus + (1 - focus) * small_cfg.categories_per_user / small_cfg.n_categories
    assert abs(share - expected) < 0.03
