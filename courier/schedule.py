"""The nightly schedule as data: which job runs after which, with which arguments.

The Airflow DAG (dags/courier_nightly.py) turns these steps into spark-submit
tasks; keeping them here lets tests check every command against the real CLI
without installing Airflow.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Step:
    task_id: str
    job: str                       # jobs/<job>.py
    args: tuple[str, ...] = ()
    upstream: tuple[str, ...] = ()
    spark_submit_conf: dict[str, str] = field(default_factory=dict)


# Airflow renders {{ ds }} (the logical date) and {{ params.* }} at run time.
NIGHTLY_STEPS: tuple[Step, ...] = (
    Step("build_samples", "build_samples",
         ("--profile", "{{ params.profile }}", "--start", "{{ ds }}", "--end", "{{ ds }}")),
    Step("train", "train",
         ("--profile", "{{ params.profile }}", "--run-name", "courier-{{ ds }}"),
         upstream=("build_samples",)),
    # New or changed item images only; then new items onto the current centroids (no re-fit).
    Step("embed", "embed", ("--profile", "{{ params.profile }}"), upstream=("train",)),
    Step("assign", "assign", ("--profile", "{{ params.profile }}"), upstream=("embed",)),
)


def spark_submit_command(step: Step, spark_submit: str = "spark-submit",
                         packages: str = "io.delta:delta-spark_2.13:4.0.1") -> str:
    """The shell command of one step."""
    conf = " ".join(f"--conf {k}={v}" for k, v in step.spark_submit_conf.items())
    parts = [spark_submit, f"--packages {packages}", conf, f"jobs/{step.job}.py", *step.args]
    return " ".join(p for p in parts if p)
