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
