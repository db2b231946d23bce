"""``courier generate-world``: write the synthetic shop as the raw warehouse tables.

The generator (courier.world) yields Arrow tables; they are staged as Parquet
with pyarrow (no row passes through Python objects or the Py4J bridge) and then
written by Spark as Delta tables, exactly as a shop's warehouse would hold them.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession, functions as F

from courier.config import CourierConfig, config_json
from courier.progress import Progress
from courier.spark import resolve_path
from courier.tables import RunRecord, one_row, utc_now
from courier.world.generate import World, generate_world

log = logging.getLogger(__name__)


def _stage(table: pa.Table, folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / f"{name}.parquet", compression="snappy")


def _with_spark_types(df: DataFrame) -> DataFrame:
    """Arrow's zone-less timestamps arrive as TIMESTAMP_NTZ;
    the contract says TIMESTAMP (session zone is UTC)."""
    for field in df.schema.fields:
        if field.dataType.simpleString() == "timestamp_ntz":
            df = df.withColumn(field.name, F.col(field.name).cast("timestamp"))
    return df


def write_world(spark: SparkSession, cfg: CourierConfig, world: World | None = None) -> RunRecord:
    """Generate (unless given) and write raw_items,
    raw_impressions and the eval_* tables, replacing them."""
    started = utc_now()
    world = world if world is not None else generate_world(cfg.world)
    t = cfg.tables
    staging = (
        Path(resolve_path(cfg.spark.warehouse_dir)) / "_staging" / f"world-{uuid.uuid4().hex[:8]}"
    )
    try:
        _stage(world.items, staging / "raw_items", "part-0")
        _stage(world.item_styles, staging / "eval_item_styles", "part-0")
        _stage(world.user_preferences, staging / "eval_user_preferences", "part-0")
        specs = world.batch_specs()
        progress = Progress("impressions", total=len(specs), unit="batches")
        n_impressions = 0
        for i in range(len(specs)):
            batch = world.impression_batch(i)
            n_impressions += batch.num_rows
            _stage(batch, staging / "raw_impressions", f"part-{i:05d}")
            progress.update(1, extra=f"{n_impressions:,} rows")
        progress.close()

        for name, partition_by in (
            ("raw_items", None),
            ("eval_item_styles", None),
            ("eval_user_preferences", None),
            ("raw_impressions", "dt"),
        ):
            df = _with_spark_types(spark.read.parquet(str(staging / name)))
            writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
            if partition_by:
                writer = writer.partitionBy(partition_by)
            t0 = time.perf_counter()
            writer.saveAsTable(t.qualified(name))
            log.info("wrote %s in %.1fs", t.qualified(name), time.perf_counter() - t0)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    clicks = one_row(spark.table(t.qualified("raw_impressions")).agg(F.sum("clicked")))[0] or 0
    metrics = {
        "items": world.items.num_rows,
        "users": world.user_preferences.num_rows,
        "impressions": n_impressions,
        "clicks": int(clicks),
    }
    return RunRecord(
        f"world-{uuid.uuid4().hex[:8]}",
        "generate_world",
        None,
        None,
        started,
        metrics,
        config_json(cfg),
    )
