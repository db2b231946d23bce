"""Shared small worlds: generated once per test session to keep the folder fast."""

from __future__ import annotations

import pyarrow as pa
import pytest

from courier.world import World, WorldConfig, generate_world

# Small but with enough impressions (60k) for click statistics to be stable.
SMALL = WorldConfig(
    seed=3,
    n_categories=4,
    n_items=480,
    n_users=300,
    n_page_views=6000,
    image_size=32,
    days=3,
    batch_page_views=700,
)


@pytest.fixture(scope="session")
def small_world() -> World:
    return generate_world(SMALL)


@pytest.fixture(scope="session")
def small_impressions(small_world: World) -> pa.Table:
    return small_world.impressions()


@pytest.fixture(scope="session")
def catalogue_world() -> World:
    """Many items, few impressions: for tests about items and images."""
    return generate_world(
        WorldConfig(seed=11, n_items=3200, n_users=50, n_page_views=50, image_size=32, days=1)
    )


@pytest.fixture(scope="session")
def small_cfg() -> WorldConfig:
    return SMALL
