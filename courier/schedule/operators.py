"""Airflow operators for the steps of courier.schedule
(imported only by the DAG files, in Airflow's venv).

Spark steps are the Spark provider's ``SparkSubmitOperator`` (the master comes from the
Airflow connection ``Deployment.spark_conn_id``; spark-submit from the worker's PATH);
Python steps a ``BashOperator`` whose exit code ``Step.skip_exit_code`` means "skipped".
Each task's outlets are the assets of what it publishes, so DAGs downstream of a table
or of the production model are scheduled on it (data-aware scheduling).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import Asset, BaseOperator

from courier.schedule import (
    Deployment,
    Step,
    application,
    asset_uri,
    python_command,
    spark_submit_conf,
)


def dag_settings(deployment: Deployment) -> dict[str, object]:
    """What every courier DAG shares: start, no catch-up, one run at a time, retries, the params.

    Retries are safe since every stage is idempotent for its arguments.
    """
    return {
        "start_date": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        "catchup": False,
        "max_active_runs": 1,
        "default_args": {
            "retries": deployment.retries,
            "retry_delay": dt.timedelta(minutes=5),
            "retry_exponential_backoff": True,
        },
        "params": deployment.params(),
    }


def asset(path: str) -> Asset:
    """The Airflow asset of a published table or model (a ``Step.publishes`` path)."""
    return Asset(name=f"courier.{path.replace('/', '.')}", uri=asset_uri(path))


def make_task(step: Step, deployment: Deployment) -> BaseOperator:
    """The operator of one step (inside a ``with DAG(...)`` block)."""
    outlets = [asset(path) for path in step.publishes]
    if not step.spark:
        command, env = python_command(step)
        return BashOperator(
            task_id=step.task_id,
            bash_command=command,
            env=env,
            append_env=True,
            cwd="{{ params.courier_home }}",
            skip_on_exit_code=step.skip_exit_code,
            outlets=outlets,
        )
    return SparkSubmitOperator(
        task_id=step.task_id,
        conn_id=deployment.spark_conn_id,
        application=application(step),
        application_args=step.cli_args(),
        conf=spark_submit_conf(),
        archives=deployment.archives,
        jars="{{ params.jars }}",
        driver_class_path="{{ params.driver_class_path }}",
        packages="{{ params.packages }}",
        name=f"courier-{step.task_id}",
        outlets=outlets,
    )


def chain_steps(steps: Sequence[Step], deployment: Deployment) -> dict[str, BaseOperator]:
    """One operator per step, wired to its upstream steps; returns them by task id."""
    tasks = {step.task_id: make_task(step, deployment) for step in steps}
    for step in steps:
        for upstream in step.upstream:
            tasks[upstream] >> tasks[step.task_id]
    return tasks
