"""Users, the non-visual ranker and the click model, vectorised with numpy.

Impressions are produced in independent batches: each batch has its own
random stream keyed by its index, so any batch can be regenerated alone (a
retry, or a Spark task per batch) and the output never depends on how many
batches were consumed before it.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from courier.config.world import N_STYLES, WorldConfig
from courier.world import schema
from courier.world.rng import STREAM_IMPRESSIONS, STREAM_USERS, stream_rng

_US_PER_DAY = 86_400_000_000
_EPOCH = _dt.datetime(1970, 1, 1)
_USER_ID_BASE = 1_000_000
# Candidate draws per shown item; enough that a page almost never runs short
# of distinct items (short pages fall back to an exact draw).
_CANDIDATES_PER_SLOT = 4


@dataclass(frozen=True)
class Catalogue:
    """What the ranker and the click model know about items (arrays by item row)."""

    item_id: np.ndarray  # int64
    category: np.ndarray  # int64 category index
    style: np.ndarray  # int64 style index
    pop_z: np.ndarray  # standardised log popularity
    by_category: np.ndarray  # item rows grouped by category
    offsets: np.ndarray  # by_category[offsets[c]:offsets[c+1]] are category c
    cum_weight: np.ndarray  # cumulative popularity along by_category

    @classmethod
    def build(
        cls,
        item_id: np.ndarray,
        category: np.ndarray,
        style: np.ndarray,
        log_pop: np.ndarray,
        n_categories: int,
    ) -> Catalogue:
        """Index items by category for popularity-proportional sampling."""
        by_category = np.argsort(category, kind="stable")
        offsets = np.searchsorted(category[by_category], np.arange(n_categories + 1))
        pop_z = (log_pop - log_pop.mean()) / max(float(log_pop.std()), 1e-9)
        return cls(
            item_id,
            category,
            style,
            pop_z,
            by_category,
            offsets,
            np.cumsum(np.exp(log_pop[by_category])),
        )


@dataclass(frozen=True)
class Users:
    """Hidden user traits (arrays by user row)."""

    user_id: np.ndarray  # int64
    liked_styles: np.ndarray  # (n_users, styles_per_user) style indices
    liked_categories: np.ndarray  # (n_users, categories_per_user) category indices
    likes: np.ndarray  # (n_users, N_STYLES) bool
    cum_activity: np.ndarray  # cumulative activity weights, for drawing users
    bias: np.ndarray  # per-user click propensity (logit offset)


def draw_users(cfg: WorldConfig) -> Users:
    """Draw user preferences, activity and click propensity."""
    rng = stream_rng(cfg.seed, STREAM_USERS)
    n = cfg.n_users
    liked_styles = _distinct_choices(rng, n, N_STYLES, cfg.styles_per_user)
    liked_categories = _distinct_choices(rng, n, cfg.n_categories, cfg.categories_per_user)
    likes = np.zeros((n, N_STYLES), dtype=bool)
    np.put_along_axis(likes, liked_styles, True, axis=1)
    activity = rng.lognormal(0.0, cfg.user_activity_sigma, n)
    return Users(
        user_id=_USER_ID_BASE + np.arange(n, dtype=np.int64),
        liked_styles=liked_styles,
        liked_categories=liked_categories,
        likes=likes,
        cum_activity=np.cumsum(activity),
        bias=rng.normal(0.0, cfg.user_bias_sd, n),
    )


def _distinct_choices(rng: np.random.Generator, rows: int, n: int, k: int) -> np.ndarray:
    """``k`` distinct values of ``range(n)`` per row, sorted within the row."""
    return np.sort(np.argsort(rng.random((rows, n)), axis=1)[:, :k], axis=1)


@dataclass(frozen=True)
class BatchSpec:
    """One impression batch: a contiguous time slice of one day."""

    index: int
    day: int
    n_page_views: int
    first_page_view: int  # global page-view number of the batch's first page view
    start_us: int  # slice bounds, microseconds since the epoch
    end_us: int


def plan_batches(cfg: WorldConfig) -> list[BatchSpec]:
    """Split the page views evenly over days, and each day into bounded slices."""
    epoch_us = int((cfg.start - _EPOCH).total_seconds()) * 1_000_000
    per_day = np.full(cfg.days, cfg.n_page_views // cfg.days)
    per_day[: cfg.n_page_views % cfg.days] += 1
    specs: list[BatchSpec] = []
    first = 0
    for day, n_day in enumerate(per_day.tolist()):
        n_slices = max(1, -(-n_day // cfg.batch_page_views))
        sizes = np.full(n_slices, n_day // n_slices)
        sizes[: n_day % n_slices] += 1
        day_start = epoch_us + day * _US_PER_DAY
        for s, n_pv in enumerate(sizes.tolist()):
            if n_pv == 0:
                continue
            specs.append(
                BatchSpec(
                    index=len(specs),
                    day=day,
                    n_page_views=n_pv,
                    first_page_view=first,
                    start_us=day_start + s * _US_PER_DAY // n_slices,
                    end_us=day_start + (s + 1) * _US_PER_DAY // n_slices,
                )
            )
            first += n_pv
    return specs


@dataclass(frozen=True)
class PageViews:
    """The page views of one batch as arrays: n page views of k items, rank order."""

    user: np.ndarray  # (n,) user rows
    ts: np.ndarray  # (n,) event time, microseconds since the epoch, ascending
    query: np.ndarray  # (n,) category index
    shown: np.ndarray  # (n, k) item rows
    clicked: np.ndarray  # (n, k) bool


def draw_page_views(
    cfg: WorldConfig, catalogue: Catalogue, users: Users, spec: BatchSpec
) -> PageViews:
    """The page views of one batch and their clicks (the click model of WorldConfig)."""
    rng = stream_rng(cfg.seed, STREAM_IMPRESSIONS, spec.index)
    n, k = spec.n_page_views, cfg.items_per_page

    user = np.searchsorted(users.cum_activity, rng.random(n) * users.cum_activity[-1], side="right")
    user = np.minimum(user, len(users.user_id) - 1)
    ts = np.sort(rng.integers(spec.start_us, spec.end_us, n))
    query = _draw_queries(cfg, users, user, rng)
    shown = _rank_pages(catalogue, query, k, rng)  # (n, k) item rows, rank order

    position = np.broadcast_to(np.arange(k), (n, k))
    logit = (
        cfg.click_bias
        + cfg.b_style * users.likes[user[:, None], catalogue.style[shown]]
        + cfg.b_pop * catalogue.pop_z[shown]
        + cfg.b_position * position
        + users.bias[user][:, None]
        + rng.normal(0.0, cfg.click_noise_sd, (n, k))
    )
    clicked = rng.random((n, k)) < 1.0 / (1.0 + np.exp(-logit))
    return PageViews(user, ts, query, shown, clicked)


def make_batch(
    cfg: WorldConfig, catalogue: Catalogue, users: Users, category_names: list[str], spec: BatchSpec
) -> pa.Table:
    """Generate the raw_impressions rows of one batch, ordered by time then position."""
    pv = draw_page_views(cfg, catalogue, users, spec)
    return _to_table(
        catalogue, users, category_names, spec, pv.user, pv.ts, pv.query, pv.shown, pv.clicked
    )


def _draw_queries(
    cfg: WorldConfig, users: Users, user: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Category each page view queries: mostly one the user prefers."""
    n = len(user)
    pick = rng.integers(0, cfg.categories_per_user, n)
    preferred = users.liked_categories[user, pick]
    anything = rng.integers(0, cfg.n_categories, n)
    return np.where(rng.random(n) < cfg.category_focus, preferred, anything)


def _rank_pages(
    catalogue: Catalogue, query: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """Pick k distinct items of the queried category per page, by popularity + noise.

    Drawing with replacement proportionally to popularity and keeping the
    first k distinct draws is sequential sampling without replacement (a
    Plackett-Luce ranking), so the draw order is the rank on the page.
    """
    n = len(query)
    m = k * _CANDIDATES_PER_SLOT
    lo, hi = catalogue.offsets[query], catalogue.offsets[query + 1]
    w_lo = np.where(lo > 0, catalogue.cum_weight[np.maximum(lo - 1, 0)], 0.0)
    w_hi = catalogue.cum_weight[hi - 1]
    target = w_lo[:, None] + rng.random((n, m)) * (w_hi - w_lo)[:, None]
    slot = np.searchsorted(catalogue.cum_weight, target, side="right")
    slot = np.clip(slot, lo[:, None], (hi - 1)[:, None]).astype(np.int64)

    first_seen = _first_occurrences(slot)
    rank = np.cumsum(first_seen, axis=1)
    take = first_seen & (rank <= k)
    full = rank[:, -1] >= k

    out = np.empty((n, k), dtype=np.int64)
    out[full] = slot[full][take[full]].reshape(-1, k)
    short = np.flatnonzero(~full)
    if len(short):
        out[short] = _exact_pages(catalogue, query[short], k, rng)
    return catalogue.by_category[out]


def _first_occurrences(draws: np.ndarray) -> np.ndarray:
    """Boolean mask: True where a value appears for the first time in its row."""
    order = np.argsort(draws, axis=1, kind="stable")
    ordered = np.take_along_axis(draws, order, axis=1)
    repeat = np.zeros_like(draws, dtype=bool)
    repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    first = np.empty_like(repeat)
    np.put_along_axis(first, order, ~repeat, axis=1)
    return first


def _exact_pages(
    catalogue: Catalogue, query: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """Gumbel-top-k over the whole category: the same ranking law, exact but slower."""
    out = np.empty((len(query), k), dtype=np.int64)
    weights = np.diff(np.concatenate([[0.0], catalogue.cum_weight]))
    for c in np.unique(query):
        rows = np.flatnonzero(query == c)
        lo, hi = catalogue.offsets[c], catalogue.offsets[c + 1]
        score = np.log(weights[lo:hi]) + rng.gumbel(size=(len(rows), hi - lo))
        out[rows] = lo + np.argsort(-score, axis=1, kind="stable")[:, :k]
    return out


def _to_table(
    catalogue: Catalogue,
    users: Users,
    category_names: list[str],
    spec: BatchSpec,
    user: np.ndarray,
    ts: np.ndarray,
    query: np.ndarray,
    shown: np.ndarray,
    clicked: np.ndarray,
) -> pa.Table:
    n, k = shown.shape
    per_row = pa.array(np.repeat(np.arange(n), k))
    request_ids = pa.array(np.char.mod("r%011d", spec.first_page_view + np.arange(n)))
    ts_us = np.repeat(ts, k)
    columns = [
        request_ids.take(per_row),
        pa.array(np.repeat(users.user_id[user], k), pa.int64()),
        pa.array(catalogue.item_id[shown].ravel(), pa.int64()),
        pa.array(np.tile(np.arange(k, dtype=np.int32), n), pa.int32()),
        pa.array(category_names, pa.string()).take(pa.array(np.repeat(query, k))),
        pa.array(ts_us, pa.timestamp("us")),
        pa.array(clicked.ravel().astype(np.int32), pa.int32()),
        pa.array((ts_us // _US_PER_DAY).astype(np.int32), pa.date32()),
    ]
    return pa.Table.from_arrays(columns, schema=schema.RAW_IMPRESSIONS)
