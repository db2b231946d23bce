"""The data files of one Delta table version, read from its transaction log.

The training loader reads the Parquet files of a pinned version directly (no
Spark in the training processes), so it needs what Delta's own reader knows:
which files make up version ``v`` and how many rows each holds. This module
replays the log as the Delta protocol specifies (the newest classic checkpoint
at or before ``v``, then the JSON commits up to ``v``) and reports the
table-level facts that decide whether raw Parquet reading is faithful
(column mapping, deletion vectors).

Protocol: https://github.com/delta-io/delta/blob/master/PROTOCOL.md
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from courier.data.fs import filesystem_and_path, join_uri

_COMMIT = re.compile(r"^(\d{20})\.json$")
_CLASSIC_CHECKPOINT = re.compile(r"^(\d{20})\.checkpoint(?:\.(\d{10})\.(\d{10}))?\.parquet$")


class DeltaLogError(RuntimeError):
    """The log cannot be replayed to the requested version (missing commits, unsupported format)."""


@dataclass(frozen=True)
class DataFile:
    """One live data file of a table version (an ``add`` action that no later action removed)."""

    uri: str  # absolute URI, decoded (file:/..., s3a://...)
    partition_values: dict[str, str | None]
    size: int
    num_records: int | None  # from the add action's stats; None when stats were not written
    has_deletion_vector: bool


@dataclass(frozen=True)
class DeltaVersionState:
    """What the log says about one version of a table."""

    location: str
    version: int
    files: tuple[DataFile, ...]
    partition_columns: tuple[str, ...]
    configuration: dict[str, str] = field(default_factory=dict)
    min_reader_version: int = 1
    reader_features: tuple[str, ...] = ()


def _log_listing(fs: pafs.FileSystem, log_path: str) -> list[str]:
    try:
        infos = fs.get_file_info(pafs.FileSelector(log_path, allow_not_found=False))
    except (FileNotFoundError, OSError) as exc:
        raise DeltaLogError(f"no Delta log at {log_path}: {exc}") from exc
    return [info.base_name for info in infos if info.type == pafs.FileType.File]


def latest_version(location: str) -> int:
    """The newest commit version found in the log folder of the table at ``location``."""
    fs, path = filesystem_and_path(location)
    versions = [
        int(m.group(1))
        for name in _log_listing(fs, f"{path}/_delta_log")
        if (m := _COMMIT.match(name))
    ]
    if not versions:
        raise DeltaLogError(f"no commits in {location}/_delta_log")
    return max(versions)


def _pick_checkpoint(names: Iterable[str], version: int) -> tuple[int, list[str]] | None:
    """The newest complete classic (single or multi-part) checkpoint at or before ``version``."""
    parts: dict[tuple[int, int], list[str]] = {}
    for name in names:
        m = _CLASSIC_CHECKPOINT.match(name)
        if not m:
            continue
        v = int(m.group(1))
        if v > version:
            continue
        n_parts = int(m.group(3)) if m.group(3) else 1
        parts.setdefault((v, n_parts), []).append(name)
    complete = [(v, sorted(files)) for (v, n), files in parts.items() if len(files) == n]
    return max(complete) if complete else None


def _read_checkpoint(
    fs: pafs.FileSystem, log_path: str, files: list[str]
) -> Iterator[dict[str, Any]]:
    """Actions of a classic checkpoint as the same dicts a JSON commit line holds."""
    for name in files:
        with fs.open_input_file(f"{log_path}/{name}") as handle:
            pf = pq.ParquetFile(handle)
            columns = [
                c for c in ("add", "remove", "metaData", "protocol") if c in pf.schema_arrow.names
            ]
            table = pf.read(columns=columns)
        for column in columns:
            for value in table.column(column).to_pylist():
                if value is not None:
                    yield {column: _map_fields_to_dicts(value)}


def _map_fields_to_dicts(action: dict[str, Any]) -> dict[str, Any]:
    # Parquet MAP columns come back from pyarrow as lists of (key, value) pairs.
    for key in ("partitionValues", "configuration", "tags"):
        if isinstance(action.get(key), list):
            action[key] = dict(action[key])
    return action


def _read_commit(fs: pafs.FileSystem, log_path: str, version: int) -> Iterator[dict[str, Any]]:
    try:
        with fs.open_input_stream(f"{log_path}/{version:020d}.json") as handle:
            text = handle.read().decode("utf-8")
    except FileNotFoundError as exc:
        raise DeltaLogError(f"commit {version} is missing from {log_path}") from exc
    for line in text.splitlines():
        if line.strip():
            yield json.loads(line)


def _deletion_vector_id(add: dict[str, Any]) -> str | None:
    dv = add.get("deletionVector")
    if not dv:
        return None
    return f"{dv.get('storageType')}{dv.get('pathOrInlineDv')}@{dv.get('offset')}"


def _absolute_uri(location: str, path: str) -> str:
    # Log paths are URI-encoded, relative to the table root unless they carry a scheme.
    if urlparse(path).scheme:
        return unquote(path)
    return join_uri(location, unquote(path))


def _num_records(add: dict[str, Any]) -> int | None:
    stats = add.get("stats")
    if not stats:
        return None
    value = json.loads(stats).get("numRecords")
    return None if value is None else int(value)


def read_version_state(location: str, version: int) -> DeltaVersionState:
    """Replay the log of the Delta table at ``location`` up to ``version`` (inclusive).

    Raises DeltaLogError if the commits needed are gone (log cleanup) and no
    classic checkpoint covers them.
    """
    if version < 0:
        raise DeltaLogError(f"version must be >= 0, got {version}")
    fs, root = filesystem_and_path(location)
    log_path = f"{root}/_delta_log"
    names = _log_listing(fs, log_path)
    checkpoint = _pick_checkpoint(names, version)
    first_commit = 0
    actions: list[Iterator[dict[str, Any]]] = []
    if checkpoint is not None:
        checkpoint_version, checkpoint_files = checkpoint
        actions.append(_read_checkpoint(fs, log_path, checkpoint_files))
        first_commit = checkpoint_version + 1
    commits = {int(m.group(1)) for name in names if (m := _COMMIT.match(name))}
    missing = [v for v in range(first_commit, version + 1) if v not in commits]
    if missing:
        raise DeltaLogError(
            f"cannot reconstruct version {version} of {location}: commits {missing[:5]}... are "
            "missing and no classic checkpoint covers them (log cleaned up, or only v2 checkpoints)"
        )
    actions.extend(_read_commit(fs, log_path, v) for v in range(first_commit, version + 1))

    live: dict[tuple[str, str | None], dict[str, Any]] = {}
    metadata: dict[str, Any] | None = None
    protocol: dict[str, Any] = {}
    # Later actions win: the checkpoint first, then commits in version order.
    for stream in actions:
        for action in stream:
            if "add" in action:
                add = action["add"]
                live[(add["path"], _deletion_vector_id(add))] = add
            elif "remove" in action:
                remove = action["remove"]
                live.pop((remove["path"], _deletion_vector_id(remove)), None)
            elif "metaData" in action:
                metadata = action["metaData"]
            elif "protocol" in action:
                protocol = action["protocol"]
    if metadata is None:
        raise DeltaLogError(f"no metaData action up to version {version} of {location}")

    files = tuple(
        DataFile(
            uri=_absolute_uri(location, add["path"]),
            partition_values=dict(add.get("partitionValues") or {}),
            size=int(add.get("size") or 0),
            num_records=_num_records(add),
            has_deletion_vector=_deletion_vector_id(add) is not None,
        )
        for add in live.values()
    )
    return DeltaVersionState(
        location=location,
        version=version,
        files=files,
        partition_columns=tuple(metadata.get("partitionColumns") or ()),
        configuration=dict(metadata.get("configuration") or {}),
        min_reader_version=int(protocol.get("minReaderVersion", 1)),
        reader_features=tuple(protocol.get("readerFeatures") or ()),
    )
