"""Run the Spark SQL kept as files in ``sql/``.

Each file holds one SELECT. Table names and values are bound as named
parameters (``IDENTIFIER(:raw_impressions)``, ``:start_dt``), never pasted into
the text, so a file reads the same in a code review, in ``spark-sql`` and here.
The result is registered as a temporary view named after the file, which is how
later files refer to it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from courier.config import PROJECT_ROOT

SQL_DIR = PROJECT_ROOT / "sql"


@cache
def sql_text(relative_path: str) -> str:
    """The text of ``sql/<relative_path>`` (``.sql`` appended when missing)."""
    path = SQL_DIR / (relative_path if relative_path.endswith(".sql") else f"{relative_path}.sql")
    if not path.exists():
        raise FileNotFoundError(f"SQL file not found: {path}")
    return path.read_text()


def run_sql_file(
    spark: SparkSession,
    relative_path: str,
    args: Mapping[str, Any],
    literals: Mapping[str, int] | None = None,
) -> DataFrame:
    """Run ``sql/<relative_path>.sql`` with ``args`` bound;
    register it as a temp view named after the file.

    ``literals`` are for the few places the grammar takes no parameter (window
    frame bounds): each is set as session conf ``courier.<name>`` and the file
    writes ``${courier.<name>}``, Spark's own variable substitution.
    """
    text = sql_text(relative_path)
    for name, value in (literals or {}).items():
        spark.conf.set(f"courier.{name}", str(int(value)))
    df = spark.sql(text, args=dict(args))  # Spark ignores names a file does not use
    df.createOrReplaceTempView(Path(relative_path).stem)
    return df


_PLAIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def quote_identifier(name: str) -> str:
    """``db.table`` -> ```db`.`table```, refusing anything but plain identifier parts.

    For the one place parameters cannot go: the body of a persistent view, which
    Spark stores as text and so must name its tables literally.
    """
    parts = name.split(".")
    if not 1 <= len(parts) <= 3 or not all(_PLAIN_NAME.match(p) for p in parts):
        raise ValueError(
            f"not a plain table name (letters, digits, _; up to catalog.db.table): {name!r}"
        )
    return ".".join(f"`{p}`" for p in parts)


def create_view(
    spark: SparkSession, relative_path: str, view: str, tables: Mapping[str, str]
) -> None:
    """``CREATE OR REPLACE VIEW view AS`` the SELECT of ``sql/<relative_path>.sql``.

    A view body takes no parameter markers, so the file names its tables
    ``${courier.table.<key>}`` and each is set, validated and quoted, from ``tables``.
    """
    for key, name in tables.items():
        spark.conf.set(f"courier.table.{key}", quote_identifier(name))
    spark.sql(f"CREATE OR REPLACE VIEW {quote_identifier(view)} AS\n{sql_text(relative_path)}")
