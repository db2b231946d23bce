"""Pinning a Delta version of courier_training_rows:
files, row counts, shapes, errors, log replay."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from urllib.parse import urlparse

import pytest

from courier.data import SnapshotError, TrainingSnapshot, make_batch_source, pin_training_snapshot
from courier.data.decode import stable_key
from courier.data.delta_log import DataFile, DeltaLogError, read_version_state
from courier.data.snapshot import _row_counts

SCRATCH_DB = "courier_data_scratch"  # small hand-made tables, independent of the shop


@pytest.fixture(scope="module")
def scratch_db(spark) -> str:
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {SCRATCH_DB}")
    return SCRATCH_DB


def _paths(uris) -> set[str]:
    return {urlparse(u).path for u in uris}


def _spark_files(spark, table_or_path: str, version: int) -> set[str]:
    return _paths(spark.sql(f"SELECT * FROM {table_or_path} VERSION AS OF {version}").inputFiles())


def _epoch_keys(snapshot: TrainingSnapshot) -> tuple[set[int], int]:
    """Request keys yielded by one petastorm epoch over the whole snapshot, and the rows it read."""
    source = make_batch_source(
        snapshot,
        0,
        1,
        batch_size=4,
        seed=0,
        workers=1,
        kind="petastorm",
        shuffle_window=4,
        group_by_query=False,
    )
    keys = {int(k) for batch in source.batches(0) for k in batch["request_keys"]}
    return keys, source.last_epoch_stats.rows_read


def test_a_snapshot_records_the_version_its_files_and_rows(spark, shop):
    snap = shop.snapshot
    latest = spark.sql(f"DESCRIBE HISTORY {shop.table} LIMIT 1").first()["version"]
    assert snap.version == latest
    assert _paths(snap.files) == _spark_files(spark, shop.table, snap.version)
    assert snap.total_rows == sum(snap.file_rows) == spark.table(shop.table).count()
    assert max(snap.file_rows) <= shop.rows_per_group and min(snap.file_rows) > 0
    s = shop.cfg.samples
    assert (snap.l_pv, snap.l_click, snap.image_size) == (s.l_pv, s.l_click, s.image_size)
    assert TrainingSnapshot.from_dict(json.loads(json.dumps(snap.to_dict()))) == snap


def test_the_old_snapshot_still_reads_the_old_rows_after_a_rewrite(spark, shop):
    copy = f"{shop.db}.rows_rewritten"
    spark.sql(f"DROP TABLE IF EXISTS {copy}")
    spark.conf.set("spark.sql.files.maxRecordsPerFile", str(shop.rows_per_group))
    try:
        spark.sql(
            f"CREATE TABLE {copy} USING DELTA PARTITIONED BY (dt) AS SELECT * FROM {shop.table}"
        )
        old = pin_training_snapshot(spark, copy)
        day = "2026-01-02"
        (
            spark.table(copy)
            .where(f"dt = DATE'{day}'")
            .limit(3)
            .write.format("delta")
            .mode("overwrite")
            .option("replaceWhere", f"dt = DATE'{day}'")
            .saveAsTable(copy)
        )
    finally:
        spark.conf.unset("spark.sql.files.maxRecordsPerFile")
    new = pin_training_snapshot(spark, copy)
    assert (old.version, new.version) == (0, 1)
    assert new.total_rows == spark.table(copy).count() < old.total_rows
    assert pin_training_snapshot(spark, copy, version=0) == old

    old_rows = spark.sql(f"SELECT request_id, dt FROM {copy} VERSION AS OF 0").collect()
    old_keys = {stable_key(r["request_id"]) for r in old_rows}
    gone = {stable_key(r["request_id"]) for r in old_rows if str(r["dt"]) == day} - {
        stable_key(r["request_id"]) for r in spark.table(copy).select("request_id").collect()
    }
    keys, rows_read = _epoch_keys(old)
    assert rows_read == old.total_rows == len(old_rows)
    assert keys <= old_keys and keys & gone  # rows only the old version has are still read
    new_keys, _ = _epoch_keys(new)
    assert not new_keys & gone


def test_pinning_errors_name_the_table(spark, shop):
    with pytest.raises(SnapshotError, match=f"{shop.db}.no_such_table does not exist"):
        pin_training_snapshot(spark, f"{shop.db}.no_such_table")
    with pytest.raises(SnapshotError, match=rf"{shop.table} has versions 0\.\.\d+, not 999"):
        pin_training_snapshot(spark, shop.table, version=999)
    with pytest.raises(
        SnapshotError, match=rf"{shop.table} version \d+ has no rows for dt 2030-01-01"
    ):
        pin_training_snapshot(spark, shop.table, dates=(dt.date(2030, 1, 1), dt.date(2030, 1, 2)))


def test_dates_keep_only_their_partitions(spark, shop):
    day = dt.date(2026, 1, 2)
    snap = pin_training_snapshot(spark, shop.table, dates=(day, day))
    assert snap.total_rows == spark.table(shop.table).where(f"dt = DATE'{day}'").count() > 0
    assert all(f"dt={day}" in f for f in snap.files)


def test_row_counts_fall_back_to_parquet_footers(shop):
    snap = shop.snapshot
    files = [DataFile(uri, {}, 0, None, False) for uri in snap.files[:3]]
    assert _row_counts(files) == list(snap.file_rows[:3])


def test_log_replay_matches_delta_across_checkpoints_and_log_cleanup(spark, scratch_db, tmp_path):
    name = f"{scratch_db}.log_replay"
    spark.sql(f"DROP TABLE IF EXISTS {name}")
    location = f"file:{tmp_path}/log_replay"
    spark.sql(
        f"CREATE TABLE {name} (id BIGINT, dt DATE) USING DELTA PARTITIONED BY (dt) "
        f"LOCATION '{location}' TBLPROPERTIES ('delta.checkpointInterval' = '2')"
    )
    for day in (1, 2):
        spark.sql(f"INSERT INTO {name} SELECT id, DATE'2026-01-0{day}' FROM range({day * 10})")
    spark.sql(f"DELETE FROM {name} WHERE dt = DATE'2026-01-02'")
    spark.sql(f"INSERT INTO {name} SELECT id, DATE'2026-01-04' FROM range(7)")  # versions 0..4
    log = Path(tmp_path) / "log_replay" / "_delta_log"
    assert (log / f"{4:020d}.checkpoint.parquet").exists()
    states = {version: read_version_state(location, version) for version in range(5)}
    for version in (1, 2, 3, 4):  # before, at and after the checkpoints of versions 2 and 4
        assert _paths(f.uri for f in states[version].files) == _spark_files(
            spark, f"delta.`{location}`", version
        )
    assert sum(f.num_records for f in states[4].files) == spark.table(name).count() == 10 + 7
    # After log cleanup only the checkpoint can rebuild a version; older ones are refused clearly.
    for version in range(2):
        (log / f"{version:020d}.json").unlink()
    assert read_version_state(location, 3) == states[3]  # checkpoint 2 + commit 3
    assert read_version_state(location, 4) == states[4]
    with pytest.raises(DeltaLogError, match="cannot reconstruct version 1"):
        read_version_state(location, 1)


def test_tables_whose_parquet_differs_from_their_rows_are_refused(spark, scratch_db):
    dv = f"{scratch_db}.with_deletion_vectors"
    spark.sql(f"DROP TABLE IF EXISTS {dv}")
    spark.sql(
        f"CREATE TABLE {dv} (id BIGINT) USING DELTA TBLPROPERTIES ('delta.enableDeletionVectors' = "
        "'true')"
    )
    spark.sql(f"INSERT INTO {dv} SELECT id FROM range(20)")
    spark.sql(f"DELETE FROM {dv} WHERE id = 3")
    with pytest.raises(SnapshotError, match=f"{dv} version 2 has 1 files with deletion vectors"):
        pin_training_snapshot(spark, dv)
    mapped = f"{scratch_db}.with_column_mapping"
    spark.sql(f"DROP TABLE IF EXISTS {mapped}")
    spark.sql(
        f"CREATE TABLE {mapped} (id BIGINT) USING DELTA TBLPROPERTIES ('delta.columnMapping.mode' "
        "= 'name', 'delta.minReaderVersion' = '2', 'delta.minWriterVersion' = '5')"
    )
    spark.sql(f"INSERT INTO {mapped} VALUES (1)")
    with pytest.raises(SnapshotError, match=f"{mapped} uses column mapping"):
        pin_training_snapshot(spark, mapped)


def test_snapshot_fields_must_agree():
    with pytest.raises(ValueError, match="total_rows"):
        TrainingSnapshot("t", 0, ("file:/a",), (3,), 4, 5, 5, 32)
    snap = TrainingSnapshot("t", 0, ("file:/a",), (3,), 3, 5, 5, 32)
    with pytest.raises(ValueError, match="row counts"):
        dataclasses.replace(snap, file_rows=(3, 4))
