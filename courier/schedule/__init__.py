"""The Airflow DAGs as data: which job runs after which, with which arguments, publishing what.

The DAG files (dags/*.py) only name a schedule and its steps; courier.schedule.operators
turns steps into Airflow operators. This module imports nothing but the standard library,
so the tests check every command against the real CLI without Airflow, and Airflow's own
venv (build/airflow) imports it without courier's dependencies.

Three DAGs:
    courier_nightly     build_samples -> embed -> assign, for the data interval's day(s).
                        assign also re-creates the analyst views (same job, so they never
                        lag the table they read).
    courier_retraining  train -> evaluate -> promote; weekly or on demand. promote exits
                        SKIP_EXIT_CODE when the candidate does not beat production, which
                        Airflow records as "skipped": no asset event, nothing downstream.
    courier_refit       embed -> cluster (warm-started: ids stay stable) -> assign, scheduled
                        on the production-model asset that a promotion updates.
Every stage is idempotent for its arguments, so retries and backfills never duplicate rows.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# Airflow renders these when a task runs. The data interval is [start, end): a daily run
# covers one day, a backfill of a longer interval covers each of its days.
PROFILE = "{{ params.profile }}"
FIRST_DAY = "{{ data_interval_start | ds }}"
LAST_DAY = "{{ macros.ds_add(data_interval_end | ds, -1) }}"
# A retraining run's name: a retry of the same Airflow run resumes the same training run.
TRAINING_RUN_NAME = "retrain-{{ ts_nodash }}"

SKIP_EXIT_CODE = 99
PRODUCTION_MODEL = "models/production"  # the asset a promotion updates
ASSET_URI_SCHEME = "courier"


@dataclass(frozen=True)
class Step:
    """One task: ``courier <command>`` under spark-submit (``spark``) or the courier Python.

    Attributes:
        publishes: what the task writes, as Airflow asset paths: ``tables/<courier.tables name>``
            or ``PRODUCTION_MODEL``.
        skip_exit_code: the exit code Airflow records as "skipped" (Python steps only).
    """

    task_id: str
    command: str
    args: tuple[str, ...] = ()
    upstream: tuple[str, ...] = ()
    spark: bool = True
    publishes: tuple[str, ...] = ()
    skip_exit_code: int | None = None

    @property
    def job(self) -> str:
        """The entry point: ``jobs/<job>.py``."""
        return self.command.replace("-", "_")

    def cli_args(self) -> list[str]:
        """The job's arguments (templated): the profile first, then the step's own."""
        return ["--profile", PROFILE, *self.args]


NIGHTLY_STEPS: tuple[Step, ...] = (
    Step(
        "build_samples",
        "build-samples",
        ("--start", FIRST_DAY, "--end", LAST_DAY),
        publishes=("tables/item_images", "tables/courier_samples", "tables/courier_training_rows"),
    ),
    # New or changed item images only (a promoted model re-embeds everything it has not embedded).
    Step("embed", "embed", upstream=("build_samples",), publishes=("tables/item_embeddings",)),
    # New items onto the current centroids (no re-fit), then the analyst views.
    Step("assign", "assign", upstream=("embed",), publishes=("tables/item_image_features",)),
)

RETRAINING_STEPS: tuple[Step, ...] = (
    Step("train", "train", ("--run-name", TRAINING_RUN_NAME)),
    Step("evaluate", "evaluate", upstream=("train",)),
    # MLflow only: no Spark session, and the operator must be able to skip.
    Step(
        "promote",
        "promote",
        ("--skip-exit-code", str(SKIP_EXIT_CODE)),
        upstream=("evaluate",),
        spark=False,
        publishes=(PRODUCTION_MODEL,),
        skip_exit_code=SKIP_EXIT_CODE,
    ),
)

REFIT_STEPS: tuple[Step, ...] = (
    Step("embed", "embed", publishes=("tables/item_embeddings",)),
    Step("cluster", "cluster", upstream=("embed",), publishes=("tables/cluster_centroids",)),
    Step("assign", "assign", upstream=("cluster",), publishes=("tables/item_image_features",)),
)


def asset_uri(path: str) -> str:
    """The Airflow asset URI of a published table or model (one name space for all DAGs)."""
    return f"{ASSET_URI_SCHEME}://{path}"


@dataclass(frozen=True)
class Deployment:
    """Where the courier jobs, their profile and their Python live on an Airflow worker.

    Read once when a DAG file is parsed (``from_env``) and offered as DAG params, so a
    run can override any of them. Environment variables:

        COURIER_HOME        the folder holding jobs/ (a checkout or an unpacked dist)
        COURIER_PROFILE     the courier profile YAML (default <home>/conf/cluster.yaml)
        COURIER_PYTHON      the driver's Python, with courier installed
                            (default <home>/.venv/bin/python)
        COURIER_EXECUTOR_PYTHON  the executors' Python when no archive is shipped: an
                            environment installed at this path on every node, such as the
                            packed one unpacked there once (default COURIER_PYTHON)
        COURIER_ENV_ARCHIVE the packed environment for the executors (`make dist` writes
                            dist/courier-env.tar.gz; a path or a URI such as hdfs://, s3a://),
                            shipped with --archives and run as ./environment/bin/python. Empty
                            (the default) = the executors use COURIER_EXECUTOR_PYTHON: a local
                            master needs that, since its Python workers do not start where
                            Spark unpacks archives, and so does an environment too large to copy
                            to every executor of every application (docs/PRODUCTION.md)
        COURIER_JARS        comma-separated JARs for --jars (default: <home>/.jars/*.jar)
        COURIER_PACKAGES    Maven coordinates for --packages when there are no JARs
        COURIER_DRIVER_CLASS_PATH  --driver-class-path (default: <home>/.jars/derbyclient-*.jar,
                            the embedded catalog's JDBC client, which must be on the driver
                            JVM's own class path; empty with an external metastore)
        COURIER_SPARK_CONN  the Airflow connection naming the Spark master (spark_default)
        COURIER_RETRIES     task retries (default 2; each stage is idempotent, so a retry is safe)
    """

    home: str
    profile: str
    python: str
    executor_python: str
    env_archive: str
    jars: str
    packages: str
    driver_class_path: str
    spark_conn_id: str
    retries: int = 2

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Deployment:
        env = os.environ if environ is None else environ
        home = env.get("COURIER_HOME") or str(Path(__file__).resolve().parents[2])
        python = env.get("COURIER_PYTHON") or f"{home}/.venv/bin/python"
        local_jars = ",".join(sorted(str(p) for p in (Path(home) / ".jars").glob("*.jar")))
        jars = env.get("COURIER_JARS", local_jars)
        derby_client = ":".join(
            sorted(str(p) for p in (Path(home) / ".jars").glob("derbyclient-*.jar"))
        )
        return cls(
            home=home,
            profile=env.get("COURIER_PROFILE") or f"{home}/conf/cluster.yaml",
            python=python,
            executor_python=env.get("COURIER_EXECUTOR_PYTHON") or python,
            env_archive=checked_env_archive(env.get("COURIER_ENV_ARCHIVE", "")),
            jars=jars,
            packages=env.get("COURIER_PACKAGES", "" if jars else "io.delta:delta-spark_2.13:4.0.1"),
            driver_class_path=env.get("COURIER_DRIVER_CLASS_PATH", derby_client),
            spark_conn_id=env.get("COURIER_SPARK_CONN", "spark_default"),
            retries=int(env.get("COURIER_RETRIES", "2")),
        )

    @property
    def archives(self) -> str | None:
        """spark-submit --archives: the packed environment,
        unpacked as ./environment on every node."""
        return f"{self.env_archive}#environment" if self.env_archive else None

    def params(self) -> dict[str, str]:
        """The DAG params
        (each task reads them as ``{{ params.<name> }}``; a run may override them).

        Not the archive: the operator does not template --archives, so it is fixed when the
        DAG file is parsed.
        """
        executor_python = "./environment/bin/python" if self.env_archive else self.executor_python
        return {
            "profile": self.profile,
            "courier_home": self.home,
            "python": self.python,
            "executor_python": executor_python,
            "jars": self.jars,
            "packages": self.packages,
            "driver_class_path": self.driver_class_path,
        }


# What spark-submit --archives unpacks with the files' modes kept: Spark 4.0 hands a .tar.gz to
# Hadoop's FileUtil.unTar (the system's tar), but unpacks a plain .tar with its own Java code,
# which drops them (SPARK-38632): ./environment/bin/python is then not executable and every
# Python task fails with "error=13, Permission denied" (seen on the tests' standalone cluster).
# A .zip keeps them only since HADOOP-18145 and was never run here. Any other file would reach the
# executors as a plain file.
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")


def checked_env_archive(archive: str) -> str:
    """COURIER_ENV_ARCHIVE as given, or a ValueError naming it when Spark could not unpack it
    into a runnable environment.

    Checks only the name: the DAG files may be parsed on a machine that does not hold the file.
    """
    if archive and (not archive.endswith(ARCHIVE_SUFFIXES) or "#" in archive):
        plain_tar = " (Spark unpacks a plain .tar without file modes, SPARK-38632)"
        raise ValueError(
            f"COURIER_ENV_ARCHIVE={archive}: want a gzipped tar ending in "
            f"{' or '.join(ARCHIVE_SUFFIXES)}{plain_tar if archive.endswith('.tar') else ''}, "
            "without a #alias (it is unpacked as #environment), e.g. the "
            "dist/courier-env.tar.gz that `make dist` writes"
        )
    return archive


def spark_submit_conf() -> dict[str, str]:
    """The Python of the driver and of the executors (templated: from the DAG params)."""
    return {
        "spark.pyspark.driver.python": "{{ params.python }}",
        "spark.pyspark.python": "{{ params.executor_python }}",
    }


def application(step: Step) -> str:
    """The spark-submit application file of ``step`` (templated)."""
    return f"{{{{ params.courier_home }}}}/jobs/{step.job}.py"


def python_command(step: Step) -> tuple[str, dict[str, str]]:
    """(shell command, its environment) of a Python (non-Spark) step.

    The templated values reach the shell as environment variables, never pasted into the
    command, so a param holding quotes or ``;`` stays one argument.
    """
    env = {"COURIER_PYTHON": "{{ params.python }}"}
    words = ['"$COURIER_PYTHON"', "-m", "jobs.cli", step.command]
    for i, arg in enumerate(step.cli_args()):
        if "{{" in arg:
            env[f"COURIER_ARG_{i}"] = arg
            words.append(f'"$COURIER_ARG_{i}"')
        else:
            words.append(arg)
    return " ".join(words), env
