"""The embedded catalog persists: a table created by one job is found by name by the next
(`courier sql`, a new JVM), as an analyst would use it; processes share it at once through
the warehouse's Derby network server, which stops itself when no process uses it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path


def _courier(warehouse, *args: str) -> str:
    cmd = [
        sys.executable,
        "-m",
        "jobs.cli",
        "sql",
        "--set",
        f"spark.warehouse_dir={warehouse}",
        "--set",
        "spark.ui_enabled=false",
        "--set",
        "spark.master=local[1]",
        "--set",
        "spark.catalog_idle_s=5",
        *args,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


# A process that opens the catalog server of a warehouse, prints its port, and ends.
_CLIENT = """
import sys
from courier.catalog import ensure_catalog_server
from courier.spark import derby_jars
from courier.config import load_config
cfg = load_config("local")
print(ensure_catalog_server(sys.argv[1], derby_jars(cfg.spark), idle_s=float(sys.argv[2])).port)
"""


def _open_catalog(warehouse: Path, idle_s: float, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _CLIENT, str(warehouse), str(idle_s)],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
    )


def test_processes_share_one_server_which_stops_once_idle(tmp_path):
    # at once: one starts it, all use it
    clients = [_open_catalog(tmp_path, idle_s=3) for _ in range(3)]
    outputs = [client.communicate(timeout=120) for client in clients]
    assert all(client.returncode == 0 for client in clients), [err[-2000:] for _, err in outputs]
    ports = {int(out) for out, _ in outputs}
    assert len(ports) == 1
    info = json.loads((tmp_path / ".catalog" / "server.json").read_text())
    assert (
        tmp_path / ".catalog" / "derby.properties"
    ).stat().st_mode & 0o077 == 0  # its password: owner only
    deadline = time.time() + 60
    while (
        any(_alive(info[pid]) for pid in ("java_pid", "supervisor_pid")) and time.time() < deadline
    ):
        time.sleep(0.5)
    assert not any(_alive(info[pid]) for pid in ("java_pid", "supervisor_pid")), (
        "it outlived its clients by 1 min"
    )
    assert not (tmp_path / ".catalog" / "server.json").exists()
    assert not list((tmp_path / ".catalog" / "clients").iterdir())  # ended clients were swept


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_server_that_cannot_start_says_why(tmp_path):
    client = _open_catalog(tmp_path, idle_s=3, JAVA_HOME=str(tmp_path / "no-jdk"))
    _, err = client.communicate(timeout=120)
    assert client.returncode != 0
    assert f"the embedded catalog's Derby server for {tmp_path} did not start" in err
    assert f"JAVA_HOME={tmp_path / 'no-jdk'} has no bin/java" in err
    assert "Is `java` (Java 17) on PATH or JAVA_HOME set?" in err


def test_an_analyst_query_runs_while_a_job_is_writing(spark, warehouse_dir):
    """The session's JVM is a job in the middle of a Delta write; `courier sql` in another process
    reads the same warehouse through the shared catalog and sees the last committed version."""
    from pyspark.sql import functions as F

    table = "courier.analyst_while_writing"
    spark.range(10).write.format("delta").mode("overwrite").saveAsTable(table)
    release = warehouse_dir / "release-writer"
    held = F.udf(_held_until(release), "long")  # the write lasts until the reader is done
    writer = threading.Thread(
        target=lambda: (
            spark.range(10, 20)
            .select(held("id").alias("id"))
            .write.format("delta")
            .mode("append")
            .saveAsTable(table)
        )
    )
    writer.start()
    try:
        out = _courier(warehouse_dir, f"SELECT count(*) AS n, max(id) AS top FROM {table}")
        assert writer.is_alive(), "the write ended before the reader did: nothing was shown"
    finally:
        release.touch()
        writer.join(timeout=300)
    assert _cells(out) == ["10", "9"]
    assert spark.table(table).count() == 20


def _held_until(release: Path):
    """A pass-through UDF body that waits (at most 4 minutes) until ``release`` exists."""

    def passthrough(x: int) -> int:
        deadline = time.time() + 240
        while not release.exists() and time.time() < deadline:
            time.sleep(0.2)
        return x

    return passthrough


def _cells(table_text: str) -> list[str]:
    """The cells of the one data row of a DataFrame.show() table."""
    rows = [line for line in table_text.splitlines() if line.startswith("|")]
    return [cell.strip() for cell in rows[1].strip("|").split("|")]


def _courier_fails(*args: str) -> str:
    cmd = [
        sys.executable,
        "-m",
        "jobs.cli",
        "sql",
        "--set",
        "spark.ui_enabled=false",
        "--set",
        "spark.master=local[1]",
        *args,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr
    return done.stderr


def test_an_unreachable_metastore_is_named_with_what_to_do(tmp_path):
    profile = tmp_path / "unreachable.yaml"
    profile.write_text(f"""
spark:
  master: local[1]
  catalog: external
  warehouse_dir: {tmp_path}/wh
  jars_dir: .jars
  conf:
    spark.sql.catalogImplementation: hive
    spark.hadoop.hive.metastore.uris: thrift://127.0.0.1:9
    spark.hadoop.hive.metastore.connect.retries: "1"
""")
    err = _courier_fails("--profile", str(profile), "SHOW DATABASES")
    assert "cannot open the Hive metastore at thrift://127.0.0.1:9" in err
    assert "Check that the metastore service is up" in err
