"""Arrow schemas of the tables the generator produces (the Spark writer validates them).

Fields are left nullable (Arrow's default, what Spark infers); the generator
never emits a null.
"""

from __future__ import annotations

import pyarrow as pa

RAW_ITEMS = pa.schema(
    [
        pa.field("item_id", pa.int64()),
        pa.field("category", pa.string()),
        pa.field("title", pa.string()),
        pa.field("image", pa.binary()),
        pa.field("updated_at", pa.timestamp("us")),
    ]
)

RAW_IMPRESSIONS = pa.schema(
    [
        pa.field("request_id", pa.string()),
        pa.field("user_id", pa.int64()),
        pa.field("item_id", pa.int64()),
        pa.field("position", pa.int32()),
        pa.field("query", pa.string()),
        pa.field("event_ts", pa.timestamp("us")),
        pa.field("clicked", pa.int32()),
        pa.field("dt", pa.date32()),
    ]
)

EVAL_ITEM_STYLES = pa.schema(
    [
        pa.field("item_id", pa.int64()),
        pa.field("category", pa.string()),
        pa.field("style_id", pa.int32()),
        pa.field("palette", pa.string()),
        pa.field("upper_colour", pa.string()),
        pa.field("lower_colour", pa.string()),
        pa.field("pattern", pa.string()),
    ]
)

EVAL_USER_PREFERENCES = pa.schema(
    [
        pa.field("user_id", pa.int64()),
        pa.field("liked_styles", pa.list_(pa.int32())),
        pa.field("liked_categories", pa.list_(pa.string())),
    ]
)

# The same raw-table contracts as Spark DDL (for Spark-side fixtures and docs).
RAW_ITEMS_DDL = "item_id BIGINT, category STRING, title STRING, image BINARY, updated_at TIMESTAMP"
RAW_IMPRESSIONS_DDL = (
    "request_id STRING, user_id BIGINT, item_id BIGINT, position INT, query STRING, "
    "event_ts TIMESTAMP, clicked INT, dt DATE"
)
