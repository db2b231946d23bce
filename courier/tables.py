"""Delta table plumbing shared by every stage: schema checks, idempotent writes,
write conflicts with concurrent runs, the rejects table and the per-run metrics table."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from delta import exceptions as delta_errors
from delta.exceptions import captured as _delta_captured  # noqa: F401 - makes PySpark raise Delta's conflict classes
from delta.tables import DeltaTable
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, Row, SparkSession, functions as F, types as T

log = logging.getLogger(__name__)


class SchemaError(ValueError):
    """An input table is missing, or lacks a column, or a column has the wrong type."""


class ReconciliationError(RuntimeError):
    """Counts in do not equal counts out + dropped + rejected: a row went missing."""


class WriteConflict(RuntimeError):
    """A commit to ``table`` lost to a concurrent run's commit,
    or found the table changed under it."""

    def __init__(self, table: str, detail: str) -> None:
        super().__init__(f"{table}: {detail}")
        self.table = table


class ConcurrentRunError(RuntimeError):
    """A stage gave up after write conflicts with a concurrent run; the message names the table."""


# Delta's optimistic concurrency: the commit that comes second finds its reads overtaken.
DELTA_CONFLICTS = (
    delta_errors.DeltaConcurrentModificationException,
    delta_errors.ConcurrentWriteException,
    delta_errors.MetadataChangedException,
    delta_errors.ProtocolChangedException,
    delta_errors.ConcurrentAppendException,
    delta_errors.ConcurrentDeleteReadException,
    delta_errors.ConcurrentDeleteDeleteException,
    delta_errors.ConcurrentTransactionException,
)
# Two runs creating the same new table: the catalog admits one.
_CREATE_RACES = (
    "TABLE_OR_VIEW_ALREADY_EXISTS",
    "DELTA_CREATE_TABLE_WITH_DIFFERENT_PROPERTY",
    "DELTA_CREATE_TABLE_SCHEME_MISMATCH",
)

_T = TypeVar("_T")


def _conflict_detail(exc: BaseException) -> str | None:
    """What a concurrent run did, if ``exc`` is a write conflict; None for any other error."""
    if isinstance(exc, DELTA_CONFLICTS):
        text = str(exc)
        first = text.splitlines()[0][:300]
        operation = (
            text.split('"operation":"', 1)[1].split('"', 1)[0] if '"operation":"' in text else "?"
        )
        return f"{first} (the concurrent commit: {operation})"
    if isinstance(exc, AnalysisException) and (exc.getCondition() or "") in _CREATE_RACES:
        return f"created by a concurrent run ({exc.getCondition()})"
    return None


@contextmanager
def committing(table: str) -> Iterator[None]:
    """Delta commit conflicts inside the block become a WriteConflict naming ``table``."""
    try:
        yield
    except Exception as exc:  # re-raised unless it is a conflict
        detail = _conflict_detail(exc)
        if detail is None:
            raise
        raise WriteConflict(table, detail) from exc


# Test hook, off by default (tests/faults/test_concurrent_runs.py). With the variable set to a file
# path, every write that passes through held_before_commit() waits inside its Delta transaction
# until that file exists, so a test can make another run commit first, as two real runs at once
# would. Python can only wait inside a transaction in the tasks that compute the written rows:
# Delta reads the table's version when the write starts and checks for concurrent commits when it
# commits, after those tasks.
HOLD_BEFORE_COMMIT = "COURIER_TEST_HOLD_BEFORE_COMMIT"


def held_before_commit(df: DataFrame) -> DataFrame:
    """``df`` as it is, unless COURIER_TEST_HOLD_BEFORE_COMMIT=<file> is set (tests only): then
    ``df`` whose tasks create ``<file>.holding`` and wait until ``<file>`` exists before passing
    its rows on."""
    release = os.environ.get(HOLD_BEFORE_COMMIT)
    if not release:
        return df

    def hold(batches: Iterable[Any]) -> Iterator[Any]:  # pyarrow RecordBatches, passed on unchanged
        import os
        import time

        open(f"{release}.holding", "a").close()
        while not os.path.exists(release):
            time.sleep(0.05)
        yield from batches

    return df.mapInArrow(hold, df.schema)


def retry_on_conflict(
    stage: str, attempt: Callable[[], _T], attempts: int = 3, pause_s: float = 2.0
) -> _T:
    """Run a whole idempotent stage, and run it again after a write conflict with a concurrent run.

    A stage re-run converges on the same tables (that is what makes it idempotent), so the
    run that lost a commit starts over from what the winner committed, rather than
    re-applying a write planned on tables that changed. After ``attempts`` losses it stops
    with a ConcurrentRunError naming the table and what the other run did.
    """
    for number in range(1, attempts + 1):
        try:
            return attempt()
        except WriteConflict as conflict:
            if number == attempts:
                raise ConcurrentRunError(
                    f"{stage}: gave up after {attempts} write conflicts with a concurrent run; the "
                    f"last on {conflict}. Nothing of the lost attempts stayed half-written (every "
                    f"Delta commit is atomic); run {stage} again once the other run has finished"
                ) from conflict
            pause = pause_s * number * random.uniform(0.5, 1.5)
            log.warning(
                "%s: a concurrent run changed %s (%s); starting over in %.1f s (attempt %d of %d)",
                stage,
                conflict.table,
                str(conflict).split(": ", 1)[1],
                pause,
                number + 1,
                attempts,
            )
            time.sleep(pause)
    raise AssertionError("unreachable")


@contextmanager
def timed(metrics: dict[str, int], phase: str) -> Iterator[None]:
    """Record the wall time of a phase in ``metrics['ms.<phase>']`` (kept in pipeline_runs)."""
    t0 = time.perf_counter()
    yield
    metrics[f"ms.{phase}"] = int((time.perf_counter() - t0) * 1000)
    log.info("%s took %.1fs", phase, metrics[f"ms.{phase}"] / 1000)


def one_row(df: DataFrame) -> Row:
    """The row of ``df``, which has exactly one: a global aggregate, a MERGE's metrics, a detail.

    ``DataFrame.first()`` may return None; for these frames that would be a bug, named here.
    """
    row = df.first()
    if row is None:
        raise ValueError(f"expected one row, got none (columns {df.columns})")
    return row


def count_by(df: DataFrame, key_expr: str) -> dict[str, int]:
    """``{key: rows}`` of ``df`` grouped by the SQL expression ``key_expr``."""
    return {
        row["k"]: int(row["n"])
        for row in df.groupBy(F.expr(key_expr).alias("k"))
        .count()
        .withColumnRenamed("count", "n")
        .collect()
    }


def reconcile(what: str, total: int, parts: Mapping[str, int]) -> None:
    """Raise ReconciliationError unless ``parts`` add up to ``total``
    (in = out + dropped + rejected)."""
    if total != sum(parts.values()):
        raise ReconciliationError(
            f"{what}: {total} in, but {sum(parts.values())} accounted for: {dict(parts)}"
        )


REJECTS_SCHEMA = T.StructType(
    [
        T.StructField("stage", T.StringType(), True),
        T.StructField("key", T.StringType(), True),
        T.StructField("reason", T.StringType(), True),
        T.StructField("detail", T.StringType(), True),
        T.StructField("dt", T.DateType(), True),
        T.StructField("run_id", T.StringType(), True),
    ]
)

RUNS_SCHEMA = T.StructType(
    [
        T.StructField("run_id", T.StringType(), True),
        T.StructField("stage", T.StringType(), True),
        T.StructField("start_dt", T.DateType(), True),
        T.StructField("end_dt", T.DateType(), True),
        T.StructField("started_at", T.TimestampType(), True),
        T.StructField("finished_at", T.TimestampType(), True),
        T.StructField("metrics", T.MapType(T.StringType(), T.LongType()), True),
        T.StructField("config", T.StringType(), True),
    ]
)


def utc_now() -> dt.datetime:
    """Now, in UTC, zone-less (the session time zone is UTC)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def table_exists(spark: SparkSession, qualified_name: str) -> bool:
    return spark.catalog.tableExists(qualified_name)


def require_columns(
    spark: SparkSession, qualified_name: str, expected: Mapping[str, Iterable[str]]
) -> DataFrame:
    """The table as a DataFrame, after checking it has each column with an accepted type.

    ``expected`` maps a column to the Spark SQL type names it may have
    (``simpleString()`` form: ``bigint``, ``timestamp``...). Raises SchemaError
    naming the table and column otherwise.
    """
    if not table_exists(spark, qualified_name):
        raise SchemaError(f"table {qualified_name} does not exist")
    df = spark.table(qualified_name)
    actual = {f.name.lower(): f.dataType.simpleString() for f in df.schema.fields}
    for column, accepted in expected.items():
        accepted = tuple(accepted)
        if column.lower() not in actual:
            raise SchemaError(
                f"table {qualified_name} has no column {column!r} (expected type "
                f"{' or '.join(accepted)}); it has {sorted(actual)}"
            )
        if actual[column.lower()] not in accepted:
            raise SchemaError(
                f"table {qualified_name} column {column!r} has type {actual[column.lower()]}, "
                f"expected {' or '.join(accepted)}"
            )
    return df


def replace_where(
    df: DataFrame, qualified_name: str, predicate: str, partition_by: Iterable[str] = ()
) -> None:
    """Overwrite exactly the rows matching ``predicate`` with ``df`` (creating the table if needed).

    The idempotency primitive: re-running a date range replaces those partitions,
    never duplicates them. Delta checks that every written row matches ``predicate``.
    A new table is created empty first (see ensure_table), then written like any other.
    Raises WriteConflict when a concurrent run committed to those rows first.
    """
    spark = df.sparkSession
    ensure_table(spark, qualified_name, df.schema, partition_by=partition_by)
    with committing(qualified_name):
        _overwrite_where(held_before_commit(df), qualified_name, predicate)


def _overwrite_where(df: DataFrame, qualified_name: str, predicate: str) -> None:
    """Delta's replaceWhere through DataFrameWriterV2 (an overwrite by expression).

    Not ``saveAsTable(mode=overwrite)``: that path re-registers the table's schema in
    the Hive metastore on every write, which fails (logged as an ERROR with a long
    trace by Hive) whenever the written schema differs in nullability from the
    catalog's, as literal columns do.
    """
    df.writeTo(qualified_name).overwrite(F.expr(predicate))


def date_range_predicate(start: dt.date, end: dt.date, column: str = "dt") -> str:
    """``dt`` in [start, end] as SQL text, for Delta's ``replaceWhere`` (which takes text only).

    The one predicate built as text: its values are ``datetime.date`` objects (the CLI parses
    --start/--end with ``date.fromisoformat``), rendered by ``isoformat`` into digits and
    dashes, and the column is a fixed internal name; anything else is refused.
    """
    for value in (start, end):
        if not isinstance(value, dt.date) or isinstance(value, dt.datetime):
            raise TypeError(f"date_range_predicate takes datetime.date values, got {value!r}")
    if not column.isidentifier():
        raise ValueError(f"not a plain column name: {column!r}")
    return f"{column} >= DATE'{start.isoformat()}' AND {column} <= DATE'{end.isoformat()}'"


def ensure_table(
    spark: SparkSession,
    qualified_name: str,
    schema: T.StructType | str,
    properties: Mapping[str, str] | None = None,
    partition_by: Iterable[str] = (),
) -> None:
    """Create the Delta table empty (``schema``: a StructType or DDL) unless it exists.

    Tables are only ever created empty, and data written after: creating one commits its
    first Delta version and then registers it in the catalog, so a run killed between the
    two leaves an empty folder behind, which the next run moves aside
    (clear_orphaned_location) instead of failing on it. Two runs may create the table at
    once: the one that loses the race finds it made.
    """
    if table_exists(spark, qualified_name):
        return
    clear_orphaned_location(spark, qualified_name)
    writer = spark.createDataFrame([], schema).write.format("delta")
    for key, value in (properties or {}).items():
        writer = writer.option(key, value)
    partition_by = list(partition_by)
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    try:
        with committing(qualified_name):
            writer.saveAsTable(qualified_name)
    except WriteConflict:
        if not table_exists(spark, qualified_name):
            raise


def clear_orphaned_location(spark: SparkSession, qualified_name: str) -> str | None:
    """Move aside what a run killed while creating
    ``qualified_name`` left in its folder; the new path, or None.

    Spark refuses to create a managed table where a folder exists
    (DELTA_CREATE_TABLE_WITH_NON_EMPTY_LOCATION). A folder with no Delta commit yet, or
    holding only an empty table's first commit, is what such a run leaves: it is renamed
    (kept, not deleted). Anything more is not for a job to guess about: SchemaError.
    """
    database, name = qualified_name.split(".")
    location = f"{spark.catalog.getDatabase(database).locationUri.rstrip('/')}/{name.lower()}"
    jvm = spark.sparkContext._jvm
    assert jvm is not None  # set on the driver while the session runs
    hadoop_path = jvm.org.apache.hadoop.fs.Path
    path = hadoop_path(location)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.exists(path):
        return None
    log_dir = hadoop_path(f"{location}/_delta_log")
    commits = (
        [c for c in (s.getPath().getName() for s in fs.listStatus(log_dir)) if c.endswith(".json")]
        if fs.exists(log_dir)
        else []
    )
    uncommitted = not commits  # files of a write killed before its first commit: no table at all
    empty_create = (
        commits == [f"{0:020d}.json"]
        and spark.read.format("delta").load(location).limit(1).count() == 0
    )
    if not (uncommitted or empty_create):
        raise SchemaError(
            f"table {qualified_name} is not in the catalog, but its folder {location} holds data: "
            "move the folder away (or register it: CREATE TABLE ... USING delta LOCATION) and run "
            "the job again"
        )
    aside = f"{location}.orphaned-{utc_now():%Y%m%dT%H%M%S%f}"
    if not fs.rename(path, hadoop_path(aside)):
        raise RuntimeError(
            f"table {qualified_name}: cannot move the orphaned folder {location} aside to {aside}"
        )
    log.warning(
        "table %s: %s held what a run killed while creating the table left; moved to %s",
        qualified_name,
        location,
        aside,
    )
    return aside


def _reject_rows(rejects: DataFrame, stage: str, run_id: str) -> DataFrame:
    """``rejects`` (key, reason, detail, dt) in the rejects table's shape."""
    return rejects.select(
        F.lit(stage).alias("stage"),
        F.col("key").cast("string"),
        F.col("reason").cast("string"),
        F.col("detail").cast("string"),
        F.col("dt").cast("date"),
        F.lit(run_id).alias("run_id"),
    )


def write_rejects(
    spark: SparkSession,
    rejects_table: str,
    rejects: DataFrame,
    stage: str,
    run_id: str,
    scope_predicate: str,
) -> None:
    """Replace the rejects of ``stage`` within ``scope_predicate`` by ``rejects``.

    ``rejects`` has columns key, reason, detail, dt. Scoping by stage and range
    makes a re-run replace its own rejects instead of adding them again.
    """
    ensure_table(spark, rejects_table, REJECTS_SCHEMA)
    rows = _reject_rows(rejects, stage, run_id)
    predicate = f"stage = '{stage}' AND ({scope_predicate})"
    with committing(rejects_table):
        _overwrite_where(rows, rejects_table, predicate)


def merge_rejects(
    spark: SparkSession, rejects_table: str, rejects: DataFrame, stage: str, run_id: str
) -> None:
    """Upsert rejects of ``stage`` keyed by ``key`` (for stages that are not date-partitioned)."""
    ensure_table(spark, rejects_table, REJECTS_SCHEMA)
    if rejects.isEmpty():  # a MERGE costs a few Delta jobs even with nothing to merge
        return
    rows = _reject_rows(rejects, stage, run_id)
    with committing(rejects_table):
        (
            DeltaTable.forName(spark, rejects_table)
            .alias("t")
            .merge(rows.alias("s"), "t.stage = s.stage AND t.key = s.key AND t.reason = s.reason")
            .whenMatchedUpdateAll()
            .whenNotMatchedInsertAll()
            .execute()
        )


@dataclass
class RunRecord:
    """One row of the pipeline_runs table: what a stage did, in counts."""

    run_id: str
    stage: str
    start_dt: dt.date | None
    end_dt: dt.date | None
    started_at: dt.datetime
    metrics: dict[str, int] = field(default_factory=dict)
    config: str | None = None

    def save(self, spark: SparkSession, runs_table: str) -> None:
        ensure_table(spark, runs_table, RUNS_SCHEMA)
        row = (
            self.run_id,
            self.stage,
            self.start_dt,
            self.end_dt,
            self.started_at,
            utc_now(),
            {k: int(v) for k, v in self.metrics.items()},
            self.config,
        )
        spark.createDataFrame([row], RUNS_SCHEMA).write.format("delta").mode("append").saveAsTable(
            runs_table
        )

    def summary(self) -> str:
        width = max((len(k) for k in self.metrics), default=0)
        # dateless stages
        dates = f" ({self.start_dt} .. {self.end_dt})" if self.start_dt or self.end_dt else ""
        lines = [f"{self.stage} run {self.run_id}{dates}"]
        lines += [f"  {k:<{width}}  {v:>12,}" for k, v in self.metrics.items()]
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(
            {"run_id": self.run_id, "stage": self.stage, "metrics": self.metrics}, default=str
        )


def delta_version(spark: SparkSession, qualified_name: str) -> int:
    """The latest committed version of a Delta table."""
    return int(one_row(DeltaTable.forName(spark, qualified_name).history(1).select("version"))[0])
