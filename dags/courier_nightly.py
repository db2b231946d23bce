"""courier, nightly: build_samples -> embed -> assign for the data interval's day(s).

The steps and their commands live in courier.schedule; this file only names the schedule.
The interval is one day, [00:00, 24:00) UTC, run after it closes; a backfill
(`airflow backfill create --dag-id courier_nightly --from-date ... --to-date ...`) runs
each day once, and re-running a day rewrites only that day (every stage is idempotent).
"""

from __future__ import annotations

from airflow.sdk import DAG
from airflow.timetables.interval import CronDataIntervalTimetable

from courier.schedule import NIGHTLY_STEPS, Deployment
from courier.schedule.operators import chain_steps, dag_settings

deployment = Deployment.from_env()

with DAG(
    dag_id="courier_nightly",
    description="impressions -> COURIER samples -> embeddings of new items -> their Cluster-IDs",
    schedule=CronDataIntervalTimetable("0 2 * * *", timezone="UTC"),
    tags=["courier", "ml-features"],
    **dag_settings(deployment),
) as dag:
    chain_steps(NIGHTLY_STEPS, deployment)
