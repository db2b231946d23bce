"""Hostile table names and dates given to the CLI are refused before any SQL runs.

Real `courier` processes: the refusal must come from argument and config validation, so no
Spark session is started (nothing could have been executed) and the message names the input.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pytest

from courier.config import PROJECT_ROOT, load_config
from courier.tables import date_range_predicate

HOSTILE_NAMES = [
    "courier; DROP TABLE courier.raw_items",
    "x` OR 1=1 --",
    "raw_items/*",
    "a.b",
    "1abc",
    "",
]


def _courier(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_hostile_table_name_on_the_command_line_is_refused():
    result = _courier(
        "build-samples",
        "--start",
        "2026-01-01",
        "--end",
        "2026-01-01",
        "--set",
        "tables.raw_impressions=raw_impressions; DROP TABLE courier.raw_items",
    )
    assert result.returncode == 2, result.stderr
    assert "tables.raw_impressions must be a plain identifier" in result.stderr
    assert "DROP TABLE courier.raw_items" in result.stderr  # named, quoted, not run
    assert ", master local" not in result.stderr  # refused before a Spark session was built


def test_a_hostile_date_on_the_command_line_is_refused():
    result = _courier("build-samples", "--start", "2026-01-01' OR '1'='1", "--end", "2026-01-01")
    assert result.returncode == 2
    assert "not an ISO date (YYYY-MM-DD): \"2026-01-01' OR '1'='1\"" in result.stderr


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_every_table_and_database_name_must_be_a_plain_identifier(name: str):
    for key in ("tables.database", "tables.ctr_samples"):
        with pytest.raises(ValueError, match=rf"{key} must be a plain identifier"):
            load_config("local", [f"{key}={name!r}" if name else f"{key}=''"])


def test_the_one_text_predicate_takes_only_dates():
    assert (
        date_range_predicate(dt.date(2026, 1, 1), dt.date(2026, 1, 2))
        == "dt >= DATE'2026-01-01' AND dt <= DATE'2026-01-02'"
    )
    with pytest.raises(TypeError, match=r"datetime.date"):
        date_range_predicate("2026-01-01' OR '1'='1", dt.date(2026, 1, 2))  # type: ignore[arg-type]  # a str for a date: the test
    with pytest.raises(ValueError, match="not a plain column name"):
        date_range_predicate(dt.date(2026, 1, 1), dt.date(2026, 1, 2), column="dt OR 1=1")
