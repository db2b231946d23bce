"""Configuration of the synthetic shop world (section ``world``; courier/world/).

Every field is a plain type (int, float, str) so the config loads from YAML
and accepts command-line overrides without custom parsing.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from courier.checks import require

# Sizes of the world's catalogue, which the checks below need without importing the renderer:
# courier/world/shapes.py and styles.py fail on import when their tables disagree with them.
N_SHAPES = 10  # category silhouettes (courier.world.shapes.SHAPES)
N_STYLES = (
    16  # hidden styles: 4 palettes x 2 colour orders x 2 patterns (courier.world.styles.STYLES)
)


@dataclass(frozen=True)
class WorldConfig:
    """Sizes, click model and image knobs of the synthetic shop.

    Defaults are the "demo" size: a few seconds to generate on 2 cores.
    The benchmark size (10M impressions) is e.g. ``n_items=20000,
    n_users=100000, n_page_views=1000000``.
    """

    seed: int = 7
    n_categories: int = 6
    n_items: int = 3000
    n_users: int = 2000
    n_page_views: int = 40000
    items_per_page: int = 10
    image_size: int = 64
    days: int = 14
    start_date: str = "2026-01-01"
    styles_per_user: int = 3

    # --- users -----------------------------------------------------------
    # Categories a user prefers; queries come from them with prob. category_focus.
    categories_per_user: int = 2
    category_focus: float = 0.8
    # Log-normal spread of per-user activity: a few heavy users, many light ones.
    user_activity_sigma: float = 1.0
    # Per-user click propensity (logit offset), independent of style.
    user_bias_sd: float = 0.3

    # --- items -----------------------------------------------------------
    # Log-normal spread of item popularity; drives both the ranker and clicks.
    popularity_sigma: float = 1.0
    # Items' updated_at is spread over this many days before start_date.
    item_age_days: int = 60

    # --- click model: p = sigmoid(bias + b_style*liked + b_pop*z_pop
    #                              + b_position*position + user_bias + noise)
    click_bias: float = -3.0
    b_style: float = 1.95
    b_pop: float = 0.3
    b_position: float = -0.03
    click_noise_sd: float = 0.5

    # --- images ----------------------------------------------------------
    # Appearance jitter, on top of the colour-order design of the styles, is
    # what keeps a random-init CNN from reading the style off (docs/WORLD.md
    # has the measurements); shrinking it makes the world easier for them.
    hue_jitter: float = 0.05  # fraction of the hue circle, +/-
    saturation_jitter: float = 0.2  # +/- around the palette saturation
    value_jitter: float = 0.2  # +/- around the palette brightness
    lighting_strength: float = 0.3  # max. brightness change across the image
    background_saturation: float = 0.35
    pixel_noise: float = 0.0  # std of per-pixel noise in [0, 1] units (PNGs grow ~2.5x)
    split_jitter: float = 0.06  # +/- of the area fraction of the upper part

    # Threads rendering images; 0 = one per CPU. Output does not depend on it.
    render_threads: int = 0

    # --- streaming -------------------------------------------------------
    # Upper bound of page views per impression batch (rows = this x items_per_page).
    batch_page_views: int = 100_000

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def start(self) -> _dt.datetime:
        """Start of the event window (midnight of ``start_date``)."""
        return _dt.datetime.combine(_dt.date.fromisoformat(self.start_date), _dt.time())

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> WorldConfig:
        """Build from a mapping (e.g. a YAML section); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown WorldConfig keys: {unknown}")
        return cls(**dict(values))


def _validate(cfg: WorldConfig) -> None:
    try:
        _dt.date.fromisoformat(cfg.start_date)
    except ValueError as err:
        raise ValueError(f"start_date must be an ISO date: {err}") from None
    require(1 <= cfg.n_categories <= N_SHAPES, f"n_categories must be in 1..{N_SHAPES}")
    require(32 <= cfg.image_size <= 224, "image_size must be in 32..224")
    require(cfg.items_per_page >= 1, "items_per_page must be >= 1")
    # Every page is full, so every category needs at least one page of items.
    require(
        cfg.n_items // cfg.n_categories >= cfg.items_per_page,
        "n_items // n_categories must be >= items_per_page",
    )
    require(cfg.n_users >= 1 and cfg.n_page_views >= 1, "n_users and n_page_views must be >= 1")
    require(cfg.days >= 1, "days must be >= 1")
    require(
        1 <= cfg.categories_per_user <= cfg.n_categories,
        "categories_per_user must be in 1..n_categories",
    )
    require(0.0 <= cfg.category_focus <= 1.0, "category_focus must be in [0, 1]")
    require(1 <= cfg.styles_per_user <= N_STYLES, f"styles_per_user must be in 1..{N_STYLES}")
    require(cfg.batch_page_views >= 1, "batch_page_views must be >= 1")
    require(cfg.item_age_days >= 1, "item_age_days must be >= 1")
    require(cfg.render_threads >= 0, "render_threads must be >= 0")
    require(
        cfg.popularity_sigma >= 0
        and cfg.user_activity_sigma >= 0
        and cfg.user_bias_sd >= 0
        and cfg.click_noise_sd >= 0
        and cfg.pixel_noise >= 0,
        "spreads must be >= 0",
    )
    require(0.0 <= cfg.split_jitter < 0.5, "split_jitter must be in [0, 0.5)")
