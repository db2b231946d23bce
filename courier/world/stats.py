"""Click statistics of a world, from its tables only (streamed, any size).

Used by the tests and the benchmark to check the world does what the docs
claim: the CTR level and how strongly the hidden style drives clicks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from courier.config.world import N_STYLES


@dataclass(frozen=True)
class ClickStats:
    """Aggregates over all impressions."""

    impressions: int
    clicks: int
    ctr: float
    liked_ctr: float
    other_ctr: float
    liked_ratio: float  # liked_ctr / other_ctr
    liked_click_share: float  # share of clicks on a liked style
    ratio_by_category: dict[str, float]
    page_views_per_user: dict[str, float]  # min / median / max over users with any


class _Lookup:
    """item_id -> (style, category) and user_id -> liked-style row, via sorted ids."""

    def __init__(self, item_styles: pa.Table, user_preferences: pa.Table) -> None:
        ids = item_styles["item_id"].to_numpy()
        order = np.argsort(ids)
        self.item_ids = ids[order]
        self.item_style = item_styles["style_id"].to_numpy()[order]
        cats = item_styles["category"].to_numpy(zero_copy_only=False)[order]
        self.categories, self.item_cat = np.unique(cats, return_inverse=True)
        uids = user_preferences["user_id"].to_numpy()
        uorder = np.argsort(uids)
        self.user_ids = uids[uorder]
        liked = user_preferences["liked_styles"].to_pylist()
        likes = np.zeros((len(uids), N_STYLES), dtype=bool)
        for row, styles in enumerate(liked):
            likes[row, styles] = True
        self.likes = likes[uorder]

    def annotate(self, batch: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """Per impression: whether the user likes the item's style, and its category."""
        item_row = np.searchsorted(self.item_ids, batch["item_id"].to_numpy())
        user_row = np.searchsorted(self.user_ids, batch["user_id"].to_numpy())
        liked = self.likes[user_row, self.item_style[item_row]]
        return liked, self.item_cat[item_row]


def click_stats(
    item_styles: pa.Table, user_preferences: pa.Table, batches: Iterable[pa.Table]
) -> ClickStats:
    """Stream impression batches and aggregate click rates by liked/other style."""
    lookup = _Lookup(item_styles, user_preferences)
    n_cat = len(lookup.categories)
    # [category, liked] -> impressions, clicks
    shown = np.zeros((n_cat, 2), dtype=np.int64)
    clicked = np.zeros((n_cat, 2), dtype=np.int64)
    pv_per_user = np.zeros(len(lookup.user_ids), dtype=np.int64)
    for batch in batches:
        liked, cat = lookup.annotate(batch)
        click = batch["clicked"].to_numpy().astype(bool)
        np.add.at(shown, (cat, liked.astype(np.int64)), 1)
        np.add.at(clicked, (cat[click], liked[click].astype(np.int64)), 1)
        first = batch["position"].to_numpy() == 0
        users = np.searchsorted(lookup.user_ids, batch["user_id"].to_numpy()[first])
        pv_per_user += np.bincount(users, minlength=len(pv_per_user))

    rate = clicked / np.maximum(shown, 1)
    liked_ctr = clicked[:, 1].sum() / max(shown[:, 1].sum(), 1)
    other_ctr = clicked[:, 0].sum() / max(shown[:, 0].sum(), 1)
    active = pv_per_user[pv_per_user > 0]
    return ClickStats(
        impressions=int(shown.sum()),
        clicks=int(clicked.sum()),
        ctr=float(clicked.sum() / max(shown.sum(), 1)),
        liked_ctr=float(liked_ctr),
        other_ctr=float(other_ctr),
        liked_ratio=float(liked_ctr / max(other_ctr, 1e-12)),
        liked_click_share=float(clicked[:, 1].sum() / max(clicked.sum(), 1)),
        ratio_by_category={
            str(c): float(rate[i, 1] / max(rate[i, 0], 1e-12))
            for i, c in enumerate(lookup.categories)
        },
        page_views_per_user={
            "min": float(active.min()) if len(active) else 0.0,
            "median": float(np.median(active)) if len(active) else 0.0,
            "max": float(active.max()) if len(active) else 0.0,
        },
    )
