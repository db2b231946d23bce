"""Airflow DAG: the courier pipeline, nightly, one spark-submit task per stage.

Drop this file (and the repository, installed on the workers) into the DAGs
folder. Each task is `spark-submit jobs/<stage>.py --profile <profile> ...`,
idempotent for its date, so retries and backfills never duplicate rows.
The steps themselves live in courier.schedule (tested without Airflow).
"""
from __future__ import annotations

import datetime as dt

from airflow import DAG
from airflow.operators.bash import BashOperator

from courier.schedule import NIGHTLY_STEPS, spark_submit_command

with DAG(
    dag_id="courier_nightly",
    schedule="@daily",
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=10)},
    params={"profile": "conf/cluster.yaml", "repo": "/opt/courier"},
    tags=["courier", "ml-features"],
) as dag:
    tasks = {
        step.task_id: BashOperator(
            task_id=step.task_id,
            bash_command=f"cd {{{{ params.repo }}}} && {spark_submit_command(step)}",
        )
        for step in NIGHTLY_STEPS
    }
    for step in NIGHTLY_STEPS:
        for upstream in step.upstream:
            tasks[upstream] >> tasks[step.task_id]
