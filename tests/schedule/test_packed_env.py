"""`make dist`'s packed environment runs a real stage
under spark-submit, with nothing of the dev venv.

The environment is the session's ``packed_environment`` (tests/schedule/conftest.py: build/dist.sh
as a plain tar, checked against Spark's unpacking rule, unpacked into ``<node>/environment`` as a
node does for ``--archives courier-env.tar.gz#environment``). The test runs jobs/build_samples.py
with spark-submit --master local[2] from the environment's own bin/, with the Python settings the
DAGs pass (courier.schedule), and a PATH and environment that name nothing of .venv.

Why the environment is unpacked by the fixture: in local mode Spark unpacks --archives into its
SparkFiles root, while Python workers start in spark-submit's working directory, so
./environment/bin/python would not resolve there (measured; docs/PRODUCTION.md).

Proof that the Python workers ran from the archive: the probe .pth records sys.prefix and the
command line of every Python process started from it, and the pyspark workers of the stage must be
among them. Nothing of this checkout is used either: the application is the wheel's own
jobs/build_samples.py inside the environment, there is no PYTHONPATH, and the driver reads conf/
and sql/ from the wheel's data files (the layout of cluster deploy mode, where the driver runs on a
node without a checkout).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from courier.config import PROJECT_ROOT
from courier.schedule import (
    NIGHTLY_STEPS,
    Deployment,
    application as application_of,
    spark_submit_conf,
)
from tests.schedule.conftest import PackedEnvironment, node_environment, probe_records, run_checked

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

DATABASE = "courier_packed_env_test"
FIRST_DAY, LAST_DAY = dt.date(2026, 1, 1), dt.date(2026, 1, 2)
N_ITEMS = 120

# The cluster profile's shape: spark-submit gives the master and the Delta JARs. The catalog is
# "external" to courier: a Hive metastore on embedded Derby inside the throw-away warehouse, used
# by one process at a time (the world is written first, then the stage runs).
PROFILE = """
spark:
  master: null
  warehouse_dir: {wh}
  catalog: external
  jars_dir: null
  driver_memory: 1g
  shuffle_partitions: 2
  ui_enabled: false
  log4j_config: null
  conf:
    spark.sql.catalogImplementation: hive
    spark.hadoop.javax.jdo.option.ConnectionURL: "jdbc:derby:;databaseName={wh}/\
metastore_db;create=true"
    spark.hadoop.hive.metastore.warehouse.dir: {wh}
    spark.driver.extraJavaOptions: -Dderby.system.home={wh}
tables: {{database: {db}}}
world: {{seed: 7, n_items: {items}, n_users: 80, n_page_views: 600, days: 2,
        start_date: "2026-01-01", image_size: 32}}
samples: {{image_size: 32, rows_per_row_group: 64, max_event_ts: "2026-06-01T00:00:00"}}
"""


def _render(template: str, params: dict[str, str]) -> str:
    """A DAG param reference ``{{ params.x }}`` replaced by its value, as Airflow renders it."""
    return re.sub(r"\{\{ params\.(\w+) \}\}", lambda m: params[m.group(1)], template)


@pytest.mark.slow
def test_a_stage_runs_under_spark_submit_from_the_packed_environment(
    spark, packed_environment: PackedEnvironment, tmp_path
):
    warehouse = tmp_path / "warehouse"
    profile = tmp_path / "profile.yaml"
    profile.write_text(PROFILE.format(wh=warehouse, db=DATABASE, items=N_ITEMS))
    jars = sorted(
        str(p) for p in (PROJECT_ROOT / ".jars").glob("*.jar") if not p.name.startswith("derby")
    )
    # The shop is set-up, not what is tested: written by the dev venv.
    run_checked(
        [
            str(PROJECT_ROOT / ".venv" / "bin" / "python"),
            "-m",
            "jobs.cli",
            "generate-world",
            "--profile",
            str(profile),
            "--set",
            "spark.master=local[1]",
            "--set",
            f"spark.jars_dir={PROJECT_ROOT / '.jars'}",
        ],
        "courier generate-world",
        cwd=tmp_path,
        env={**os.environ, "TZ": "UTC"},
    )

    # The Python settings of the DAGs, for a deployment that ships this archive.
    # COURIER_HOME is the wheel's install folder (it holds jobs/): no checkout on the node.
    # --archives takes the tar.gz of `make dist` (Spark drops a plain .tar's file modes); the test
    # built the same environment as a .tar to skip gzip, and Deployment reads only the name.
    archive = packed_environment.archive.with_name("courier-env.tar.gz")
    environment = packed_environment.environment
    deployment = Deployment.from_env(
        {
            "COURIER_HOME": str(packed_environment.site_packages),
            "COURIER_ENV_ARCHIVE": str(archive),
            "COURIER_PYTHON": str(packed_environment.python),
        }
    )
    assert deployment.archives == f"{archive}#environment"
    conf = {key: _render(value, deployment.params()) for key, value in spark_submit_conf().items()}
    assert conf["spark.pyspark.python"] == "./environment/bin/python"

    probe_log = tmp_path / "probe.jsonl"
    build_step = next(step for step in NIGHTLY_STEPS if step.task_id == "build_samples")
    application = Path(_render(application_of(build_step), deployment.params()))
    assert application.is_file(), application
    submit = [
        str(environment / "bin" / "spark-submit"),
        "--master",
        "local[2]",
        "--jars",
        ",".join(jars),
        *[arg for key, value in conf.items() for arg in ("--conf", f"{key}={value}")],
        str(application),
        "--profile",
        str(profile),
        "--start",
        FIRST_DAY.isoformat(),
        "--end",
        LAST_DAY.isoformat(),
    ]
    run_checked(
        submit,
        "spark-submit jobs/build_samples.py from the packed environment",
        cwd=packed_environment.node,
        env=node_environment(packed_environment, COURIER_PROBE_LOG=str(probe_log)),
    )

    processes = probe_records(probe_log)
    workers = [
        p for p in processes if "pyspark.daemon" in p["argv"] and "pyspark.worker" in p["argv"]
    ]
    assert workers, f"no pyspark worker started from the packed environment: {processes}"
    for process in workers:
        assert Path(process["prefix"]) == environment, process
        assert Path(process["executable"]) == packed_environment.python, process
    driver = [p for p in processes if str(application) in p["argv"]]
    assert len(driver) == 1 and Path(driver[0]["prefix"]) == environment, processes

    # The tables show the run: its two pipeline_runs rows (the images, then the samples of its
    # dates), and samples for its days. Two tables only: each Delta read costs seconds on 2 cores.
    def table(name: str) -> DataFrame:
        return spark.read.format("delta").load(str(warehouse / f"{DATABASE}.db" / name))

    runs = {r["stage"]: r for r in table("pipeline_runs").collect()}
    assert set(runs) == {"item_images", "build_samples"}
    assert (runs["build_samples"]["start_dt"], runs["build_samples"]["end_dt"]) == (
        FIRST_DAY,
        LAST_DAY,
    )
    assert runs["item_images"]["metrics"]["prepared"] == N_ITEMS  # decoded by the packed workers
    assert runs["build_samples"]["metrics"]["training_rows_written"] > 0
    days = {r["dt"] for r in table("courier_samples").select("dt").distinct().collect()}
    assert LAST_DAY in days and days <= {FIRST_DAY, LAST_DAY}
