"""The embedded catalog persists: a table created by one job is found by name by the next
(`courier sql`, a new JVM), as an analyst would use it."""
from __future__ import annotations

import subprocess
import sys


def _courier(warehouse, *args: str) -> str:
    cmd = [sys.executable, "-m", "jobs.cli", "sql", "--set", f"spark.warehouse_dir={warehouse}",
           "--set", "spark.ui_enabled=false", "--set", "spark.master=local[1]", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_tables_keep_their_names_across_jobs(tmp_path):
    _courier(tmp_path, "CREATE TABLE courier.handoff USING delta AS SELECT 42 AS answer")
    out = _courier(tmp_path, "SELECT answer FROM courier.handoff")
    assert "42" in out
    assert (tmp_path / "metastore_db").is_dir() and (tmp_path / "courier.db" / "handoff" / "_delta_log").is_dir()


def _courier_fails(*args: str) -> str:
    cmd = [sys.executable, "-m", "jobs.cli", "sql", "--set", "spark.ui_enabled=false", "--set", "spark.master=local[1]",
           *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr
    return done.stderr


def test_a_second_process_is_told_the_embedded_catalog_is_busy(spark, warehouse_dir):
    # The test session holds the embedded Derby metastore of warehouse_dir, as a running job would.
    err = _courier_fails("--set", f"spark.warehouse_dir={warehouse_dir}", "SHOW DATABASES")
    assert f"Derby metastore {warehouse_dir}/metastore_db) is open in another process" in err
    assert "serves one process at a time" in err and "SessionHiveMetaStoreClient" not in err


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
