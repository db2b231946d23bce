"""``courier ctr-samples``: raw impressions -> ctr_samples, one row per impression.

    impressions_checked -> page_views -> click_history   (sql/samples/, with ctr_samples.l_click)
    -> ctr_impressions (sql/ctr/): valid impressions of the range + category + history
    -> item_features_as_of (sql/features/) twice: the candidate and every history slot,
       each at the impression's event_ts
    -> ctr_samples (sql/ctr/) -> reconcile -> replace the range's partitions

Invalid impressions go to the rejects table (stage ``ctr_samples``) with the sample
build's reasons; the counts are checked BEFORE anything is written, so a build
that does not add up leaves the table as it was.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession

from courier.config import CourierConfig, config_json
from courier.features.assign import ITEM_IMAGE_FEATURES_DDL
from courier.samples.build import (
    RAW_IMPRESSIONS_COLUMNS,
    RAW_ITEMS_COLUMNS,
    click_history_views,
    impression_rejects,
    rejects_scope,
    window_params,
)
from courier.sql_files import run_sql_file
from courier.tables import (
    ReconciliationError,
    RunRecord,
    count_by,
    date_range_predicate,
    one_row,
    reconcile,
    replace_where,
    require_columns,
    retry_on_conflict,
    table_exists,
    timed,
    utc_now,
    write_rejects,
)

log = logging.getLogger(__name__)

STAGE = "ctr_samples"


def build_ctr_samples(
    spark: SparkSession, cfg: CourierConfig, start: dt.date, end: dt.date, run_id: str | None = None
) -> RunRecord:
    """Build ``ctr_samples`` for ``[start, end]``;
    re-running a range replaces exactly its partitions.

    A run that loses a Delta commit to a concurrent one starts over (ConcurrentRunError after 3).
    """
    if end < start:
        raise ValueError(f"--end {end} is before --start {start}")
    run_id = run_id or uuid.uuid4().hex[:12]
    return retry_on_conflict(STAGE, lambda: _build_once(spark, cfg, start, end, run_id))


def _build_once(
    spark: SparkSession, cfg: CourierConfig, start: dt.date, end: dt.date, run_id: str
) -> RunRecord:
    t = cfg.tables
    started = utc_now()
    timings: dict[str, int] = {}
    require_columns(spark, t.qualified("raw_impressions"), RAW_IMPRESSIONS_COLUMNS)
    require_columns(spark, t.qualified("raw_items"), RAW_ITEMS_COLUMNS)
    if not table_exists(spark, t.qualified("item_images")):
        raise FileNotFoundError(
            f"table {t.qualified('item_images')} does not exist: run `courier build-samples` first"
        )

    with timed(timings, "plan"):
        checked, samples = _sample_frames(spark, cfg, start, end)
    in_range = date_range_predicate(start, end)
    in_scope = rejects_scope(in_range)
    with timed(timings, "reconcile"):
        metrics = _reconcile(checked.where(in_scope), samples)
    with timed(timings, "write_rejects"):
        write_rejects(
            spark,
            t.qualified("rejects"),
            impression_rejects(checked.where(in_scope)),
            STAGE,
            run_id,
            in_scope,
        )
    with timed(timings, "write_samples"):
        replace_where(samples, t.qualified("ctr_samples"), in_range, partition_by=["dt"])
    checked.unpersist()
    samples.unpersist()
    metrics.update(timings)
    record = RunRecord(run_id, STAGE, start, end, started, metrics, config_json(cfg))
    record.save(spark, t.qualified("pipeline_runs"))
    return record


def _sample_frames(
    spark: SparkSession, cfg: CourierConfig, start: dt.date, end: dt.date
) -> tuple[DataFrame, DataFrame]:
    """(impressions_checked of the window, ctr_samples of the range), both persisted."""
    t, s = cfg.tables, cfg.ctr_samples
    max_event_ts = (
        dt.datetime.fromisoformat(cfg.samples.max_event_ts)
        if cfg.samples.max_event_ts
        else utc_now()
    )
    args = {
        "raw_impressions": t.qualified("raw_impressions"),
        "raw_items": t.qualified("raw_items"),
        "item_images": t.qualified("item_images"),
        **window_params(start, end, s.history_lookback_days, max_event_ts),
        # page_views' negative sampling does not touch the history (clicks only): keep all
        "negative_keep_rate": 1.0,
        "sampling_seed": 0,
        "l_click": s.l_click,
    }
    checked, page_views = click_history_views(spark, args)
    run_sql_file(spark, "ctr/ctr_items", args)
    impressions = run_sql_file(spark, "ctr/ctr_impressions", args).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    features = _item_image_features(spark, cfg)
    _as_of(spark, "ctr_impressions", features, "candidate_features")
    run_sql_file(spark, "ctr/history_items", args)
    _as_of(spark, "history_items", features, "history_features")
    # Checkpointed: the history's features are regrouped per page view and joined back,
    # a plan Spark would otherwise recompute for the counts and again for the write.
    samples = run_sql_file(spark, "ctr/ctr_samples", args).localCheckpoint(eager=True)
    impressions.unpersist()
    page_views.unpersist()
    return checked, samples


def _item_image_features(spark: SparkSession, cfg: CourierConfig) -> str:
    """The feature history to join: the table,
    or an empty stand-in before the first ``courier assign``."""
    table = cfg.tables.qualified("item_image_features")
    if table_exists(spark, table):
        return table
    log.warning(
        "%s does not exist yet (no `courier assign`): every image feature of ctr_samples is NULL",
        table,
    )
    spark.createDataFrame([], ITEM_IMAGE_FEATURES_DDL).createOrReplaceTempView(
        "no_item_image_features"
    )
    return "no_item_image_features"


def _as_of(spark: SparkSession, events_view: str, features: str, name: str) -> DataFrame:
    """sql/features/item_features_as_of.sql on ``events_view``, registered as temp view ``name``."""
    df = run_sql_file(
        spark,
        "features/item_features_as_of",
        {"events": events_view, "item_image_features": features},
    )
    df.createOrReplaceTempView(name)
    return df


def _reconcile(checked_in_range: DataFrame, samples: DataFrame) -> dict[str, int]:
    """impressions in = ctr_samples rows + rejected by reason; the feature coverage, as counts."""
    by_reason = count_by(
        checked_in_range, "coalesce(concat('impressions_rejected.', reject_reason), 'valid')"
    )
    valid = by_reason.pop("valid", 0)
    totals = one_row(
        samples.selectExpr(
            "count(*) AS rows_written",
            "count_if(label = 1) AS clicks",
            "count(DISTINCT request_id) AS page_views",
            "count_if(size(history_item_ids) = 0) AS rows_without_history",
            "count_if(image_cluster_id IS NOT NULL) AS rows_with_image_feature",
            "coalesce(sum(size(history_item_ids)), 0) AS history_slots",
            "coalesce(sum(size(filter(history_cluster_ids, c -> c IS NOT NULL))), 0) AS "
            "history_slots_with_image_feature",
            "count_if(size(history_cluster_ids) <> size(history_item_ids)) AS history_misaligned",
        )
    ).asDict()
    metrics = {
        "impressions_in": valid + sum(by_reason.values()),
        **by_reason,
        **{k: int(v) for k, v in totals.items()},
    }
    reconcile(
        "ctr_samples impressions",
        metrics["impressions_in"],
        {"rows_written": metrics["rows_written"], **by_reason},
    )
    if metrics["history_misaligned"]:
        raise ReconciliationError(
            f"ctr_samples: {metrics['history_misaligned']} rows lost history slots in the as-of "
            "join"
        )
    return metrics
