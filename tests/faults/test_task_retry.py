"""A Spark task that fails part-way (its Python worker killed, as the OOM killer would) is
retried by Spark, and the stage finishes with the counts and values of an untroubled run."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from courier.config import CourierConfig
from courier.features.embed import embed_items
from tests.faults.conftest import assert_same_rows, table_rows, torch_workers

pytestmark = pytest.mark.slow
GROUP = "courier-faults-task-retry"


def _kill_first_busy_worker(killed: list[int], done: threading.Event) -> None:
    """SIGKILL the first Python worker of this session seen running the embed UDF's model."""
    while not done.is_set():
        busy = torch_workers(os.getpid(), busy=True)
        if busy:
            killed.append(busy[0].pid)
            os.kill(busy[0].pid, signal.SIGKILL)
            return
        time.sleep(0.05)


def _failed_tasks(spark) -> int:
    tracker = spark.sparkContext.statusTracker()
    stages = [
        sid for job in tracker.getJobIdsForGroup(GROUP) for sid in tracker.getJobInfo(job).stageIds
    ]
    return sum(
        info.numFailedTasks for info in map(tracker.getStageInfo, stages) if info is not None
    )


def test_a_killed_python_worker_is_retried_and_embed_finishes(
    spark, feature_db, registered_encoder: str
):
    # The session's master is local[2,2]: local mode retries a failed task only if asked, as the
    # embedded default (local[*,2]) does.
    assert spark.sparkContext.master == "local[2,2]"
    cfg: CourierConfig = feature_db("courier_faults_task_retry").replace(
        ["embed.arrow_batch_rows=16", "embed.batch_size=16"]
    )  # many batches per task: the kill lands mid-task
    items = spark.table(cfg.tables.qualified("item_images")).count()
    killed: list[int] = []
    done = threading.Event()
    killer = threading.Thread(target=_kill_first_busy_worker, args=(killed, done), daemon=True)
    spark.sparkContext.setJobGroup(GROUP, "embed with one of its Python workers killed")
    killer.start()
    try:
        result = embed_items(spark, cfg)
    finally:
        done.set()
        killer.join(timeout=30)
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    assert killed, "no busy embedding worker was seen"
    assert _failed_tasks(spark) >= 1, "the killed worker's task did not fail (nothing was retried)"

    table = cfg.tables.qualified("item_embeddings")
    after_retry = table_rows(spark, table)
    assert len(after_retry) == items
    assert result.record.metrics["embedded"] == items and result.record.metrics["items_in"] == items
    # The same embeddings as an untroubled run of the same model over the same images.
    embed_items(spark, cfg, full=True)
    assert_same_rows(table_rows(spark, table), after_retry, "item_embeddings")
