"""What production does to a stage, done for real: kill -9, a second run at the same time, a
crashed Python worker. Jobs run as `courier` processes (a profile written from the test's
config) beside the test session, sharing its warehouse through the catalog server.

Helpers compare tables by content: every column but those that record *when* a row was
written (and which run wrote it), sorted; floats equal to 1e-6.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import psutil
import pytest
from delta.tables import DeltaTable

from courier.config import PROJECT_ROOT, CourierConfig

# Columns that say when a row was written or by which run: they differ between any two runs.
VOLATILE = {"prepared_at", "computed_at", "updated_at", "run_id", "created_at", "mlflow_run_id"}


def table_rows(
    spark, table: str, drop: Iterable[str] = (), where: str | None = None
) -> list[tuple]:
    """The rows of ``table`` (matching ``where``),
    volatile columns and ``drop`` left out, as sorted tuples."""
    df = spark.table(table) if where is None else spark.table(table).where(where)
    keep = [c for c in df.columns if c not in VOLATILE and c not in set(drop)]
    return sorted((tuple(_plain(v) for v in row) for row in df.select(*keep).collect()), key=repr)


def _plain(value):
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


def assert_same_rows(actual: list[tuple], expected: list[tuple], what: str) -> None:
    """Same rows, no duplicates; floats (embeddings, similarities) equal to 1e-6."""
    assert len(actual) == len(expected), f"{what}: {len(actual)} rows, expected {len(expected)}"
    assert len(set(map(repr, actual))) == len(actual), f"{what}: duplicate rows"
    for a, e in zip(actual, expected, strict=True):
        assert _close(a, e), f"{what}: {str(a)[:300]} != {str(e)[:300]}"


def _close(a, e) -> bool:
    if isinstance(a, tuple) and isinstance(e, tuple):
        return len(a) == len(e) and all(_close(x, y) for x, y in zip(a, e, strict=True))
    if isinstance(a, float) and isinstance(e, float):
        return abs(a - e) <= 1e-6
    return a == e


def table_versions(spark, tables: Iterable[str]) -> dict[str, int | None]:
    """Each table's latest Delta version (None: the table does not exist)."""
    return {
        t: (
            int(DeltaTable.forName(spark, t).history(1).first()["version"])
            if spark.catalog.tableExists(t)
            else None
        )
        for t in tables
    }


def restore(spark, versions: Mapping[str, int | None]) -> None:
    """Put tables back as they were: RESTORE to a version, or DROP a table that did not exist."""
    for table, version in versions.items():
        if version is None:
            spark.sql("DROP TABLE IF EXISTS IDENTIFIER(:t)", args={"t": table})
        elif table_versions(spark, [table])[table] != version:
            spark.sql(f"RESTORE TABLE {table} TO VERSION AS OF {int(version)}")


def delta_log(spark, cfg: CourierConfig, name: str) -> Path:
    """The _delta_log folder of a table of ``cfg`` (it may not exist yet)."""
    warehouse = Path(spark.conf.get("spark.sql.warehouse.dir").removeprefix("file:"))
    return warehouse / f"{cfg.tables.database}.db" / getattr(cfg.tables, name) / "_delta_log"


def commits(log_dir: Path) -> set[int]:
    return (
        {int(p.stem) for p in log_dir.glob("*.json") if p.stem.isdigit()}
        if log_dir.is_dir()
        else set()
    )


class CourierProcess:
    """``courier <args> --profile <cfg as YAML>`` in its own process group, its output collected."""

    def __init__(
        self, cfg: CourierConfig, tmp: Path, *args: str, env: Mapping[str, str] | None = None
    ) -> None:
        profile = tmp / f"profile-{args[0]}-{time.monotonic_ns()}.yaml"
        profile.write_text(cfg.to_yaml())
        env = {
            **{
                k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")
            },
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jobs.cli", *args, "--profile", str(profile)],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(
            target=lambda: self.lines.extend(self.proc.stdout), daemon=True
        )
        self._reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_until(self, condition: Callable[[], bool], what: str, timeout_s: float = 600) -> None:
        """Return once ``condition()`` holds;
        fail the test if the process ends first or time runs out."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if self.proc.poll() is not None:
                self._reader.join(timeout=10)
                pytest.fail(
                    f"the job ended ({self.proc.returncode}) before {what}:\n{self.output[-3000:]}"
                )
            if time.monotonic() > deadline:
                os.killpg(self.proc.pid, signal.SIGKILL)
                pytest.fail(f"no {what} within {timeout_s} s:\n{self.output[-3000:]}")
            time.sleep(0.02)

    def kill_when(self, condition: Callable[[], bool], timeout_s: float = 600) -> None:
        """SIGKILL the whole process group (driver JVM, Python workers) once ``condition()`` holds.

        Fails the test if the process ends first: a kill after the end proves nothing.
        """
        self.wait_until(condition, "the kill point", timeout_s)
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)
        self._reader.join(timeout=10)
        assert self.proc.returncode == -signal.SIGKILL

    def wait(self, timeout_s: float = 900) -> int:
        self.proc.wait(timeout=timeout_s)
        self._reader.join(timeout=10)
        return self.proc.returncode


def torch_workers(root: int, busy: bool = False) -> list[psutil.Process]:
    """Spark Python workers under process ``root`` that have loaded torch (the embed UDF's model);
    ``busy``: only those using CPU right now. (Spark starts other Python workers early, e.g. to
    look up Python data sources, so a worker's existence alone says nothing.)"""
    found = []
    for proc in psutil.Process(root).children(recursive=True):
        try:
            if "pyspark" not in " ".join(proc.cmdline()):
                continue
            with open(f"/proc/{proc.pid}/maps") as maps:
                if "libtorch_cpu" not in maps.read():
                    continue
            if busy:
                before = sum(proc.cpu_times()[:2])
                time.sleep(0.1)
                if sum(proc.cpu_times()[:2]) <= before:
                    continue
            found.append(proc)
        except (psutil.Error, OSError):  # a process that ended while we looked
            continue
    return found


def built_rows(spark, database: str, start, end) -> dict[str, list[tuple]]:
    """What a sample build of ``[start, end]`` wrote to ``database``:
    item_images, the range's samples,
    training rows and rejects (the images' rejects, the build's of the range)."""
    from courier.samples.build import rejects_scope
    from courier.tables import date_range_predicate

    in_range = date_range_predicate(start, end)
    return {
        "item_images": table_rows(spark, f"{database}.item_images"),
        "courier_samples": table_rows(spark, f"{database}.courier_samples", where=in_range),
        "courier_training_rows": table_rows(
            spark, f"{database}.courier_training_rows", where=in_range
        ),
        "rejects": table_rows(
            spark,
            f"{database}.rejects",
            where=(
                "stage = 'item_images' OR "
                f"(stage = 'build_samples' AND ({rejects_scope(in_range)}))"
            ),
        ),
    }
