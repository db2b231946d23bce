"""A Spark task that fails part-way (its Python worker killed, as the OOM killer would) is
retried by Spark, and the stage finishes with the counts and values of an untroubled run."""
from __future__ import annotations

import os
import signal
import time

import pytest

from courier.config import CourierConfig
from courier.features.embed import embed_items
from tests.faults.conftest import CourierProcess, assert_same_rows, table_rows, torch_workers

pytestmark = pytest.mark.slow


def test_a_killed_python_worker_is_retried_and_embed_finishes(spark, feature_db, registered_encoder: str, tmp_path):
    cfg: CourierConfig = feature_db("courier_faults_task_retry").replace(
        ["spark.master=local[2,2]",        # local mode gives a failed task a second attempt only if asked
         "embed.arrow_batch_rows=16", "embed.batch_size=16"])  # many batches per task: the kill lands mid-task
    items = spark.table(cfg.tables.qualified("item_images")).count()
    job = CourierProcess(cfg, tmp_path, "embed")
    deadline, killed = time.monotonic() + 600, None
    while killed is None and job.proc.poll() is None and time.monotonic() < deadline:
        busy = torch_workers(job.proc.pid, busy=True)
        if busy:
            killed = busy[0].pid
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    assert killed is not None, f"no busy embedding worker was seen:\n{job.output[-3000:]}"
    assert job.wait() == 0, job.output[-4000:]
    assert "Lost task" in job.output, "the killed worker's task did not fail (nothing was retried)"

    table = cfg.tables.qualified("item_embeddings")
    after_retry = table_rows(spark, table)
    assert len(after_retry) == items
    run = spark.table(cfg.tables.qualified("pipeline_runs")).where("stage = 'embed'").first()
    assert run["metrics"]["embedded"] == items and run["metrics"]["items_in"] == items
    # The same embeddings as an untroubled run of the same model over the same images.
    embed_items(spark, cfg, full=True)
    assert_same_rows(table_rows(spark, table), after_retry, "item_embeddings")
