"""courier, weekly or on demand: train -> evaluate -> promote.

promote moves the production alias to the new model only if it beats production on the
candidate's held-out rows by promote.margin; otherwise the task is skipped and nothing
downstream runs. A promotion updates the production-model asset, on which courier_refit
is scheduled (re-embed, warm re-cluster, re-assign).
"""

from __future__ import annotations

from airflow.sdk import DAG
from airflow.timetables.trigger import CronTriggerTimetable

from courier.schedule import RETRAINING_STEPS, Deployment
from courier.schedule.operators import chain_steps, dag_settings

deployment = Deployment.from_env()

with DAG(
    dag_id="courier_retraining",
    description="COURIER pre-training on the newest samples; promoted only if it beats production",
    schedule=CronTriggerTimetable("0 4 * * 0", timezone="UTC"),
    tags=["courier", "ml-training"],
    **dag_settings(deployment),
) as dag:
    chain_steps(RETRAINING_STEPS, deployment)
