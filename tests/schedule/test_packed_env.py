"""`make dist`'s packed environment runs a real stage
under spark-submit, with nothing of the dev venv.

build/dist.sh packs the environment (here as a plain tar: the same environment and the same code
path as `make dist`'s tar.gz, without minutes of gzip on 2 cores). The test lays it out as a
node does for `--archives courier-env.tar.gz#environment` (unpacked into ./environment of the
Python workers' working directory) and runs jobs/build_samples.py with spark-submit
--master local[2] from the environment's own bin/, with the Python settings the DAGs pass
(courier.schedule), and a PATH and environment that name nothing of .venv.

Why the test unpacks the archive itself: in local mode Spark unpacks --archives into its
SparkFiles root, while Python workers start in spark-submit's working directory, so
./environment/bin/python would not resolve there (measured; docs/PRODUCTION.md). Spark's own
unpacker refuses entries and links that leave the archive; the archive is checked against the
standard library's equivalent rule (tarfile's "data" filter).

Proof that the Python workers ran from the archive: a .pth file added to the unpacked copy
records sys.prefix and the command line of every Python process started from it, and the
pyspark workers of the stage must be among them. Nothing of this checkout is used either: the
application is the wheel's own jobs/build_samples.py inside the environment, there is no
PYTHONPATH, and the driver reads conf/ and sql/ from the wheel's data files (the layout of
cluster deploy mode, where the driver runs on a node without a checkout).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
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

# Appends one JSON line per Python process started from the unpacked environment (when asked to).
PROBE_PTH = (
    "import os, sys, json; p = os.environ.get('COURIER_PROBE_LOG'); p and open(p, "
    "'a').write(json.dumps({'pid': os.getpid(), 'prefix': sys.prefix, 'executable': "
    "sys.executable, 'argv': sys.orig_argv}) + '\\n')\n"
)


def _check(out: subprocess.CompletedProcess, what: str) -> None:
    assert out.returncode == 0, (
        f"{what} failed ({out.returncode}):\n{(out.stdout + out.stderr)[-4000:]}"
    )


def _assert_spark_can_unpack(archive: Path, dest: Path) -> None:
    """Every member stays inside the folder it is unpacked into,
    links included (Spark refuses others)."""
    with tarfile.open(archive) as tar:
        for member in tar:
            assert not member.name.startswith(("./", "/")), f"{archive}: member {member.name!r}"
            # raises for absolute links and links leaving dest
            tarfile.data_filter(member, str(dest))


def _render(template: str, params: dict[str, str]) -> str:
    """A DAG param reference ``{{ params.x }}`` replaced by its value, as Airflow renders it."""
    return re.sub(r"\{\{ params\.(\w+) \}\}", lambda m: params[m.group(1)], template)


def _node_environment(environment: Path, probe_log: Path) -> dict[str, str]:
    """The driver's environment: the unpacked environment's
    bin/ and the system's, no dev venv or checkout."""
    env = {
        "HOME": os.environ["HOME"],
        "TZ": "UTC",
        "PATH": f"{environment / 'bin'}:/usr/bin:/bin",
        "COURIER_PROBE_LOG": str(probe_log),
    }
    if "JAVA_HOME" in os.environ:
        env["JAVA_HOME"] = os.environ["JAVA_HOME"]
    assert not any(str(PROJECT_ROOT) in value for value in env.values()), env
    return env


@pytest.mark.slow
def test_a_stage_runs_under_spark_submit_from_the_packed_environment(spark, tmp_path):
    warehouse, node = tmp_path / "warehouse", tmp_path / "node"
    environment = node / "environment"
    profile = tmp_path / "profile.yaml"
    profile.write_text(PROFILE.format(wh=warehouse, db=DATABASE, items=N_ITEMS))
    jars = sorted(
        str(p) for p in (PROJECT_ROOT / ".jars").glob("*.jar") if not p.name.startswith("derby")
    )
    # build/dist.sh stages the environment with hard links to .venv: its output folder must be on
    # the same file system, which the checkout's (git-ignored) dist/ is and a tmpfs /tmp is not.
    (PROJECT_ROOT / "dist").mkdir(exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="test-packed-env-", dir=PROJECT_ROOT / "dist"))
    took: dict[str, float] = {}
    started = time.monotonic()
    try:
        # The shop is set-up, not what is tested: written by the dev venv, while the packing runs.
        with open(tmp_path / "world.log", "w") as world_log:
            world = subprocess.Popen(
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
                cwd=tmp_path,
                stdout=world_log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "TZ": "UTC"},
            )
            packed = subprocess.run(
                [
                    "bash",
                    str(PROJECT_ROOT / "build" / "dist.sh"),
                    "--format",
                    "tar",
                    "--out",
                    str(out),
                ],
                capture_output=True,
                text=True,
                timeout=600,
            )
            took["pack"] = time.monotonic() - started
            world_rc = world.wait(timeout=600)
            took["pack+world"] = time.monotonic() - started
        _check(packed, "build/dist.sh --format tar")
        assert world_rc == 0, (tmp_path / "world.log").read_text()[-4000:]
        archive = out / "courier-env.tar"
        assert list(out.glob("courier-*-py3-none-any.whl"))

        # The Python settings of the DAGs, for a deployment that ships this archive.
        # COURIER_HOME is the wheel's install folder (it holds jobs/): no checkout on the node.
        site_packages = environment / "lib" / "python3.11" / "site-packages"
        deployment = Deployment.from_env(
            {
                "COURIER_HOME": str(site_packages),
                "COURIER_ENV_ARCHIVE": str(archive),
                "COURIER_PYTHON": str(environment / "bin" / "python"),
            }
        )
        assert deployment.archives == f"{archive}#environment"
        conf = {
            key: _render(value, deployment.params()) for key, value in spark_submit_conf().items()
        }
        assert conf["spark.pyspark.python"] == "./environment/bin/python"

        environment.mkdir(parents=True)
        _assert_spark_can_unpack(archive, environment)
        _check(
            subprocess.run(
                ["tar", "-xf", str(archive), "-C", str(environment)],
                capture_output=True,
                text=True,
                timeout=600,
            ),
            "unpacking the archive",
        )
        archive.unlink()  # 8 GB
        took["unpack"] = time.monotonic() - started - took["pack+world"]
        (site_packages / "courier_test_probe.pth").write_text(PROBE_PTH)

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
        _check(
            subprocess.run(
                submit,
                cwd=node,
                env=_node_environment(environment, probe_log),
                capture_output=True,
                text=True,
                timeout=600,
            ),
            "spark-submit jobs/build_samples.py from the packed environment",
        )
        took["stage"] = time.monotonic() - started - took["pack+world"] - took["unpack"]
        print("packed-environment test, seconds:", {k: round(v) for k, v in took.items()})

        # One line per process and site-packages folder:
        # lib64 -> lib makes site read the .pth twice.
        processes = list(
            {line: json.loads(line) for line in probe_log.read_text().splitlines()}.values()
        )
        workers = [
            p for p in processes if "pyspark.daemon" in p["argv"] and "pyspark.worker" in p["argv"]
        ]
        assert workers, f"no pyspark worker started from the packed environment: {processes}"
        for process in workers:
            assert Path(process["prefix"]) == environment, process
            assert Path(process["executable"]) == environment / "bin" / "python", process
        driver = [p for p in processes if str(application) in p["argv"]]
        assert len(driver) == 1 and Path(driver[0]["prefix"]) == environment, processes
    finally:
        shutil.rmtree(node, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)

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
