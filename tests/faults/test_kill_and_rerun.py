"""kill -9 part-way through a stage, then the same command again: the tables equal an
uninterrupted run's, with no duplicates, and what the killed run left is whole Delta
versions only (training: tests/train/test_train_resume.py and test_train_horovod.py)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from courier.config import PROJECT_ROOT, CourierConfig
from courier.features.assign import assign_items
from courier.features.cluster import cluster_embeddings
from courier.features.embed import _partitions, embed_items
from courier.samples.build import build_samples
from tests.conftest import TRAIN_DB, TRAIN_START
from tests.faults.conftest import (
    CourierProcess,
    assert_same_rows,
    built_rows,
    commits,
    delta_log,
    restore,
    table_rows,
    table_versions,
)

pytestmark = pytest.mark.slow

# Two of the training shop's four days: the build's cost is in its days.
START, END = TRAIN_START, TRAIN_START + dt.timedelta(days=1)


@pytest.fixture(scope="module")
def build_cfg(spark, feature_db) -> CourierConfig:
    """A copy of the training shop's raw tables, nothing built yet."""
    cfg = feature_db("courier_faults_build")
    spark.sql(f"DROP TABLE {cfg.tables.qualified('item_images')}")
    return cfg


def test_build_samples_killed_after_writing_samples_then_rerun(
    spark, build_cfg: CourierConfig, tmp_path
):
    """Killed between courier_samples and courier_training_rows; the reference is the training
    shop, built by the same code and config from the same raw tables."""
    t = build_cfg.tables
    job = CourierProcess(
        build_cfg, tmp_path, "build-samples", "--start", str(START), "--end", str(END)
    )
    samples_log = delta_log(spark, build_cfg, "courier_samples")
    job.kill_when(lambda: 1 in commits(samples_log))  # version 0 is the empty table, 1 its data

    # What the killed run left: whole commits. Its samples are all there, its training rows are not.
    assert not spark.catalog.tableExists(t.qualified("courier_training_rows"))
    reference = built_rows(spark, TRAIN_DB, START, END)
    assert_same_rows(
        table_rows(spark, t.qualified("courier_samples")),
        reference["courier_samples"],
        "courier_samples after the kill",
    )
    finished = {r["stage"] for r in spark.table(t.qualified("pipeline_runs")).collect()}
    assert finished == {"item_images"}, "the killed build must not be recorded as finished"

    build_samples(spark, build_cfg, START, END)
    rebuilt = built_rows(spark, t.database, START, END)
    for name, rows in reference.items():
        assert_same_rows(rebuilt[name], rows, name)


@pytest.fixture(scope="module")
def features_cfg(spark, feature_db, registered_encoder: str) -> CourierConfig:
    """A copy of the training shop with its item_images, and the test encoder registered."""
    return feature_db("courier_faults_features")


# The killed jobs' progress, from their own logs: Spark's TaskSetManager at INFO prints
# "Finished task 3.0 in stage 7.0 (TID 21) in 812 ms on host (executor driver) (4/20)".
FINISHED_TASK = re.compile(r"Finished task \S+ in stage (\d+)\.\d+ .*\((\d+)/(\d+)\)\s*$")


def logging_tasks(cfg: CourierConfig, tmp: Path) -> CourierConfig:
    """``cfg`` with the project's JVM logging plus a line per finished Spark task."""
    conf = tmp / "log4j2-tasks.properties"
    conf.write_text(
        (PROJECT_ROOT / cfg.spark.log4j_config).read_text()
        + "\nlogger.tasks.name = org.apache.spark.scheduler.TaskSetManager"
        "\nlogger.tasks.level = info\n"
    )
    return cfg.replace([f"spark.log4j_config={conf}"])


def big_stage_progress(lines: list[str], small: int) -> tuple[int, int]:
    """(tasks finished, tasks) of the first stage of more than ``small`` tasks, by the job's log
    lines; (0, 0) before one has finished a task."""
    done: dict[int, tuple[int, int]] = {}
    for match in filter(None, map(FINISHED_TASK.search, list(lines))):
        stage, finished, tasks = map(int, match.groups())
        if tasks > small:
            done[stage] = max(done.get(stage, (0, tasks)), (finished, tasks))
    return done[min(done)] if done else (0, 0)


def test_embed_killed_while_embedding_then_rerun(spark, features_cfg: CourierConfig, tmp_path):
    """Yesterday's embeddings lack a third of the items and hold an older image of another third.
    Killed when the embedding UDF has finished some of its tasks and not all, the run leaves
    yesterday's table as it was; the re-run embeds exactly the missing and changed items."""
    table = features_cfg.tables.qualified("item_embeddings")
    embed_items(spark, features_cfg)  # the uninterrupted run, from nothing
    expected = table_rows(spark, table)
    spark.sql(f"DELETE FROM {table} WHERE item_id % 3 = 0")
    spark.sql(
        f"UPDATE {table} SET content_hash = concat('older-', content_hash), "
        "embedding = transform(embedding, v -> CAST(0 AS FLOAT)) WHERE item_id % 3 = 1"
    )
    yesterday = table_rows(spark, table)
    changed = spark.table(table).where("item_id % 3 = 1").count()
    to_embed = len(expected) - len(yesterday) + changed
    assert 0 < changed < to_embed < len(expected)

    # One image per Arrow batch, 8 per task (courier.features.embed._partitions): the UDF's stage
    # has 20 tasks of 8 batches here, and its first finished task comes well before its last.
    cfg = logging_tasks(
        features_cfg.replace(["embed.arrow_batch_rows=1", "embed.batch_size=1"]), tmp_path
    )
    tasks = _partitions(spark, to_embed, cfg.embed.arrow_batch_rows)
    # Every stage before the UDF's reads a few small
    # files or a shuffle into spark.shuffle_partitions.
    small = max(spark.sparkContext.defaultParallelism, cfg.spark.shuffle_partitions)
    assert tasks > small
    job = CourierProcess(cfg, tmp_path, "embed")
    job.kill_when(lambda: big_stage_progress(job.lines, small)[0] >= 1)
    done, of = big_stage_progress(job.lines, small)
    assert of == tasks, (
        f"the killed run's UDF stage has {of} tasks, not those of the {to_embed} items to embed"
    )
    assert 0 < done < tasks, f"killed with {done} of the UDF's {tasks} tasks finished"
    assert_same_rows(table_rows(spark, table), yesterday, "item_embeddings after the kill")

    result = embed_items(spark, features_cfg)
    assert (result.record.metrics["embedded"], result.record.metrics["unchanged"]) == (
        to_embed,
        len(yesterday) - changed,
    )
    assert_same_rows(table_rows(spark, table), expected, "item_embeddings")


def written_after(log: Path, version: int) -> list[Path]:
    """The Parquet files in a table's folder written after its commit ``version``: while no later
    commit exists, a running write's (Delta writes its files into the folder, then commits)."""
    commit = log / f"{version:020d}.json"
    if not commit.exists():
        return []
    since = commit.stat().st_mtime_ns
    return [
        p
        for p in log.parent.rglob("*.parquet")
        if "_delta_log" not in p.parts and p.stat().st_mtime_ns > since
    ]


def test_assign_killed_during_its_merge_then_rerun(
    spark, features_cfg: CourierConfig, tmp_path, copy_embeddings
):
    t = features_cfg.tables
    # run alone, without the embed test
    if not spark.catalog.tableExists(t.qualified("item_embeddings")):
        copy_embeddings(features_cfg)
    cluster_embeddings(spark, features_cfg)
    features = t.qualified("item_image_features")
    before = table_versions(spark, [features])
    assign_items(spark, features_cfg)
    expected = table_rows(spark, features)
    restore(spark, before)

    # One row per file: the MERGE writes its files for seconds before it commits.
    job = CourierProcess(
        features_cfg.replace(["spark.conf.spark.sql.files.maxRecordsPerFile=1"]), tmp_path, "assign"
    )
    log = delta_log(spark, features_cfg, "item_image_features")
    # Killed while its MERGE writes: some of its files are there, its commit (version 1) is not
    # (version 0 is the empty table).
    job.kill_when(lambda: bool(written_after(log, 0)) and 1 not in commits(log))
    assert commits(log) == {0} and written_after(log, 0), "the kill did not come during the MERGE"
    assert spark.table(features).count() == 0  # version 0, the empty table: nothing half-published

    result = assign_items(spark, features_cfg)
    assert result.record.metrics["new_items"] == result.record.metrics["items_in"] == len(expected)
    assert_same_rows(table_rows(spark, features), expected, "item_image_features")
    current = spark.table(features).where("valid_to IS NULL")
    assert current.count() == current.select("item_id").distinct().count()
