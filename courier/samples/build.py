"""``courier build-samples``: raw tables -> item_images, courier_samples, courier_training_rows.

The SQL lives in ``sql/samples/``; this module validates inputs, runs the files
in order, attaches the images to the samples (``training_rows.py``: a lookup
that SQL could only do by explode, join and regroup), writes the Delta tables
idempotently for the requested date range and reconciles counts
(in = kept + dropped-by-reason + rejected-by-reason), which it records in the
pipeline_runs table.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from delta.tables import DeltaTable
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, functions as F

from courier.config import CourierConfig, config_json
from courier.samples.images import ImageLimits, register_prepare_image_udf
from courier.samples.training_rows import training_rows
from courier.spark import session_conf
from courier.sql_files import run_sql_file
from courier.tables import (
    ReconciliationError,
    RunRecord,
    SchemaError,
    committing,
    count_by,
    date_range_predicate,
    ensure_table,
    merge_rejects,
    one_row,
    reconcile,
    replace_where,
    require_columns,
    retry_on_conflict,
    timed,
    utc_now,
    write_rejects,
)

log = logging.getLogger(__name__)

INTEGER_TYPES = ("bigint", "int", "smallint", "tinyint")
TIMESTAMP_TYPES = ("timestamp", "timestamp_ntz")

RAW_IMPRESSIONS_COLUMNS: dict[str, tuple[str, ...]] = {
    "request_id": ("string", "bigint", "int"),
    "user_id": INTEGER_TYPES,
    "item_id": INTEGER_TYPES,
    "position": INTEGER_TYPES,
    "query": ("string",),
    "event_ts": TIMESTAMP_TYPES,
    "clicked": INTEGER_TYPES,
    "dt": ("date",),
}
RAW_ITEMS_COLUMNS: dict[str, tuple[str, ...]] = {
    "item_id": INTEGER_TYPES,
    "category": ("string",),
    "updated_at": TIMESTAMP_TYPES,
}
ITEM_IMAGES_SCHEMA_DDL = (
    "item_id BIGINT, category STRING, jpeg BINARY, content_hash STRING, image_size INT, "
    "source_width INT, source_height INT, source_updated_at TIMESTAMP, prepared_at TIMESTAMP"
)

# page_views groups the cached checked view, which the per-page window left clustered and
# sorted by request_id: a sort aggregate streams it as it is, where the default object hash
# aggregate (collect_list) falls back to sorting it again after 128 pages per task.
SORT_AGGREGATE = {"spark.sql.execution.useObjectHashAggregateExec": "false"}


@dataclass
class SampleBuildResult:
    items: RunRecord
    samples: RunRecord


def _image_column(spark: SparkSession, raw_items: str) -> tuple[str, bool]:
    """Which column holds the image: ``image`` (BINARY) or ``image_uri`` (STRING)."""
    fields = {
        f.name.lower(): f.dataType.simpleString() for f in spark.table(raw_items).schema.fields
    }
    if "image" in fields:
        if fields["image"] != "binary":
            raise SchemaError(
                f"table {raw_items} column 'image' has type {fields['image']}, expected binary"
            )
        return "image", False
    if "image_uri" in fields:
        if fields["image_uri"] != "string":
            raise SchemaError(
                f"table {raw_items} column 'image_uri' has type {fields['image_uri']}, expected "
                "string"
            )
        return "image_uri", True
    raise SchemaError(
        f"table {raw_items} has neither an 'image' (binary) nor an 'image_uri' (string) column"
    )


def build_item_images(spark: SparkSession, cfg: CourierConfig, run_id: str) -> RunRecord:
    """Prepare the images of new or changed items and MERGE them into item_images.

    Items whose image cannot be used go to rejects (and leave item_images, so
    no stale picture outlives a broken update).
    """
    t, s = cfg.tables, cfg.samples
    raw_items = t.qualified("raw_items")
    item_images = t.qualified("item_images")
    started = utc_now()
    require_columns(spark, raw_items, RAW_ITEMS_COLUMNS)
    image_column, from_uri = _image_column(spark, raw_items)
    ensure_table(spark, item_images, ITEM_IMAGES_SCHEMA_DDL)

    args = {
        "raw_items": raw_items,
        "item_images": item_images,
        "image_column": image_column,
        "image_size": s.image_size,
    }
    # Eager local checkpoints: both read item_images, which the MERGE below rewrites; a lazy
    # cache recomputed after the MERGE would see every item as unchanged.
    timings: dict[str, int] = {}
    with timed(timings, "candidates"):
        candidates = run_sql_file(spark, "samples/item_images_candidates", args).localCheckpoint(
            eager=True
        )
        candidates.createOrReplaceTempView("item_images_candidates")
    register_prepare_image_udf(
        spark,
        s.image_size,
        s.jpeg_quality,
        from_uri,
        ImageLimits(s.max_image_bytes, s.max_image_pixels),
    )
    with timed(timings, "prepare_images"):
        prepared = run_sql_file(spark, "samples/item_images_prepared", args).localCheckpoint(
            eager=True
        )

    good = prepared.where("reject_reason IS NULL").drop("reject_reason", "reject_detail")
    bad_images = prepared.where("reject_reason IS NOT NULL").select(
        F.col("item_id").cast("string").alias("key"),
        F.col("reject_reason").alias("reason"),
        F.col("reject_detail").alias("detail"),
        F.to_date("source_updated_at").alias("dt"),
    )
    bad_rows = candidates.where("reject_reason IS NOT NULL").select(
        F.coalesce(F.col("item_id").cast("string"), F.lit("NULL")).alias("key"),
        F.col("reject_reason").alias("reason"),
        F.concat(F.lit("updated_at="), F.col("updated_at").cast("string")).alias("detail"),
        F.to_date("updated_at").alias("dt"),
    )
    rejects = bad_rows.unionByName(bad_images)

    merge = (
        DeltaTable.forName(spark, item_images)
        .alias("t")
        .merge(
            prepared.drop("reject_detail").alias("s"),
            "t.item_id = s.item_id",
        )
        .whenMatchedDelete(condition="s.reject_reason IS NOT NULL")
        .whenMatchedUpdate(set={c: f"s.{c}" for c in good.columns})
        .whenNotMatchedInsert(
            condition="s.reject_reason IS NULL", values={c: f"s.{c}" for c in good.columns}
        )
    )
    with timed(timings, "merge_images"), committing(item_images):
        merge.execute()
    with timed(timings, "merge_rejects"):
        merge_rejects(spark, t.qualified("rejects"), rejects, "item_images", run_id)

    counts = count_by(
        candidates,
        "CASE WHEN reject_reason IS NOT NULL THEN concat('rejected.', reject_reason) "
        "WHEN unchanged THEN 'unchanged' ELSE 'to_prepare' END",
    )
    image_counts = count_by(
        prepared,
        "CASE WHEN reject_reason IS NULL THEN 'prepared' "
        "ELSE concat('rejected.', reject_reason) END",
    )
    to_prepare = counts.pop("to_prepare", 0)
    metrics = {"items_in": sum(counts.values()) + to_prepare, **counts, **image_counts}
    reconcile(
        "item_images", metrics["items_in"], {k: v for k, v in metrics.items() if k != "items_in"}
    )
    metrics.update(timings)
    candidates.unpersist()
    prepared.unpersist()
    return RunRecord(run_id, "item_images", None, None, started, metrics, config_json(cfg))


def build_samples(
    spark: SparkSession, cfg: CourierConfig, start: dt.date, end: dt.date, run_id: str | None = None
) -> SampleBuildResult:
    """Build item_images, then courier_samples and courier_training_rows for ``[start, end]``.

    Re-running a range replaces exactly its partitions (and its rejects). A run that loses a
    Delta commit to a concurrent one starts over (ConcurrentRunError after 3 attempts).
    """
    if end < start:
        raise ValueError(f"--end {end} is before --start {start}")
    run_id = run_id or uuid.uuid4().hex[:12]
    return retry_on_conflict(
        "build_samples", lambda: _build_samples_once(spark, cfg, start, end, run_id)
    )


def _build_samples_once(
    spark: SparkSession, cfg: CourierConfig, start: dt.date, end: dt.date, run_id: str
) -> SampleBuildResult:
    t, s = cfg.tables, cfg.samples
    # raw_impressions before anything is written (build_item_images checks raw_items before
    # its first write): a wrong schema stops the job at once, not after item_images was merged.
    require_columns(spark, t.qualified("raw_impressions"), RAW_IMPRESSIONS_COLUMNS)
    items_record = build_item_images(spark, cfg, run_id)
    items_record.save(spark, t.qualified("pipeline_runs"))

    started = utc_now()
    timings: dict[str, int] = {}
    max_event_ts = dt.datetime.fromisoformat(s.max_event_ts) if s.max_event_ts else started
    with timed(timings, "plan_views"):
        views = sample_views(
            spark,
            cfg,
            start,
            end,
            max_event_ts,
            raw_impressions=t.qualified("raw_impressions"),
            raw_items=t.qualified("raw_items"),
            item_images=t.qualified("item_images"),
        )
    checked, draft = views.checked, views.draft
    in_range = date_range_predicate(start, end)
    in_scope = rejects_scope(in_range)

    with timed(timings, "write_rejects"):
        write_rejects(
            spark,
            t.qualified("rejects"),
            impression_rejects(checked.where(in_scope)),
            "build_samples",
            run_id,
            in_scope,
        )

    with timed(timings, "write_samples"), session_conf(spark, SORT_AGGREGATE):
        kept = draft.where("drop_reason IS NULL").select(
            "request_id",
            "user_id",
            "event_ts",
            "query",
            "pv_item_ids",
            "pv_labels",
            "click_item_ids",
            "n_history",
            "dt",
        )
        replace_where(kept, t.qualified("courier_samples"), in_range, partition_by=["dt"])

    with timed(timings, "reconcile"):
        metrics = _sample_metrics(checked.where(in_scope), draft)
    views.unpersist()  # frees the cached impressions before the image-heavy write
    with timed(timings, "write_training_rows"):
        _write_training_rows(spark, cfg, start, end)
        metrics["training_rows_written"] = (
            spark.table(t.qualified("courier_training_rows")).where(in_range).count()
        )
    if metrics["training_rows_written"] != metrics["page_views_kept"]:
        raise ReconciliationError(
            f"courier_training_rows has {metrics['training_rows_written']} rows for "
            f"{start}..{end}, courier_samples {metrics['page_views_kept']}: a sample lost its "
            "images"
        )
    metrics.update(timings)
    record = RunRecord(run_id, "build_samples", start, end, started, metrics, config_json(cfg))
    record.save(spark, t.qualified("pipeline_runs"))
    return SampleBuildResult(items_record, record)


@dataclass
class SampleViews:
    """The persisted intermediate views of one sample build."""

    args: dict[str, Any]
    checked: DataFrame  # impressions_checked: every impression of the window + reject_reason
    page_views: DataFrame  # page_views: valid page views of the window, down-sampled
    draft: DataFrame  # samples_draft: page views of the range as samples + drop_reason + counts

    def unpersist(self) -> None:
        for df in (self.checked, self.page_views, self.draft):
            df.unpersist()


def sample_views(
    spark: SparkSession,
    cfg: CourierConfig,
    start: dt.date,
    end: dt.date,
    max_event_ts: dt.datetime,
    raw_impressions: str,
    raw_items: str,
    item_images: str,
) -> SampleViews:
    """Run the sample SQL (impressions_checked -> page_views -> click_history -> samples_draft).

    The inputs are table or view names, so tests can run the SQL on temp views.
    """
    s = cfg.samples
    args: dict[str, Any] = {
        "raw_impressions": raw_impressions,
        "raw_items": raw_items,
        "item_images": item_images,
        **window_params(start, end, s.history_lookback_days, max_event_ts),
        "negative_keep_rate": float(s.negative_keep_rate),
        "sampling_seed": int(s.sampling_seed),
        "l_pv": int(s.l_pv),
        "l_click": int(s.l_click),
    }
    checked, page_views = click_history_views(spark, args)
    draft = run_sql_file(spark, "samples/samples_draft", args).persist(StorageLevel.MEMORY_AND_DISK)
    return SampleViews(args, checked, page_views, draft)


def window_params(
    start: dt.date, end: dt.date, lookback_days: int, max_event_ts: dt.datetime
) -> dict[str, str]:
    """The dates the sample SQL takes: ``history_start`` (``start`` - ``lookback_days``),
    ``start_dt``, ``end_dt`` and ``max_event_ts``.

    ISO strings, which the SQL casts: PySpark binds a ``datetime.date`` through
    ``strftime('%Y-%m-%d')``, which writes a year before 1000 without its leading zeros
    (``1-01-01``, refused by Spark), and a ``datetime`` before 1582 through the Julian
    calendar (0001-01-05 arrives as 0001-01-07). ``history_start`` stops at 0001-01-01,
    the first date Python has, where the subtraction would overflow.
    """
    try:
        history_start = start - dt.timedelta(days=lookback_days)
    except OverflowError:
        history_start = dt.date.min
    return {
        "history_start": history_start.isoformat(),
        "start_dt": start.isoformat(),
        "end_dt": end.isoformat(),
        "max_event_ts": max_event_ts.isoformat(sep=" "),
    }


def rejects_scope(in_range: str) -> str:
    """The impressions a build of ``in_range`` reports: its dates, and the undated ones.

    impressions_checked dates an impression without dt by its event_ts; one with
    neither belongs to no range, so every build rejects it again (under dt NULL,
    replaced, never added twice) rather than none.
    """
    return f"({in_range}) OR dt IS NULL"


def impression_rejects(checked: DataFrame) -> DataFrame:
    """The rejected rows of impressions_checked as rejects rows (key, reason, detail, dt).

    The key is ``request_id/item_id``, ``NULL`` for a missing part. A request_id may
    hold a ``/`` itself: split a key at its last one. Keys are kept whole, however
    long the request_id, so that a key finds its raw row.
    """
    return checked.where("reject_reason IS NOT NULL").select(
        F.concat_ws(
            "/",
            F.coalesce("request_id", F.lit("NULL")),
            F.coalesce(F.col("item_id").cast("string"), F.lit("NULL")),
        ).alias("key"),
        F.col("reject_reason").alias("reason"),
        F.col("reject_detail").alias("detail"),
        "dt",
    )


def click_history_views(spark: SparkSession, args: dict[str, Any]) -> tuple[DataFrame, DataFrame]:
    """Run impressions_checked -> page_views -> click_history; the first two, persisted.

    ``args`` holds the parameters of the three files (``l_click`` sets the history
    length). The CTR samples reuse them with their own, longer history.
    """
    # Persisted: each is read by several later steps (and the views share the cached plans).
    checked = run_sql_file(spark, "samples/impressions_checked", args).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    page_views = run_sql_file(spark, "samples/page_views", args).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    run_sql_file(
        spark,
        "samples/click_history",
        args,
        literals={"l_click_preceding": int(args["l_click"]) - 1},
    )
    return checked, page_views


def _sample_metrics(checked_in_range: DataFrame, draft: DataFrame) -> dict[str, int]:
    """Counts that reconcile impressions and page views; raises if they do not add up."""
    impressions = count_by(
        checked_in_range, "coalesce(concat('impressions_rejected.', reject_reason), 'valid')"
    )
    valid = impressions.pop("valid", 0)
    rejected = sum(impressions.values())
    totals = one_row(
        draft.selectExpr(
            "count(*) AS page_views_in",
            "count_if(drop_reason IS NULL) AS page_views_kept",
            "count_if(drop_reason = 'no_click') AS page_views_dropped_no_click",
            "count_if(drop_reason = 'no_history') AS page_views_dropped_no_history",
            "coalesce(sum(CASE WHEN drop_reason IS NULL THEN n_shown END), 0) AS "
            "impressions_in_samples",
            "coalesce(sum(CASE WHEN drop_reason IS NULL THEN n_downsampled END), 0) AS "
            "impressions_downsampled",
            "coalesce(sum(CASE WHEN drop_reason IS NULL THEN n_truncated END), 0) AS "
            "impressions_truncated",
            "coalesce(sum(CASE WHEN drop_reason IS NOT NULL THEN n_impressions END), 0) AS "
            "impressions_in_dropped_page_views",
        )
    ).asDict()
    metrics = {
        "impressions_in": valid + rejected,
        "impressions_rejected": rejected,
        **impressions,
        "impressions_valid": valid,
        **{k: int(v) for k, v in totals.items()},
    }
    reconcile("impressions", metrics["impressions_in"], {"rejected": rejected, "valid": valid})
    reconcile(
        "valid impressions",
        valid,
        {
            k: metrics[k]
            for k in (
                "impressions_in_samples",
                "impressions_downsampled",
                "impressions_truncated",
                "impressions_in_dropped_page_views",
            )
        },
    )
    reconcile(
        "page views",
        metrics["page_views_in"],
        {
            k: metrics[k]
            for k in (
                "page_views_kept",
                "page_views_dropped_no_click",
                "page_views_dropped_no_history",
            )
        },
    )
    return metrics


def _write_training_rows(
    spark: SparkSession, cfg: CourierConfig, start: dt.date, end: dt.date
) -> None:
    """courier_samples of ``[start, end]`` + their images
    -> courier_training_rows (replacing the range)."""
    t, s = cfg.tables, cfg.samples
    in_range = date_range_predicate(start, end)
    built = training_rows(
        spark.table(t.qualified("courier_samples")).where(in_range),
        spark.table(t.qualified("item_images")),
        t.qualified("item_images"),
        num_partitions=cfg.spark.shuffle_partitions,
        images_per_row=s.l_pv + s.l_click,
    )
    try:
        with session_conf(
            spark, built.writer_settings(s.rows_per_row_group, (end - start).days + 1)
        ):
            replace_where(
                built.rows, t.qualified("courier_training_rows"), in_range, partition_by=["dt"]
            )
    finally:
        built.release()
