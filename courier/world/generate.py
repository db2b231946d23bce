"""Entry point: build a synthetic shop world from a :class:`WorldConfig`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from courier.config.world import N_STYLES, WorldConfig
from courier.world import schema
from courier.world.behaviour import (
    BatchSpec,
    Catalogue,
    Users,
    draw_users,
    make_batch,
    plan_batches,
)
from courier.world.render import draw_looks, render_pngs
from courier.world.rng import STREAM_ITEMS, stream_rng
from courier.world.shapes import category_names
from courier.world.styles import STYLES

_ITEM_ID_BASE = 100_000
_US_PER_DAY = 86_400_000_000

# Title words are drawn independently of style; none may name a colour or pattern.
TITLE_ADJECTIVES: tuple[str, ...] = (
    "classic",
    "everyday",
    "premium",
    "essential",
    "modern",
    "vintage",
    "urban",
    "cosy",
    "sport",
    "travel",
    "studio",
    "weekend",
    "signature",
    "compact",
    "heritage",
)
TITLE_NOUNS: dict[str, str] = {
    "tops": "tee",
    "bags": "tote",
    "shoes": "boot",
    "bottles": "bottle",
    "lamps": "lamp",
    "hats": "hat",
    "mugs": "mug",
    "chairs": "chair",
    "vases": "vase",
    "clocks": "clock",
}


@dataclass
class World:
    """The generated shop: item tables in memory, impressions streamed in batches.

    ``items`` is raw_items; ``item_styles`` and ``user_preferences`` are the
    ground truth (eval_item_styles, eval_user_preferences) that training must
    never read.
    """

    items: pa.Table
    item_styles: pa.Table
    user_preferences: pa.Table
    config: WorldConfig
    catalogue: Catalogue = field(repr=False)
    users: Users = field(repr=False)

    def batch_specs(self) -> list[BatchSpec]:
        """The impression batches, in time order (each a slice of one day)."""
        return plan_batches(self.config)

    def impression_batch(self, index: int) -> pa.Table:
        """raw_impressions rows of one batch; independent of every other batch."""
        spec = self.batch_specs()[index]
        return make_batch(
            self.config, self.catalogue, self.users, category_names(self.config.n_categories), spec
        )

    def impression_batches(self) -> Iterator[pa.Table]:
        """raw_impressions in time order,
        at most ``batch_page_views * items_per_page`` rows each."""
        names = category_names(self.config.n_categories)
        for spec in plan_batches(self.config):
            yield make_batch(self.config, self.catalogue, self.users, names, spec)

    def impressions(self) -> pa.Table:
        """All impressions in one table: for small worlds (tests, demos) only."""
        return pa.concat_tables(self.impression_batches())


def generate_world(cfg: WorldConfig) -> World:
    """Draw items, their images and users; impressions are generated lazily."""
    names = category_names(cfg.n_categories)
    rng = stream_rng(cfg.seed, STREAM_ITEMS)
    n = cfg.n_items
    item_id, category, style, log_pop = _draw_item_traits(cfg, rng)
    titles = _titles(rng, names, category)
    updated_at = _updated_at(cfg, rng, n)
    looks = draw_looks(cfg, category, style, rng)

    images = render_pngs(cfg, looks)
    items = pa.Table.from_arrays(
        [
            pa.array(item_id, pa.int64()),
            pa.array(names, pa.string()).take(pa.array(category)),
            pa.array(titles, pa.string()),
            pa.array(images, pa.binary()),
            pa.array(updated_at, pa.timestamp("us")),
        ],
        schema=schema.RAW_ITEMS,
    )
    users = draw_users(cfg)
    return World(
        items=items,
        item_styles=_item_styles_table(item_id, names, category, style),
        user_preferences=_user_preferences_table(users, names),
        config=cfg,
        catalogue=Catalogue.build(item_id, category, style, log_pop, cfg.n_categories),
        users=users,
    )


def draw_catalogue(cfg: WorldConfig) -> Catalogue:
    """The items' ids, categories, styles and popularity
    of ``generate_world(cfg)``, without images."""
    return Catalogue.build(
        *_draw_item_traits(cfg, stream_rng(cfg.seed, STREAM_ITEMS)), cfg.n_categories
    )


def _draw_item_traits(
    cfg: WorldConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(item_id, category, style, log popularity): the first draws of the item stream."""
    n = cfg.n_items
    item_id = _ITEM_ID_BASE + np.arange(n, dtype=np.int64)
    category = _balanced(rng, n, cfg.n_categories)
    style = _balanced_within(rng, category, cfg.n_categories, N_STYLES)
    log_pop = rng.normal(0.0, cfg.popularity_sigma, n)
    return item_id, category, style, log_pop


def _balanced(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Values 0..k-1 as evenly as possible, in random order."""
    return rng.permutation(np.arange(n) % k)


def _balanced_within(
    rng: np.random.Generator, group: np.ndarray, n_groups: int, k: int
) -> np.ndarray:
    """Values 0..k-1 balanced inside each group, so every category has every style."""
    out = np.empty(len(group), dtype=np.int64)
    for g in range(n_groups):
        rows = np.flatnonzero(group == g)
        # A random offset stops small groups from all favouring the low style ids.
        out[rows] = rng.permutation((np.arange(len(rows)) + rng.integers(k)) % k)
    return out


def _titles(rng: np.random.Generator, names: list[str], category: np.ndarray) -> list[str]:
    adjective = rng.integers(0, len(TITLE_ADJECTIVES), len(category))
    serial = rng.integers(100, 10_000, len(category))
    return [
        f"{TITLE_ADJECTIVES[a].capitalize()} {TITLE_NOUNS[names[c]]} no. {s}"
        for a, c, s in zip(adjective.tolist(), category.tolist(), serial.tolist(), strict=True)
    ]


def _updated_at(cfg: WorldConfig, rng: np.random.Generator, n: int) -> np.ndarray:
    start = np.datetime64(cfg.start, "us")
    age_s = rng.integers(1, max(2, cfg.item_age_days * 86_400), n)
    return start - age_s.astype("timedelta64[s]").astype("timedelta64[us]")


def _item_styles_table(
    item_id: np.ndarray, names: list[str], category: np.ndarray, style: np.ndarray
) -> pa.Table:
    rows = [STYLES[s] for s in style.tolist()]
    return pa.Table.from_arrays(
        [
            pa.array(item_id, pa.int64()),
            pa.array(names, pa.string()).take(pa.array(category)),
            pa.array(style.astype(np.int32), pa.int32()),
            pa.array([r.palette for r in rows], pa.string()),
            pa.array([r.upper_colour for r in rows], pa.string()),
            pa.array([r.lower_colour for r in rows], pa.string()),
            pa.array([r.pattern for r in rows], pa.string()),
        ],
        schema=schema.EVAL_ITEM_STYLES,
    )


def _user_preferences_table(users: Users, names: list[str]) -> pa.Table:
    n, k = users.liked_styles.shape
    m = users.liked_categories.shape[1]
    liked_styles = pa.ListArray.from_arrays(
        pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)),
        pa.array(users.liked_styles.ravel().astype(np.int32), pa.int32()),
    )
    liked_categories = pa.ListArray.from_arrays(
        pa.array(np.arange(0, n * m + 1, m, dtype=np.int32)),
        pa.array(names, pa.string()).take(pa.array(users.liked_categories.ravel())),
    )
    return pa.Table.from_arrays(
        [pa.array(users.user_id, pa.int64()), liked_styles, liked_categories],
        schema=schema.EVAL_USER_PREFERENCES,
    )
