"""Bad input, fuzzed: broken raw tables through build-samples and ctr-samples.

Each hypothesis example is one small shop (a few dozen items with 16 px images,
a few hundred impressions over six days) into which every kind of fault is
composed at once: nulls, wrong values, broken and hostile images, giant and
non-ASCII strings, duplicate keys, far timestamps, dt disagreeing with event_ts,
page views split across dates. Each run draws 200 examples from a new seed (printed,
with the command that reruns it), 50 in each era; an era's examples are written
side by side into one set of raw tables, each in its own ids (items, users,
request ids: ``Plan.slot``), and both stages run once on them. Each example's
output is then compared with a plain-Python reference of the documented rules
(sql/samples/impressions_checked.sql): every rejected row under its key with its
first reason, every good impression in ctr_samples and its page view in
courier_samples (unless dropped for no_click / no_history, which the reference
computes; negative_keep_rate=1 and l_pv large enough rule out the other drops),
and the stages' own counts equal to the sum of the reference's.

The generator tags the rows it broke, and the reference is checked against the
tags too, so that a reference that accepted everything would fail here.

Wrong-typed *columns* are a separate, cheaper property: the job stops before
writing anything, naming table and column. Images get their own pure-Python fuzz
(hundreds of mutated files through ``prepare_image``, no Spark).
"""

from __future__ import annotations

import datetime as dt
import io
import os
import random
import re
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cache

import pytest
from hypothesis import (
    HealthCheck,
    Phase,
    given,
    seed as hypothesis_seed,
    settings,
    strategies as st,
)
from PIL import Image

from courier.config import CourierConfig
from courier.ctr.samples import build_ctr_samples
from courier.samples.build import SampleBuildResult, build_samples, sample_views, window_params
from courier.samples.images import ImageLimits, prepare_image
from courier.tables import RunRecord, SchemaError
from courier.world.schema import RAW_ITEMS_DDL

DB = "courier_fuzz_test"
TABLES = (
    "raw_items",
    "raw_impressions",
    "item_images",
    "courier_samples",
    "courier_training_rows",
    "ctr_samples",
    "rejects",
    "pipeline_runs",
)
# position and clicked as BIGINT (an accepted type) so that values beyond INT can be written
IMPRESSIONS_DDL = (
    "request_id STRING, user_id BIGINT, item_id BIGINT, position BIGINT, query STRING, "
    "event_ts TIMESTAMP, clicked BIGINT, dt DATE"
)
L_PV, L_CLICK, LOOKBACK = 8, 3, 2
INT_MAX = 2**31 - 1
DAY = dt.timedelta(days=1)

# The first day of each build's two-day range: the start of the calendar (start - lookback
# before 0001-01-01, dates before 1000 and times before 1582, which PySpark binds wrongly),
# an ordinary day, the Unix epoch (history in 1969), the end of the calendar (end + 1 day
# after 9999-12-31).
ERAS = (dt.date(1, 1, 3), dt.date(2026, 3, 1), dt.date(1970, 1, 1), dt.date(9999, 12, 29))
# 200 examples in CI, 50 per era, for the price of one build per era: ~2.7x the time of the
# one example built alone before (2026-12-06, on the loaded 2-core machine: 469 s against 174 s).
# COURIER_FUZZ_EXAMPLES=2000 for a longer hunt. A new seed each run, printed with the command
# that reruns it (COURIER_FUZZ_SEED=N).
FUZZ_EXAMPLES = int(os.environ.get("COURIER_FUZZ_EXAMPLES", "200"))
FUZZ_SEED = int(os.environ.get("COURIER_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
# An example's ids: items slot * 1000 + 1..110 (unknown ones 10**12 + slot * 1000 + 0..99),
# users slot * 10 + 1..6, request ids ending in #slot:page. Items NULL and -1 are in every
# example: their rejects are checked in sum over the examples.
ITEMS_PER_SLOT, USERS_PER_SLOT, UNKNOWN_ITEMS = 1000, 10, 10**12

GIANT_TOKEN = "<100 KB>"  # in the plan (which hypothesis prints), expanded in the world
NASTY_STRINGS = (
    GIANT_TOKEN,
    "🦄 emoji 👩‍👩‍👧‍👦 ZWJ",
    "nul\x00byte",
    "\u202eRTL override\u202c עברית العربية",
    "'; DROP TABLE raw_items; --",
    "${courier.l_click_preceding} :start_dt IDENTIFIER(:raw_items)",
    "NULL",
    "\\N",
    "a/b/c",  # the rejects key's separator
    "",
    " \t\n",
)

# Reasons in the documented order (impressions_checked.sql).
ROW_REASONS = (
    "null_key",
    "invalid_label",
    "invalid_position",
    "future_timestamp",
    "dt_mismatch",
    "unknown_item",
    "item_without_image",
)
# Faults of one row, which leave the rest of its page view good...
ROW_FAULTS = (
    "null_key",
    "undated",
    "null_dt",
    "label",
    "position",
    "future",
    "dt_shift",
    "unknown_item",
    "imageless",
    "duplicate_broken",
)
# ... and faults that may make the whole page view bad (far_ts: the row may land on a date
# of the window, valid, and then disagree with its page).
PAGE_FAULTS = (
    "far_ts",
    "split",
    "split_far",
    "split_edge",
    "inconsistent_user",
    "inconsistent_ts",
    "inconsistent_query",
    "duplicate",
    "duplicate_flipped",
    "giant",
)


# --- the plan: what hypothesis draws ------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    seed: int
    giant: bool  # 100 KB strings (in ~1 example of 10: ~4 MB of them each)
    strings: tuple[str, ...]  # used for ids, queries, categories, titles
    extra_faults: tuple[str, ...]  # faults applied once more, beyond one of each
    null_columns: frozenset[str]
    bad_clicked: int | None
    bad_position: int | None
    dt_shift_days: int
    far_ts: dt.datetime
    garbage: bytes
    truncate_at: float
    era: dt.date = ERAS[0]  # set by draw_plans: the examples take the eras in turn
    slot: int = 0  # set by draw_plans: the example's ids (ITEMS_PER_SLOT)


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    giant = draw(st.sampled_from(range(20))) == 0  # the simplest example: giant
    nasty = NASTY_STRINGS if giant else tuple(s for s in NASTY_STRINGS if s != GIANT_TOKEN)
    return Plan(
        seed=draw(st.integers(0, 2**32 - 1)),
        giant=giant,
        # every nasty string (the simplest example: in order) and a few arbitrary ones
        strings=tuple(draw(st.permutations(nasty)))
        + tuple(draw(st.lists(st.text(max_size=24), max_size=4))),
        extra_faults=tuple(draw(st.lists(st.sampled_from(ROW_FAULTS + PAGE_FAULTS), max_size=8))),
        null_columns=frozenset(
            draw(
                st.sets(
                    st.sampled_from(("request_id", "user_id", "item_id", "event_ts")), min_size=1
                )
            )
        ),
        # the first alternative is the simplest example's: beyond INT, where a cast would fail
        bad_clicked=draw(
            st.one_of(
                st.integers(INT_MAX + 1, 2**63 - 1),
                st.integers(-(2**63), -1),
                st.integers(2, INT_MAX),
                st.none(),
            )
        ),
        bad_position=draw(
            st.one_of(st.integers(INT_MAX + 1, 2**63 - 1), st.integers(-(2**63), -1), st.none())
        ),
        dt_shift_days=draw(st.sampled_from((1, -1, 2, -3, 400, -400))),
        far_ts=draw(
            st.sampled_from(
                (
                    dt.datetime(1, 1, 1),
                    dt.datetime(1969, 12, 31, 23, 59, 59, 999999),
                    dt.datetime(1970, 1, 1),
                    dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
                )
            )
        ),
        garbage=draw(st.binary(max_size=64)),
        truncate_at=draw(st.floats(0.02, 0.5)),
    )


@cache
def draw_plans(n: int, seed: int) -> tuple[Plan, ...]:
    """``n`` examples of ``plans()``, the same for the same seed:
    example k in era ERAS[k % 4], slot k.

    Drawn by hypothesis's own generator (its first example is the simplest), ~40 ms each.
    """
    drawn: list[Plan] = []

    @hypothesis_seed(seed)
    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        phases=(Phase.generate,),
        suppress_health_check=list(HealthCheck),
    )
    @given(plan=plans())
    def collect(plan: Plan) -> None:
        drawn.append(plan)

    collect()
    assert len(drawn) == n, f"hypothesis drew {len(drawn)} examples, not {n}"
    return tuple(replace(plan, era=ERAS[k % len(ERAS)], slot=k) for k, plan in enumerate(drawn))


# --- images -------------------------------------------------------------------------------------


def _encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def _noise(rng: random.Random, width: int, height: int, fmt: str = "PNG") -> bytes:
    return _encode(Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3)), fmt)


@cache
def _solid(width: int, height: int, mode: str = "RGB") -> bytes:
    return _encode(Image.new(mode, (width, height)))


MAX_PIXELS = 250 * 250
MAX_BYTES = 60_000


@dataclass
class Item:
    item_id: int | None
    category: str | None
    title: str | None
    image: bytes | None
    updated_at: dt.datetime | None
    reason: str | None = None  # expected item_images reject reason


@dataclass
class Row:
    request_id: str | None
    user_id: int | None
    item_id: int | None
    position: int | None
    query: str | None
    event_ts: dt.datetime | None
    clicked: int | None
    dt: dt.date | None
    fault: str | None = None  # what the generator broke in this row, or on its page (page:<fault>)

    def values(self) -> tuple:
        return (
            self.request_id,
            self.user_id,
            self.item_id,
            self.position,
            self.query,
            self.event_ts,
            self.clicked,
            self.dt,
        )

    @property
    def key(self) -> str:
        return (
            f"{'NULL' if self.request_id is None else self.request_id}/"
            f"{'NULL' if self.item_id is None else self.item_id}"
        )


@dataclass
class World:
    plan: Plan
    start: dt.date
    end: dt.date
    max_event_ts: dt.datetime
    items: list[Item]
    rows: list[Row] = field(default_factory=list)

    @property
    def history_start(self) -> dt.date:
        return _add_days(self.start, -LOOKBACK)


def _add_days(day: dt.date, n: int) -> dt.date:
    """``day`` + ``n`` days, stopping at the ends of Python's calendar."""
    ordinal = min(max(day.toordinal() + n, 1), dt.date.max.toordinal())
    return dt.date.fromordinal(ordinal)


def _at(day: dt.date, seconds: float) -> dt.datetime:
    return dt.datetime.combine(day, dt.time()) + dt.timedelta(seconds=seconds)


def _strings(plan: Plan) -> tuple[str, ...]:
    return tuple("x" * 100_000 if s == GIANT_TOKEN else s for s in plan.strings)


def _item(plan: Plan, i: int) -> int:
    """Item ``i`` (1..110) of the example: its own ids, disjoint from the other examples'."""
    return plan.slot * ITEMS_PER_SLOT + i


def _user(plan: Plan, u: int) -> int:
    """User ``u`` (1..6) of the example."""
    return plan.slot * USERS_PER_SLOT + u


def _request_id(plan: Plan, prefix: str, page: int) -> str:
    return f"{prefix}#{plan.slot}:{page}"


SLOT_SUFFIX = re.compile(r"#(\d+):\d+\Z")  # of a request id made by _request_id


def item_slot(key: str) -> int | None:
    """The example of an item rejects key (its item_id); None for the items every example has."""
    if key in ("NULL", "-1"):
        return None
    item = int(key)
    return (item - UNKNOWN_ITEMS if item >= UNKNOWN_ITEMS else item) // ITEMS_PER_SLOT


def request_slot(request_id: str) -> int | None:
    """The example of a request id (None: not one of _request_id's, such as NULL)."""
    found = SLOT_SUFFIX.search(request_id)
    return int(found[1]) if found else None


def impression_slot(key: str) -> int | None:
    """The example of an impression rejects key
    (``request_id/item_id``); None when both are shared."""
    request_id, item = key.rsplit("/", 1)
    slot = request_slot(request_id)
    return item_slot(item) if slot is None else slot


def make_items(plan: Plan, rng: random.Random) -> tuple[list[Item], list[int], list[int]]:
    """(items rows, ids of good items, ids of items left without an image)."""
    when = dt.datetime(2020, 5, 1)
    good_ids = [_item(plan, i) for i in range(1, 25)]
    strings = _strings(plan)
    items = [
        Item(
            i,
            rng.choice(("tops", "bags", "shoes", *strings)),
            rng.choice((*strings, "t")),
            _noise(rng, 16, 16),
            when + dt.timedelta(minutes=i),
        )
        for i in good_ids
    ]
    items[0].updated_at = None  # accepted: NULL updated_at
    items[1].category = None  # accepted: NULL category
    items[2].image = _solid(250, 250)  # exactly samples.max_image_pixels
    items[3].image = _solid(1, MAX_PIXELS - 10)  # a 1-pixel strip: crop, then resize
    items[4].image = _noise(rng, 16, 16, "JPEG")
    items[5].image = _noise(rng, 16, 16, "GIF")
    # An older copy of a good item, different in everything: rejected, the latest kept.
    older = Item(
        _item(plan, 7),
        "older category",
        "older",
        _noise(rng, 16, 16),
        when - dt.timedelta(days=30),
        "duplicate_key",
    )
    truncated_png = _noise(rng, 16, 16)
    truncated_jpeg = _noise(rng, 32, 32, "JPEG")
    broken = [
        Item(None, "tops", "no id", _noise(rng, 16, 16), when, "null_key"),
        Item(-1, "tops", "padding id", _noise(rng, 16, 16), when, "reserved_item_id"),
        Item(_item(plan, 101), "tops", "empty", b"", when, "empty_image"),
        Item(_item(plan, 102), "tops", "null", None, when, "empty_image"),
        Item(
            _item(plan, 103),
            "tops",
            "garbage",
            b"not an image:" + plan.garbage,
            when,
            "undecodable_image",
        ),
        Item(
            _item(plan, 104),
            "tops",
            "png header",
            b"\x89PNG\r\n\x1a\n" + plan.garbage,
            when,
            "undecodable_image",
        ),
        Item(
            _item(plan, 105),
            "tops",
            "truncated png",
            truncated_png[: max(1, int(len(truncated_png) * plan.truncate_at))],
            when,
            "undecodable_image",
        ),
        Item(
            _item(plan, 106),
            "tops",
            "truncated jpeg",
            truncated_jpeg[: max(1, int(len(truncated_jpeg) * plan.truncate_at))],
            when,
            "undecodable_image",
        ),
        Item(
            _item(plan, 107),
            "tops",
            "too many bytes",
            _noise(rng, 150, 150),
            when,
            "image_too_large",
        ),
        Item(
            _item(plan, 108), "tops", "too many pixels", _solid(251, 250), when, "image_too_large"
        ),
        Item(_item(plan, 109), "tops", "bomb", _solid(9000, 9000, "1"), when, "image_too_large"),
        # the latest copy broken, an older one fine: the item has no image
        Item(
            _item(plan, 110),
            "tops",
            "latest broken",
            b"\xff\xd8\xff" + plan.garbage,
            when,
            "undecodable_image",
        ),
        Item(
            _item(plan, 110), "tops", "older fine", _noise(rng, 16, 16), when - DAY, "duplicate_key"
        ),
    ]
    imageless = [
        it.item_id for it in broken if it.item_id is not None and it.reason != "duplicate_key"
    ]
    return [*items, older, *broken], good_ids, imageless


def make_world(plan: Plan) -> World:
    rng = random.Random(plan.seed)
    start = plan.era
    end = _add_days(start, 1)
    last_day = _add_days(start, 2)
    items, good_ids, imageless = make_items(plan, rng)
    # Events of the last day end by 20:00 (split page views excepted), so this is after them all.
    world = World(plan, start, end, _at(last_day, 22 * 3600 + 0.5), items)
    days = sorted({_add_days(start, k) for k in range(-3, 3)})
    strings = _strings(plan)
    pages: list[list[Row]] = []
    for day in days:
        for _ in range(rng.randint(16, 20) if start <= day <= end else rng.randint(5, 8)):
            # a few instants per day: page views of one user at the same instant are common
            ts = _at(day, rng.choice((1, 5, 9, 13, 17)) * 3600 + rng.choice((0, 30)))
            user = _user(plan, rng.randint(1, 6))
            query = rng.choice(("shoes", "bags", *strings))
            request_id = _request_id(plan, rng.choice(("pv", "pv", "pv", *strings)), len(pages))
            shown = rng.sample(good_ids, rng.randint(2, 5))
            pages.append(
                [
                    Row(request_id, user, item, pos, query, ts, int(rng.random() < 0.4), day)
                    for pos, item in enumerate(shown)
                ]
            )
    in_range = [p for p in pages if start <= p[0].dt <= end]
    faults = [f for f in ROW_FAULTS + PAGE_FAULTS + plan.extra_faults if plan.giant or f != "giant"]
    rng.shuffle(faults)
    targets = rng.sample(in_range, len(faults))
    for fault, page in zip(faults, targets, strict=True):
        _break(world, fault, page, rng, imageless)
    world.rows = [row for page in pages for row in page]
    return world


def _break(
    world: World, fault: str, page: list[Row], rng: random.Random, imageless: list[int]
) -> None:
    """Apply ``fault`` to ``page`` (a list of rows,
    changed in place; rows may be added) and tag what it broke."""
    plan = world.plan
    row = rng.choice(page)
    if fault == "duplicate_broken":  # a broken copy of a good row must not cost it its place
        page.append(replace(row, clicked=7, fault=fault))
        return
    if fault in PAGE_FAULTS:
        for r in page:
            r.fault = f"page:{fault}"
    else:
        row.fault = fault
    if fault == "null_key":
        for column in plan.null_columns:
            setattr(row, column, None)
    elif fault == "undated":
        row.dt = row.event_ts = None
    elif fault == "null_dt":
        row.dt = None
    elif fault == "label":
        row.clicked = plan.bad_clicked
    elif fault == "position":
        row.position = plan.bad_position
    elif fault == "future":
        row.event_ts = world.max_event_ts + dt.timedelta(
            microseconds=1 + rng.randint(0, 3_600_000_000)
        )
    elif fault == "dt_shift":
        row.dt = _add_days(row.dt, plan.dt_shift_days)
    elif fault == "far_ts":
        row.event_ts = plan.far_ts
        if rng.random() < 0.5:
            row.dt = plan.far_ts.date()
    elif fault == "unknown_item":
        row.item_id = UNKNOWN_ITEMS + plan.slot * ITEMS_PER_SLOT + rng.randint(0, 99)
    elif fault == "imageless":
        row.item_id = rng.choice(imageless)
    elif fault in ("split", "split_edge"):
        # Straddles midnight: the first rows at 23:59:59.5 of day D, the others just after.
        day = page[0].dt
        # an edge of the window: history_start - 1 | history_start, or end | end + 1
        if fault == "split_edge":
            edges = [world.end] + (
                [world.history_start - DAY] if world.history_start > dt.date.min else []
            )
            day = rng.choice(edges)
        cut = max(1, len(page) // 2)
        for i, r in enumerate(page):
            r.event_ts, r.dt = (
                (_at(day, 86399.5), day) if i < cut else (_at(day + DAY, 0.25), day + DAY)
            )
    elif fault == "split_far":
        # One row's copy again two days earlier (both days in the window).
        earlier = page[0].dt - 2 * DAY
        page.append(replace(row, event_ts=_at(earlier, 3600.0), dt=earlier))
    elif fault == "inconsistent_user":
        row.user_id = _user(plan, (row.user_id - _user(plan, 0)) % 6 + 1)
    elif fault == "inconsistent_ts":
        row.event_ts = row.event_ts + dt.timedelta(seconds=1)
    elif fault == "inconsistent_query":
        row.query = (row.query or "") + "!"
    elif fault == "duplicate":
        page.append(replace(row))
    elif fault == "duplicate_flipped":
        page.append(replace(row, clicked=1 - row.clicked, position=row.position + 7))
    elif fault == "giant":
        giant = "g" * 100_000 + page[0].request_id
        for r in page:
            r.request_id, r.query = giant, "q" * 100_000
        page.append(replace(page[0]))  # and one duplicate: a 100 KB key in rejects


# --- the reference ------------------------------------------------------------------------------


def _item_expectations(world: World) -> tuple[Counter, dict[int, str | None]]:
    """(rejects of item_images as Counter[(key, reason)], category of every item with an image)."""
    rejects = Counter(
        (("NULL" if it.item_id is None else str(it.item_id)), it.reason)
        for it in world.items
        if it.reason
    )
    latest: dict[int, Item] = {}
    for it in world.items:
        if it.item_id is not None and it.reason is None:
            assert it.item_id not in latest
            latest[it.item_id] = it
    return rejects, {i: it.category for i, it in latest.items()}


def _row_reason(r: Row, known: set[int], imaged: set[int], max_ts: dt.datetime) -> str | None:
    if None in (r.request_id, r.user_id, r.item_id, r.event_ts, r.dt):
        return "null_key"
    if r.clicked not in (0, 1):
        return "invalid_label"
    if r.position is None or not 0 <= r.position <= INT_MAX:
        return "invalid_position"
    if r.event_ts > max_ts:
        return "future_timestamp"
    if r.dt != r.event_ts.date():
        return "dt_mismatch"
    if r.item_id not in known:
        return "unknown_item"
    if r.item_id not in imaged or r.item_id == -1:
        return "item_without_image"
    return None


def _effective_date(r: Row) -> dt.date | None:
    return r.dt if r.dt is not None else (r.event_ts.date() if r.event_ts is not None else None)


def _within(day: dt.date | None, lo_ordinal: int, hi_ordinal: int) -> bool:
    return day is not None and lo_ordinal <= day.toordinal() <= hi_ordinal


@dataclass
class Expected:
    reasons: dict[int, str | None]  # id(row) -> reason, for the rows a build returns
    in_scope: list[Row]  # the rows the build of [start, end] reports on


def check_rows(world: World, known: set[int], imaged: set[int]) -> Expected:
    """The documented rules, written plainly: row checks,
    then page checks over the row-valid rows."""
    hs = world.history_start.toordinal()
    lo, hi = hs - 1, world.end.toordinal() + 1  # the page checks read a day more on each side
    read = [
        r
        for r in world.rows
        if _within(_effective_date(r), lo, hi) or (r.dt is None and r.event_ts is None)
    ]
    row_reason = {id(r): _row_reason(r, known, imaged, world.max_event_ts) for r in read}
    pages: dict[str, list[Row]] = {}
    for r in read:
        if row_reason[id(r)] is None:
            pages.setdefault(r.request_id, []).append(r)
    reasons = dict(row_reason)
    for rows in pages.values():
        split = len({r.dt for r in rows}) > 1
        queries = {r.query for r in rows if r.query is not None}
        inconsistent = (
            len({r.user_id for r in rows}) > 1
            or len({r.event_ts for r in rows}) > 1
            or len(queries) > 1
        )
        ordered = sorted(
            rows,
            key=lambda r: (
                r.item_id,
                r.position,
                -r.clicked,
                r.event_ts,
                r.dt,
                r.user_id,
                r.query is not None,
                r.query or "",
            ),
        )
        for i, r in enumerate(ordered):
            duplicate = i > 0 and ordered[i - 1].item_id == r.item_id
            reasons[id(r)] = (
                "split_page_view"
                if split
                else "inconsistent_page_view"
                if inconsistent
                else "duplicate_key"
                if duplicate
                else None
            )
    returned = {
        id(r): reasons[id(r)]
        for r in read
        if _within(_effective_date(r), hs, world.end.toordinal()) or _effective_date(r) is None
    }
    in_scope = [
        r
        for r in read
        if id(r) in returned
        and (_effective_date(r) is None or world.start <= _effective_date(r) <= world.end)
    ]
    return Expected(returned, in_scope)


def expected_rejects(exp: Expected) -> Counter:
    return Counter(
        (r.key, exp.reasons[id(r)], _effective_date(r)) for r in exp.in_scope if exp.reasons[id(r)]
    )


def expected_samples(world: World, exp: Expected) -> tuple[dict[str, dict], dict[str, int]]:
    """(kept samples by request_id, page-view drop counts) of the build of [start, end]."""
    valid = [r for r in world.rows if exp.reasons.get(id(r), "not read") is None]
    pages: dict[str, list[Row]] = {}
    for r in valid:
        pages.setdefault(r.request_id, []).append(r)
    clicks = [r for r in valid if r.clicked == 1]
    kept, drops = {}, Counter()
    for request_id, rows in pages.items():
        first = rows[0]
        if not world.start <= first.dt <= world.end:
            continue
        earlier = sum(
            1 for c in clicks if c.user_id == first.user_id and c.event_ts < first.event_ts
        )
        positives = [
            r.item_id for r in sorted(rows, key=lambda r: (r.position, r.item_id)) if r.clicked == 1
        ]
        negatives = [
            r.item_id for r in sorted(rows, key=lambda r: (r.position, r.item_id)) if r.clicked == 0
        ]
        if not positives:
            drops["no_click"] += 1
        elif not earlier:
            drops["no_history"] += 1
        else:
            shown = (positives + negatives)[:L_PV]
            queries = [r.query for r in rows if r.query is not None]
            kept[request_id] = {
                "pv_item_ids": shown + [-1] * (L_PV - len(shown)),
                "user_id": first.user_id,
                "n_history": min(L_CLICK, earlier),
                "query": max(queries) if queries else None,
                "dt": first.dt,
            }
    return kept, dict(drops)


def expected_ctr(
    world: World, exp: Expected, categories: dict[int, str | None]
) -> dict[tuple[str, int], dict]:
    valid = [r for r in world.rows if exp.reasons.get(id(r), "not read") is None]
    clicks = [r for r in valid if r.clicked == 1]
    return {
        (r.request_id, r.item_id): {
            "label": r.clicked,
            "position": r.position,
            "category": categories[r.item_id],
            "n_history": min(
                L_CLICK,
                sum(1 for c in clicks if c.user_id == r.user_id and c.event_ts < r.event_ts),
            ),
        }
        for r in valid
        if world.start <= r.dt <= world.end
    }


def check_reference_against_tags(exp: Expected) -> None:
    """The reference must reject what the generator broke and keep what it did not."""
    for r in exp.in_scope:
        reason = exp.reasons[id(r)]
        if r.fault is None:
            assert reason is None, (r.key[:80], reason)
        elif not r.fault.startswith("page:"):
            assert reason in ROW_REASONS, (r.key[:80], r.fault, reason)
    faults = {r.fault for r in exp.in_scope}
    assert {"null_key", "label", "position", "future", "unknown_item", "imageless"} <= faults


# --- running it ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_cfg(spark, base_config: CourierConfig) -> CourierConfig:
    spark.sql(f"DROP DATABASE IF EXISTS {DB} CASCADE")
    spark.sql(f"CREATE DATABASE {DB}")
    return base_config.replace(
        [
            f"tables.database={DB}",
            "samples.image_size=16",
            "samples.negative_keep_rate=1.0",
            f"samples.l_pv={L_PV}",
            f"samples.l_click={L_CLICK}",
            f"samples.history_lookback_days={LOOKBACK}",
            f"samples.max_image_bytes={MAX_BYTES}",
            f"samples.max_image_pixels={MAX_PIXELS}",
            "samples.rows_per_row_group=64",
            f"ctr_samples.l_click={L_CLICK}",
            f"ctr_samples.history_lookback_days={LOOKBACK}",
        ]
    )


def write_worlds(spark, cfg: CourierConfig, worlds: list[World]) -> None:
    """The examples' raw tables, side by side, into fresh tables (the stages' outputs dropped)."""
    t = cfg.tables
    for name in TABLES:
        spark.sql(f"DROP TABLE IF EXISTS {t.qualified(name)}")
    spark.createDataFrame(
        [
            (it.item_id, it.category, it.title, it.image, it.updated_at)
            for w in worlds
            for it in w.items
        ],
        RAW_ITEMS_DDL,
    ).write.format("delta").saveAsTable(t.qualified("raw_items"))
    spark.createDataFrame(
        [r.values() for w in worlds for r in w.rows], IMPRESSIONS_DDL
    ).write.format("delta").partitionBy("dt").saveAsTable(t.qualified("raw_impressions"))


@dataclass
class Reference:
    """What the documented rules expect of one example
    (rejects: either stage's, by key, reason and dt)."""

    world: World
    item_rejects: Counter
    categories: dict[int, str | None]
    exp: Expected
    rejects: Counter
    kept: dict[str, dict]
    drops: dict[str, int]
    ctr: dict[tuple[str, int], dict]


def reference(world: World) -> Reference:
    """The reference's expectations of ``world`` alone, checked against the generator's tags."""
    item_rejects, categories = _item_expectations(world)
    known = {it.item_id for it in world.items if it.item_id is not None}
    exp = check_rows(world, known, set(categories))
    check_reference_against_tags(exp)
    kept, drops = expected_samples(world, exp)
    ref = Reference(
        world,
        item_rejects,
        categories,
        exp,
        expected_rejects(exp),
        kept,
        drops,
        expected_ctr(world, exp, categories),
    )
    # the example's keys are its own (or shared by all): its output can be told from the others'
    slot = world.plan.slot
    assert {item_slot(k) for k, _ in item_rejects} | {item_slot(str(i)) for i in categories} <= {
        slot,
        None,
    }
    assert {impression_slot(k) for k, *_ in ref.rejects} <= {slot, None}
    assert {request_slot(r) for r in ref.kept} | {request_slot(r) for r, _ in ref.ctr} <= {slot}
    return ref


def _by_slot(counts: Counter, slot_of: Callable[[str], int | None]) -> dict[int | None, Counter]:
    """``counts`` split by the example (``slot_of(key)``) of each entry's key (its first field)."""
    split: dict[int | None, Counter] = {}
    for entry, n in counts.items():
        split.setdefault(slot_of(entry[0]), Counter())[entry] = n
    return split


def _by_reason(rejects: Counter, prefix: str) -> dict[str, int]:
    counts: Counter = Counter()
    for (_, reason, *_), n in rejects.items():
        counts[f"{prefix}{reason}"] += n
    return dict(counts)


def _short(values: list, limit: int = 6, width: int = 200) -> str:
    """A few of ``values``, each (or each part of a tuple) shortened:
    keys may hold 100 KB strings."""

    def brief(v: object) -> str:
        return repr(v) if len(repr(v)) <= width else repr(v)[:width] + "..."

    shown = [
        f"({', '.join(map(brief, v))})" if isinstance(v, tuple) else brief(v)
        for v in values[:limit]
    ]
    return f"[{', '.join(shown)}{', ...' if len(values) > limit else ''}] ({len(values)})"


def assert_same(got: dict, want: dict, what: str) -> None:
    """``got == want``, or an AssertionError naming the keys missing, unexpected and differing."""
    if got == want:
        return

    def flat(key: object, *values: object) -> tuple:
        return (*key, *values) if isinstance(key, tuple) else (key, *values)

    missing = [k for k in want if k not in got]
    unexpected = [flat(k, got[k]) for k in got if k not in want]
    differing = [flat(k, got[k], want[k]) for k in want if k in got and got[k] != want[k]]
    raise AssertionError(
        f"{what}: missing {_short(missing)}, unexpected {_short(unexpected)}, "
        f"differing (got, want) {_short(differing)}"
    )


@dataclass
class Output:
    """What the stages wrote for one era's examples, by example (slot; None: items NULL and -1)."""

    item_rejects: dict[int | None, Counter]  # (key, reason)
    categories: dict[int | None, dict[int, str | None]]
    image_sizes: set[tuple[int, int]]
    rejects: dict[str, dict[int | None, Counter]]  # stage -> (key, reason, dt)
    samples: dict[int | None, dict[str, dict]]
    ctr: dict[int | None, dict[tuple[str, int], dict]]
    runs: dict[str, dict]  # pipeline_runs: stage -> metrics


SAMPLE_COLUMNS = ("pv_item_ids", "user_id", "n_history", "query", "dt")  # expected_samples' fields


def read_output(spark, cfg: CourierConfig) -> Output:
    """The stages' tables, each row under its example."""
    t = cfg.tables
    rejects: dict[str, Counter] = {
        stage: Counter() for stage in ("item_images", "build_samples", "ctr_samples")
    }
    for r in spark.table(t.qualified("rejects")).select("stage", "key", "reason", "dt").collect():
        rejects[r["stage"]][(r["key"], r["reason"], r["dt"])] += 1
    images = spark.table(t.qualified("item_images")).select("item_id", "category", "jpeg").collect()
    categories: dict[int | None, dict[int, str | None]] = {}
    for r in images:
        categories.setdefault(item_slot(str(r["item_id"])), {})[r["item_id"]] = r["category"]
    samples: dict[int | None, dict[str, dict]] = {}
    for r in (
        spark.table(t.qualified("courier_samples")).select(*SAMPLE_COLUMNS, "request_id").collect()
    ):
        samples.setdefault(request_slot(r["request_id"]), {})[r["request_id"]] = {
            k: r[k] for k in SAMPLE_COLUMNS
        }
    ctr: dict[int | None, dict[tuple[str, int], dict]] = {}
    for r in (
        spark.table(t.qualified("ctr_samples"))
        .selectExpr(
            "request_id",
            "item_id",
            "label",
            "position",
            "category",
            "size(history_item_ids) AS n_history",
        )
        .collect()
    ):
        ctr.setdefault(request_slot(r["request_id"]), {})[(r["request_id"], r["item_id"])] = {
            k: r[k] for k in ("label", "position", "category", "n_history")
        }
    return Output(
        item_rejects=_by_slot(
            Counter({(k, reason): n for (k, reason, _), n in rejects.pop("item_images").items()}),
            item_slot,
        ),
        categories=categories,
        image_sizes={Image.open(io.BytesIO(r["jpeg"])).size for r in images},
        rejects={stage: _by_slot(counts, impression_slot) for stage, counts in rejects.items()},
        samples=samples,
        ctr=ctr,
        runs={
            r["stage"]: r["metrics"] for r in spark.table(t.qualified("pipeline_runs")).collect()
        },
    )


def _own(counts: Counter, slot_of: Callable[[str], int | None], slot: int | None) -> Counter:
    """The entries of ``counts`` whose key belongs to example ``slot`` (None: to every example)."""
    return _by_slot(counts, slot_of).get(slot, Counter())


def check_example(ref: Reference, out: Output) -> None:
    """One example's rows in the stages' output are the reference's."""
    slot = ref.world.plan.slot
    assert_same(
        out.item_rejects.get(slot, Counter()),
        _own(ref.item_rejects, item_slot, slot),
        "item_images rejects",
    )
    assert_same(out.categories.get(slot, {}), ref.categories, "item_images categories")
    for stage in ("build_samples", "ctr_samples"):
        assert_same(
            out.rejects[stage].get(slot, Counter()),
            _own(ref.rejects, impression_slot, slot),
            f"{stage} rejects",
        )
    assert_same(out.samples.get(slot, {}), ref.kept, "courier_samples")
    assert len(ref.kept) >= 5, "too few page views kept for the check to mean much"
    assert_same(out.ctr.get(slot, {}), ref.ctr, "ctr_samples")


def check_totals(
    refs: list[Reference], out: Output, result: SampleBuildResult, record: RunRecord
) -> None:
    """The keys every example shares, and the stages' counts: the sums of the reference's."""
    slots = {ref.world.plan.slot for ref in refs} | {None}
    assert set(out.item_rejects) | set(out.categories) | set(out.samples) | set(out.ctr) <= slots
    assert all(set(by_slot) <= slots for by_slot in out.rejects.values())
    item_rejects = sum((ref.item_rejects for ref in refs), Counter())
    rejects = sum((ref.rejects for ref in refs), Counter())
    assert_same(
        out.item_rejects.get(None, Counter()),
        _own(item_rejects, item_slot, None),
        "item_images rejects of the items NULL and -1",
    )
    assert not out.categories.get(None) and out.image_sizes <= {(16, 16)}
    for stage in ("build_samples", "ctr_samples"):
        assert_same(
            out.rejects[stage].get(None, Counter()),
            _own(rejects, impression_slot, None),
            f"{stage} rejects of request_id NULL and item NULL or -1",
        )

    m = result.items.metrics
    assert m["items_in"] == sum(len(ref.world.items) for ref in refs)
    assert m["prepared"] == sum(len(ref.categories) for ref in refs)
    assert {k: v for k, v in m.items() if k.startswith("rejected.")} == _by_reason(
        item_rejects, "rejected."
    )
    in_scope = sum(len(ref.exp.in_scope) for ref in refs)
    kept = sum(len(ref.kept) for ref in refs)
    drops = sum((Counter(ref.drops) for ref in refs), Counter())
    m = result.samples.metrics
    assert m["impressions_in"] == in_scope
    assert {k: v for k, v in m.items() if k.startswith("impressions_rejected.")} == _by_reason(
        rejects, "impressions_rejected."
    )
    assert (
        m["page_views_kept"],
        m["page_views_dropped_no_click"],
        m["page_views_dropped_no_history"],
    ) == (kept, drops["no_click"], drops["no_history"])
    assert m["impressions_downsampled"] == m["impressions_truncated"] == 0
    assert m["training_rows_written"] == kept
    ctr_rows = sum(len(ref.ctr) for ref in refs)
    assert record.metrics["rows_written"] == ctr_rows
    assert record.metrics["impressions_in"] == in_scope == ctr_rows + sum(rejects.values())
    # what the stages recorded in pipeline_runs is what they returned
    assert out.runs == {
        "item_images": result.items.metrics,
        "build_samples": result.samples.metrics,
        "ctr_samples": record.metrics,
    }


def run_era(spark, cfg: CourierConfig, refs: list[Reference]) -> list[str]:
    """Both stages once on the examples of one era, side by side: what fails, example by example."""
    ((start, end, max_event_ts),) = {
        (ref.world.start, ref.world.end, ref.world.max_event_ts) for ref in refs
    }
    cfg = cfg.replace([f"samples.max_event_ts={max_event_ts.isoformat()}"])
    write_worlds(spark, cfg, [ref.world for ref in refs])
    result = build_samples(spark, cfg, start, end)
    record = build_ctr_samples(spark, cfg, start, end)
    out = read_output(spark, cfg)
    failures = []
    for ref in refs:
        try:
            check_example(ref, out)
        except AssertionError as e:
            failures.append(f"example {ref.world.plan.slot}: {e}\n  {ref.world.plan!r}")
    try:
        check_totals(refs, out, result, record)
    except AssertionError as e:
        failures.append(f"the era's shared keys or counts: {e}")
    return failures


@pytest.mark.parametrize("era", ERAS, ids=lambda d: d.isoformat())
def test_broken_raw_tables_are_rejected_row_by_row_and_good_rows_kept(
    spark, fuzz_cfg, era, request
):
    rerun = (
        f"COURIER_FUZZ_SEED={FUZZ_SEED} COURIER_FUZZ_EXAMPLES={FUZZ_EXAMPLES} "
        f".venv/bin/python -m pytest '{request.node.nodeid}'"
    )
    print(f"fuzz seed {FUZZ_SEED}; rerun: {rerun}")
    refs = []
    for plan in draw_plans(FUZZ_EXAMPLES, FUZZ_SEED):
        if plan.era == era:
            try:
                refs.append(reference(make_world(plan)))
            except AssertionError as e:
                raise AssertionError(
                    f"the generator or the reference, example {plan.slot}: {e}\n  {plan!r}\n"
                    f"rerun: {rerun}"
                ) from e
    failures = run_era(spark, fuzz_cfg, refs)
    assert not failures, (
        f"{len(failures)} checks fail ({len(refs)} examples, then the era's totals); "
        f"rerun: {rerun}\n" + "\n".join(failures[:5])
    )


# --- explicit examples: page views split across dates, undated rows, the ends of the calendar ---

D = dt.date(2026, 1, 10)


def _views(
    spark,
    cfg: CourierConfig,
    rows: list[tuple],
    start: dt.date,
    end: dt.date,
    max_event_ts: dt.datetime = dt.datetime(9999, 12, 31, 23, 59, 59),
    more_rows_sql: str | None = None,
) -> tuple[dict, dict, dict]:
    """The sample SQL on ``rows`` (+ the rows of the SELECT ``more_rows_sql``; items 1..9 all known
    and imaged) for ``[start, end]``: ({(request_id, item_id): (reason, dt)} of the rows returned,
    {request_id: draft row}, {request_id: history})."""
    raw = spark.createDataFrame(rows, IMPRESSIONS_DDL)
    if more_rows_sql:
        raw = raw.unionByName(spark.sql(more_rows_sql))
    raw.createOrReplaceTempView("fz_impressions")
    spark.createDataFrame([(i,) for i in range(1, 10)], "item_id BIGINT").createOrReplaceTempView(
        "fz_items"
    )
    views = sample_views(
        spark,
        cfg,
        start,
        end,
        max_event_ts,
        raw_impressions="fz_impressions",
        raw_items="fz_items",
        item_images="fz_items",
    )
    try:
        checked = {
            (r["request_id"], r["item_id"]): (r["reject_reason"], r["dt"])
            for r in views.checked.select("request_id", "item_id", "reject_reason", "dt").collect()
        }
        draft = {
            r["request_id"]: r
            for r in views.draft.select(
                "request_id", "drop_reason", "pv_item_ids", "click_item_ids"
            ).collect()
        }
        history = {
            r["request_id"]: list(r["history_item_ids"])
            for r in spark.table("click_history").collect()
        }
    finally:
        views.unpersist()
    return checked, draft, history


@pytest.fixture(scope="module")
def sql_cfg(base_config: CourierConfig) -> CourierConfig:
    return base_config.replace(
        [
            f"samples.l_pv={L_PV}",
            f"samples.l_click={L_CLICK}",
            "samples.negative_keep_rate=1.0",
            f"samples.history_lookback_days={LOOKBACK}",
        ]
    )


def test_a_page_view_split_across_dates_is_rejected_by_both_builds(spark, sql_cfg):
    def row(request_id: str, item: int, position: int, ts: dt.datetime | None) -> tuple:
        return (request_id, 1, item, position, "q", ts, 1, ts.date() if ts else None)

    rows = [
        row("seed", 1, 0, _at(D - DAY, 36000)),  # history for everything after
        row("split", 2, 0, _at(D, 86399.5)),  # 23:59:59.5 on D ...
        row("split", 3, 1, _at(D + DAY, 0.25)),  # ... and 00:00:00.25 on D + 1
        row("on-d", 4, 0, _at(D, 72000)),
        row("after", 5, 0, _at(D + DAY, 36000)),
        row("edge", 6, 0, _at(D - 3 * DAY, 86399.5)),  # history_start - 1 of D's build ...
        row("edge", 7, 1, _at(D - 2 * DAY, 0.25)),  # ... and its history_start
        row("no-date", 8, 0, None),  # neither dt nor event_ts
        ("null-dt", 1, 9, 0, "q", _at(D, 3600), 1, None),  # dated by its event_ts
        # beyond INT in BIGINT columns: an ANSI cast to INT would fail the whole job
        ("big-position", 1, 1, INT_MAX + 1, "q", _at(D, 3600), 1, D),
        ("big-click", 1, 1, 0, "q", _at(D, 3600), 2**40, D),
    ]
    # Timestamps Python cannot hold (years 11476 and -248): made in SQL, never collected.
    beyond_python = """
        SELECT 'far-future' AS request_id, 1L AS user_id, 1L AS item_id, 0L AS position,
               'q' AS query, timestamp_micros(300000000000000000) AS event_ts, 1L AS clicked,
               DATE'2026-01-10' AS dt
        UNION ALL
        SELECT 'far-past', 1L, 1L, 0L, 'q', timestamp_micros(-70000000000000000), 1L,
               DATE'2026-01-10'"""
    on_d, draft_d, history_d = _views(spark, sql_cfg, rows, D, D, more_rows_sql=beyond_python)
    on_d1, draft_d1, history_d1 = _views(spark, sql_cfg, rows, D + DAY, D + DAY)

    # Each build rejects the half on its own date, with the same reason: no build keeps half.
    assert on_d[("split", 2)] == ("split_page_view", D)
    assert on_d1[("split", 3)] == ("split_page_view", D + DAY)
    assert "split" not in draft_d and "split" not in draft_d1
    # ...and neither half is anyone's history; nor is a page view split at the window's start.
    assert on_d[("edge", 7)] == ("split_page_view", D - 2 * DAY) and ("edge", 6) not in on_d
    assert history_d["on-d"] == [1] and history_d1["after"] == [1, 4]
    assert list(draft_d1["after"]["click_item_ids"]) == [-1, 1, 4]
    # The extra days are read, never returned: only the window [history_start, end].
    assert {d for _, d in on_d.values() if d} == {D - 2 * DAY, D - DAY, D}
    # Undated: returned (dt NULL) by every build, rejected; a NULL dt is dated by event_ts.
    assert on_d[("no-date", 8)] == on_d1[("no-date", 8)] == ("null_key", None)
    # in D + 1's history window
    assert on_d[("null-dt", 9)] == on_d1[("null-dt", 9)] == ("null_key", D)
    assert on_d[("big-position", 1)] == ("invalid_position", D) and on_d[("big-click", 1)] == (
        "invalid_label",
        D,
    )
    assert on_d[("far-future", 1)] == ("future_timestamp", D) and on_d[("far-past", 1)] == (
        "dt_mismatch",
        D,
    )


@pytest.mark.parametrize(
    "day",
    [dt.date(1, 1, 1), dt.date(1582, 10, 15), dt.date(9999, 12, 31)],
    ids=lambda d: d.isoformat(),
)
def test_the_ends_of_the_calendar(spark, sql_cfg, day):
    # start - lookback before 0001-01-01, end + 1 after 9999-12-31, dates before 1000 (which
    # PySpark cannot bind as dates), times before 1582 (which it binds two days off in the
    # year 1) and the Gregorian switch: the range builds, max_event_ts, history and split page
    # views work as anywhere else.
    before = _add_days(day, -1)
    rows = [
        ("pv", 1, 1, 0, "q", _at(day, 36000), 1, day),
        ("late", 1, 1, 0, "q", _at(day, 82800), 1, day),
    ]  # 23:00, after max_event_ts
    if before < day:
        rows += [
            ("seed", 1, 2, 0, "q", _at(before, 36000), 1, before),
            ("split", 1, 3, 0, "q", _at(before, 86399.5), 1, before),
            ("split", 1, 4, 1, "q", _at(day, 0.25), 1, day),
        ]
    checked, draft, _ = _views(spark, sql_cfg, rows, day, day, max_event_ts=_at(day, 79200))
    assert checked[("late", 1)] == ("future_timestamp", day)
    if before < day:
        assert checked[("split", 4)] == ("split_page_view", day)
        assert draft["pv"]["drop_reason"] is None and list(draft["pv"]["click_item_ids"]) == [
            -1,
            -1,
            2,
        ]
    else:
        assert draft["pv"]["drop_reason"] == "no_history"


def test_window_dates_stop_at_the_first_date():
    assert window_params(dt.date(1, 1, 3), dt.date(1, 1, 4), 60, dt.datetime(1, 1, 5, 22)) == {
        "history_start": "0001-01-01",
        "start_dt": "0001-01-03",
        "end_dt": "0001-01-04",
        "max_event_ts": "0001-01-05 22:00:00",
    }


# --- wrong-typed columns stop the job at once ---------------------------------------------------

RAW_COLUMNS = {
    "raw_impressions": dict(
        zip(
            ("request_id", "user_id", "item_id", "position", "query", "event_ts", "clicked", "dt"),
            ("string", "bigint", "bigint", "int", "string", "timestamp", "int", "date"),
            strict=True,
        )
    ),
    "raw_items": {
        "item_id": "bigint",
        "category": "string",
        "title": "string",
        "image": "binary",
        "updated_at": "timestamp",
    },
}
SPARK_TYPES = (
    "string",
    "int",
    "bigint",
    "double",
    "boolean",
    "timestamp",
    "date",
    "binary",
    "decimal(20,0)",
    "array<bigint>",
)


@st.composite
def wrong_columns(draw: st.DrawFn) -> tuple[str, str, str]:
    table = draw(st.sampled_from(sorted(RAW_COLUMNS)))
    # title: read by no stage
    column = draw(st.sampled_from(sorted(set(RAW_COLUMNS[table]) - {"title"})))
    accepted = {
        "request_id": ("string", "bigint", "int"),
        "user_id": ("bigint", "int"),
        "item_id": ("bigint", "int"),
        "position": ("bigint", "int"),
        "clicked": ("bigint", "int"),
    }.get(column, (RAW_COLUMNS[table][column],))
    wrong = draw(st.sampled_from([t for t in SPARK_TYPES if t not in accepted]))
    return table, column, wrong


@pytest.fixture(scope="module")
def schema_cfg(base_config: CourierConfig) -> CourierConfig:
    # Global temporary views (database global_temp) stand in for the raw tables: the stages
    # see only their schemas before they stop, and nothing goes through the metastore.
    return base_config.replace(["tables.database=global_temp", "samples.image_size=16"])


@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(wrong=wrong_columns())
def test_a_wrong_typed_column_stops_both_stages_before_anything_is_written(
    spark, schema_cfg, wrong
):
    table, column, wrong_type = wrong
    t = schema_cfg.tables
    for name, columns in RAW_COLUMNS.items():
        ddl = ", ".join(
            f"{c} {wrong_type if (name, c) == (table, column) else kind}"
            for c, kind in columns.items()
        )
        spark.createDataFrame([], ddl).createOrReplaceGlobalTempView(name)
    spark.createDataFrame([], "item_id BIGINT").createOrReplaceGlobalTempView("item_images")
    # ctr-samples reads no image
    for stage in (build_samples,) + ((build_ctr_samples,) if column != "image" else ()):
        with pytest.raises(
            SchemaError,
            match=re.escape(
                f"table {t.qualified(table)} column '{column}' has type {wrong_type}, expected"
            ),
        ):
            stage(spark, schema_cfg, D, D)
    written = [
        n
        for n in ("rejects", "pipeline_runs", "courier_samples", "ctr_samples")
        if spark.catalog.tableExists(t.qualified(n))
    ]
    assert written == [] and spark.table(t.qualified("item_images")).columns == ["item_id"]


# --- images, without Spark ----------------------------------------------------------------------

IMAGE_REASONS = {"empty_image", "undecodable_image", "image_too_large"}
FUZZ_LIMITS = ImageLimits(max_bytes=200_000, max_pixels=200 * 200)


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` 1-bit pixels, with no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


@cache
def _sample_image(fmt: str, width: int, height: int) -> bytes:
    rng = random.Random(f"{fmt}{width}x{height}")
    mode = "RGB" if fmt != "GIF" else "P"
    img = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3)).convert(mode)
    return _encode(img, fmt)


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    data = bytearray(
        _sample_image(
            draw(st.sampled_from(("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"))),
            draw(st.sampled_from((1, 3, 17, 64))),
            draw(st.sampled_from((1, 5, 33))),
        )
    )
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(("truncate", "flip", "insert", "overwrite_header")))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "truncate":
            del data[at:]
        elif kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:  # plausible header fields: sizes are little-endian or big-endian 16/32-bit words
            data[at : at + 4] = draw(
                st.sampled_from((b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"))
            )
    return bytes(data)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(data=st.one_of(mutated_images(), st.binary(max_size=256)))
def test_prepare_image_never_raises(data):
    prepared = prepare_image(data, 16, 90, FUZZ_LIMITS)
    if prepared.error is None:
        assert Image.open(io.BytesIO(prepared.jpeg)).size == (16, 16) and prepared.content_hash
    else:
        assert prepared.error in IMAGE_REASONS and prepared.jpeg is None and prepared.error_detail


def test_an_image_beyond_pillows_own_bomb_limit_is_too_large():
    # 20000 x 20000 = 400 M pixels: Pillow itself refuses it (over 2 x Image.MAX_IMAGE_PIXELS)
    # when the configured limit is higher still; it is still image_too_large, not undecodable.
    bomb = _png_claiming(20_000, 20_000)
    prepared = prepare_image(bomb, 16, 90, ImageLimits(max_bytes=10**9, max_pixels=10**9))
    assert prepared.error == "image_too_large", prepared.error_detail


def test_a_strip_is_cropped_before_it_is_resized():
    # 1 x 1,000,000 pixels, within the limits: resizing before cropping would make 16 x 16,000,000
    # (768 MB of RGB) to keep 16 x 16 of it.
    started = time.perf_counter()
    prepared = prepare_image(
        _solid(1, 1_000_000), 16, 90, ImageLimits(max_bytes=10**6, max_pixels=10**6)
    )
    assert prepared.error is None and Image.open(io.BytesIO(prepared.jpeg)).size == (16, 16)
    assert time.perf_counter() - started < 2  # a safety net, not a benchmark
