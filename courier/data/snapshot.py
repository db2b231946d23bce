"""Pin one Delta version of courier_training_rows: the exact files training reads and records.

A training run must be reproducible and auditable: which rows did model X see?
``pin_training_snapshot`` resolves a version (latest by default) to its data
files and per-file row counts once, on the driver; the snapshot travels to the
training processes as a dict and is logged with the run. Later writes to the
table (a new version, even a VACUUM of other versions) do not change what a
pinned snapshot reads.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from courier.data.delta_log import (
    DataFile,
    DeltaLogError,
    DeltaVersionState,
    latest_version,
    read_version_state,
)
from courier.data.fs import filesystem_and_path
from courier.sql_files import quote_identifier

if TYPE_CHECKING:  # training processes import this module only for TrainingSnapshot: no Spark there
    from pyspark.sql import SparkSession

# Columns the loader reads; the snapshot checks them once so a reader never meets a surprise.
LOADER_COLUMNS = (
    "request_id",
    "query",
    "pv_item_ids",
    "pv_labels",
    "click_item_ids",
    "pv_images",
    "click_images",
)
# Reader features whose presence alone does not change what the raw Parquet files hold.
_HARMLESS_READER_FEATURES = {
    "timestampNtz",
    "vacuumProtocolCheck",
    "v2Checkpoint",
    "deletionVectors",
    "columnMapping",
}


class SnapshotError(ValueError):
    """The table or version cannot be pinned for training; the message names the table."""


@dataclass(frozen=True)
class TrainingSnapshot:
    """A pinned Delta version of courier_training_rows: what training reads and records."""

    table: str  # qualified name, e.g. courier.courier_training_rows
    version: int  # Delta version
    files: tuple[str, ...]  # absolute file URIs of that version's data files (file:/..., s3a://...)
    # rows per file (Delta log stats numRecords; Parquet footers as fallback)
    file_rows: tuple[int, ...]
    total_rows: int
    l_pv: int
    l_click: int
    image_size: int

    def __post_init__(self) -> None:
        if len(self.files) != len(self.file_rows):
            raise ValueError(
                f"snapshot of {self.table}: {len(self.files)} files but {len(self.file_rows)} row "
                "counts"
            )
        if any(n < 0 for n in self.file_rows):
            raise ValueError(f"snapshot of {self.table}: negative row count in file_rows")
        if self.total_rows != sum(self.file_rows):
            raise ValueError(
                f"snapshot of {self.table}: total_rows {self.total_rows} != sum(file_rows) "
                f"{sum(self.file_rows)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (for spawned training processes and MLflow)."""
        d = asdict(self)
        d["files"] = list(self.files)
        d["file_rows"] = list(self.file_rows)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainingSnapshot:
        """Inverse of ``to_dict``."""
        return cls(
            table=str(d["table"]),
            version=int(d["version"]),
            files=tuple(str(f) for f in d["files"]),
            file_rows=tuple(int(n) for n in d["file_rows"]),
            total_rows=int(d["total_rows"]),
            l_pv=int(d["l_pv"]),
            l_click=int(d["l_click"]),
            image_size=int(d["image_size"]),
        )

    def summary(self) -> dict[str, Any]:
        """Small params for MLflow (the file list itself belongs in an artifact)."""
        return {
            "table": self.table,
            "version": self.version,
            "files": len(self.files),
            "rows": self.total_rows,
            "l_pv": self.l_pv,
            "l_click": self.l_click,
            "image_size": self.image_size,
        }


def pin_training_snapshot(
    spark: SparkSession,
    table: str,
    version: int | None = None,
    dates: tuple[dt.date, dt.date] | None = None,
) -> TrainingSnapshot:
    """Resolve ``table`` at ``version`` (None = latest) to a TrainingSnapshot.

    ``dates`` = (start, end), inclusive, keeps only those ``dt`` partitions.
    Raises SnapshotError naming the table when it does not exist, is not Delta,
    the version is out of range or unreadable, the selection holds no rows, or
    the table uses a Delta feature that makes its raw Parquet files differ from
    its rows (column mapping, deletion vectors in use).
    """
    if not spark.catalog.tableExists(table):
        raise SnapshotError(f"table {table} does not exist")
    # DESCRIBE TABLE EXTENDED is a catalog lookup;
    # DESCRIBE DETAIL would load a Delta snapshot (slow, cold).
    info = {
        r["col_name"]: r["data_type"]
        for r in spark.sql(f"DESCRIBE TABLE EXTENDED {quote_identifier(table)}").collect()
    }
    if str(info.get("Provider", "")).lower() != "delta":
        raise SnapshotError(f"table {table} is {info.get('Provider')}, not Delta")
    location = str(info["Location"])
    try:
        latest = latest_version(location)
    except DeltaLogError as exc:
        raise SnapshotError(f"table {table}: {exc}") from exc
    if version is None:
        version = latest
    if not 0 <= version <= latest:
        raise SnapshotError(f"table {table} has versions 0..{latest}, not {version}")
    try:
        state = read_version_state(location, version)
    except DeltaLogError as exc:
        raise SnapshotError(f"table {table} version {version}: {exc}") from exc
    _check_readable_as_parquet(table, state)

    files = _select_dates(table, state, dates)
    rows = _row_counts(files)
    chosen = sorted(
        ((f, n) for f, n in zip(files, rows, strict=True) if n > 0),
        key=lambda fn: (
            tuple(sorted((k, v or "") for k, v in fn[0].partition_values.items())),
            fn[0].uri,
        ),
    )
    where = f" for dt {dates[0]}..{dates[1]}" if dates else ""
    if not chosen:
        raise SnapshotError(f"table {table} version {version} has no rows{where}")
    _check_files_exist(table, version, [f.uri for f, _ in chosen])
    # The smallest file is the cheapest to open for the shape probe.
    probe = min(chosen, key=lambda fn: (fn[1], fn[0].size))[0]
    l_pv, l_click, image_size = _probe_shapes(table, probe.uri)
    return TrainingSnapshot(
        table=table,
        version=version,
        files=tuple(f.uri for f, _ in chosen),
        file_rows=tuple(n for _, n in chosen),
        total_rows=sum(n for _, n in chosen),
        l_pv=l_pv,
        l_click=l_click,
        image_size=image_size,
    )


def _check_readable_as_parquet(table: str, state: DeltaVersionState) -> None:
    mode = state.configuration.get("delta.columnMapping.mode", "none")
    if mode != "none":
        raise SnapshotError(
            f"table {table} uses column mapping ({mode}): its Parquet column names are not "
            "the table's; the loader reads raw Parquet and cannot follow the mapping"
        )
    unknown = sorted(set(state.reader_features) - _HARMLESS_READER_FEATURES)
    if unknown:
        raise SnapshotError(
            f"table {table} version {state.version} needs Delta reader features {unknown}, "
            "which the raw-Parquet loader does not implement"
        )
    with_dv = [f.uri for f in state.files if f.has_deletion_vector]
    if with_dv:
        raise SnapshotError(
            f"table {table} version {state.version} has {len(with_dv)} files with deletion vectors "
            f"(e.g. {with_dv[0]}): their Parquet still holds deleted rows. Run REORG TABLE {table} "
            "APPLY (PURGE) and pin the new version"
        )


def _select_dates(
    table: str, state: DeltaVersionState, dates: tuple[dt.date, dt.date] | None
) -> list[DataFile]:
    if dates is None:
        return list(state.files)
    if "dt" not in state.partition_columns:
        raise SnapshotError(
            f"table {table} is not partitioned by dt (partitions: {state.partition_columns}); "
            "cannot restrict to dates"
        )
    start, end = (d.isoformat() for d in dates)
    # ISO dates compare correctly as strings.
    return [
        f
        for f in state.files
        if f.partition_values.get("dt") is not None
        and start <= str(f.partition_values["dt"]) <= end
    ]


def _footer_rows(uri: str) -> int:
    fs, path = filesystem_and_path(uri)
    with fs.open_input_file(path) as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def _row_counts(files: list[DataFile]) -> list[int]:
    """numRecords from the log; the Parquet footer where a writer left no stats."""
    missing = [f.uri for f in files if f.num_records is None]
    from_footers: dict[str, int] = {}
    if missing:
        with ThreadPoolExecutor(max_workers=8) as pool:
            from_footers = dict(zip(missing, pool.map(_footer_rows, missing), strict=True))
    return [f.num_records if f.num_records is not None else from_footers[f.uri] for f in files]


def _check_files_exist(table: str, version: int, uris: list[str]) -> None:
    fs, _ = filesystem_and_path(uris[0])
    infos = fs.get_file_info([filesystem_and_path(u)[1] for u in uris])
    gone = [u for u, info in zip(uris, infos, strict=True) if info.type != pafs.FileType.File]
    if gone:
        raise SnapshotError(
            f"table {table} version {version}: {len(gone)} of its {len(uris)} data files are gone "
            f"(vacuumed?), e.g. {gone[0]}; pin a newer version"
        )


def _probe_shapes(table: str, uri: str) -> tuple[int, int, int]:
    """(l_pv, l_click, image_size) from the first row of ``uri`` and the first JPEG in it."""
    fs, path = filesystem_and_path(uri)
    with fs.open_input_file(path) as handle:
        pf = pq.ParquetFile(handle)
        missing = [c for c in LOADER_COLUMNS if c not in pf.schema_arrow.names]
        if missing:
            raise SnapshotError(f"table {table}: data file {uri} lacks columns {missing}")
        first = pf.read_row_group(
            0, columns=["pv_item_ids", "click_item_ids", "pv_images", "click_images"]
        )
    row = first.slice(0, 1).to_pylist()[0]
    l_pv, l_click = len(row["pv_item_ids"]), len(row["click_item_ids"])
    jpeg = next((b for b in row["pv_images"] + row["click_images"] if b), None)
    if jpeg is None:
        raise SnapshotError(f"table {table}: the first row of {uri} holds no image")
    with Image.open(io.BytesIO(jpeg)) as img:
        width, height = img.size
    if width != height:
        raise SnapshotError(
            f"table {table}: images must be square, found {width}x{height} in {uri}"
        )
    return l_pv, l_click, width
