"""``courier sql-server``: Spark's Thrift server over the test warehouse, queried by real clients.

One server for the module (started once the feature database has clusters and views; stopped at the
end even when a test fails). beeline (from pyspark) and PyHive run the README's analyst queries and
every view, and their rows are compared with the shared Spark session's. Writes are refused, wrong
credentials too, a commit is seen by the next query, and stopping leaves no process behind.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import io
import json
import re
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyspark
import pytest

from courier.catalog import pid_alive
from courier.config import PROJECT_ROOT, SparkConfig
from courier.features.assign import assign_items
from courier.features.cluster import cluster_embeddings
from courier.features.views import FEATURE_VIEWS
from courier.sql_server import (
    SqlServerError,
    running_endpoint,
    start_sql_server,
    stop_sql_server,
    warehouse_path,
)
from jobs.cli import main as courier_main
from tests.conftest import TRAIN_DB

DB = "courier_sql_endpoint_test"
BEELINE = Path(pyspark.__file__).parent / "bin" / "beeline"
# The README's analyst queries run on the test databases: the sample build's tables are in the
# training shop's database, the views in this module's; the shop's days are 2026-01-01..04.
README_QUERIES = re.findall(
    r'^\.venv/bin/courier sql "(.+)"$', (PROJECT_ROOT / "README.md").read_text(), re.M
)
SAMPLE_TABLES = ("courier_samples", "rejects", "pipeline_runs")


def analyst_queries(readme: list[str] = README_QUERIES) -> list[str]:
    """The README's queries on the test databases."""
    out = []
    for query in readme:
        query = re.sub(
            r"\bcourier\.(\w+)",
            lambda m: f"{TRAIN_DB if m[1] in SAMPLE_TABLES else DB}.{m[1]}",
            query,
        )
        out.append(query.replace("DATE'2026-01-14'", "DATE'2026-01-03'"))
    return out


@pytest.fixture(scope="module")
def cfg(feature_db):
    return feature_db(DB).replace(["cluster.k=8"])


@pytest.fixture(scope="module")
def fresh_table(spark, cfg) -> str:
    """A small Delta table the tests write to from the Spark session while the endpoint reads it."""
    table = f"{DB}.fresh"
    spark.range(0, 100, numPartitions=2).withColumnRenamed("id", "v").write.format(
        "delta"
    ).saveAsTable(table)
    return table


@pytest.fixture(scope="module")
def endpoint(spark, cfg, copy_embeddings, fresh_table):
    """The endpoint over the session's warehouse, once the views exist; stopped whatever happens."""
    copy_embeddings(cfg)
    cluster_embeddings(spark, cfg)
    assign_items(spark, cfg)  # item_image_features and the analyst views
    server_cfg = dataclasses.replace(cfg.spark, master="local[2]", driver_memory="1g")
    warehouse = warehouse_path(server_cfg)
    try:
        yield start_sql_server(server_cfg, port=_free_port())
    finally:
        stop_sql_server(warehouse)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- comparing a client's rows with Spark's -------------------------------------------------------


def _plain(value):
    """A Spark value as JSON would carry it
    (the Thrift server sends arrays, maps and structs as JSON)."""
    if hasattr(value, "asDict"):
        return {k: _plain(v) for k, v in value.asDict().items()}
    # a map's entries in key order: engines need not keep insertion order
    if isinstance(value, dict):
        return {str(k): _plain(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    # a FLOAT column reaches clients widened or printed: compare as float32
    if isinstance(value, float):
        return float(np.float32(value))
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat(sep=" ") if isinstance(value, dt.datetime) else value.isoformat()
    return value


def _decode(text, like):
    """A client's value (PyHive's typed value or beeline's text)
    as ``_plain`` gives Spark's ``like``."""
    if text is None or (text == "NULL" and not isinstance(like, str)):
        return None
    if isinstance(like, (dict, list, tuple)) or hasattr(like, "asDict"):
        return _plain(json.loads(text) if isinstance(text, str) else text)
    if isinstance(like, bool):
        return text if isinstance(text, bool) else text == "true"
    if isinstance(like, int):
        return int(text)
    if isinstance(like, float):
        return _plain(float(text))
    if isinstance(like, dt.datetime):
        return dt.datetime.fromisoformat(str(text)).isoformat(sep=" ")
    return str(text)


def _canonical(spark_rows, client_rows) -> tuple[list[str], list[str]]:
    """Spark's rows and a client's, each row as one comparable text,
    sorted (rows as multisets: ties in an
    ORDER BY may come in another order from each engine)."""
    width = len(spark_rows[0]) if spark_rows else 0
    likes = [next((r[i] for r in spark_rows if r[i] is not None), "") for i in range(width)]
    want = sorted(repr([_plain(v) for v in row]) for row in spark_rows)
    got = sorted(
        repr([_decode(v, like) for v, like in zip(row, likes, strict=False)]) for row in client_rows
    )
    return want, got


def assert_same_rows(spark_rows, client_rows, query: str) -> None:
    """The client's rows are Spark's, value by value."""
    assert len(client_rows) == len(spark_rows), (
        f"{query}: {len(client_rows)} rows, Spark {len(spark_rows)}"
    )
    want, got = _canonical(spark_rows, client_rows)
    assert got == want, query


def full(query: str) -> str:
    """The query without its LIMIT: a LIMIT without a
    total order may pick other rows in each engine."""
    return re.sub(r"\s+LIMIT\s+\d+\s*$", "", query)


# --- the tests ------------------------------------------------------------------------------------


def test_courier_sql_falls_back_to_its_own_session_when_no_endpoint_is_up(
    spark, cfg, tmp_path, capsys
):
    # An empty warehouse has no endpoint;
    # an in-memory catalog makes the fallback reuse this process's session.
    rc = courier_main(
        [
            "sql",
            f"SELECT count(*) AS n FROM {TRAIN_DB}.rejects",
            "--set",
            f"spark.warehouse_dir={tmp_path}",
            "--set",
            "spark.catalog=in-memory",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0
    assert f"no SQL endpoint is up for {tmp_path}" in err
    assert re.search(rf"\|\s*{spark.table(f'{TRAIN_DB}.rejects').count()}\|", out), out


@pytest.fixture(scope="module")
def spark_results(spark, endpoint) -> dict[str, tuple[list[str], list]]:
    """Columns and rows of the README's queries
    (without LIMIT) and of each view, by the Spark session."""
    queries = [
        *map(full, analyst_queries()),
        *(f"SELECT * FROM {DB}.{view}" for view in FEATURE_VIEWS),
        # Delta can answer this from its log;
        # its DATE min/max then broke the Thrift server's encoder.
        f"SELECT max(dt), min(dt), count(*) FROM {TRAIN_DB}.courier_samples",
    ]
    frames = {query: spark.sql(query) for query in queries}
    return {query: (frame.columns, frame.collect()) for query, frame in frames.items()}


def test_readme_queries_and_views_through_pyhive_match_spark(spark_results, endpoint):
    queries = analyst_queries()
    assert len(queries) == 7, (
        "the README's analyst queries changed: check this test's database mapping"
    )
    with endpoint.connect() as connection:
        cursor = connection.cursor()
        for query, (_, rows) in spark_results.items():
            cursor.execute(query)
            assert_same_rows(rows, cursor.fetchall(), query)
        # as written, LIMIT included: min(LIMIT, all) rows, all of them in the full result
        for query in queries:
            cursor.execute(query)
            got, whole = cursor.fetchall(), spark_results[full(query)][1]
            limit = re.search(r"LIMIT\s+(\d+)\s*$", query)
            assert len(got) == (min(int(limit[1]), len(whole)) if limit else len(whole)), query
            expected, limited = _canonical(whole, got)
            assert set(limited) <= set(expected), query


def test_readme_queries_through_beeline_match_spark(spark_results, endpoint, tmp_path):
    queries = list(spark_results)
    # One beeline (one JVM start) for every query: a marker row before each result tells them apart.
    script = tmp_path / "queries.sql"
    script.write_text(
        "".join(f"SELECT 'query-{i}' AS marker;\n{q};\n" for i, q in enumerate(queries))
        + f"DELETE FROM {DB}.fresh WHERE v = 1;\n"
    )
    done = subprocess.run(
        [
            str(BEELINE),
            "-u",
            endpoint.jdbc_url,
            "-n",
            endpoint.user,
            "-p",
            endpoint.password,
            "--outputformat=csv2",
            "--silent=true",
            "--force=true",
            "-f",
            str(script),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    # beeline's csv2 quotes a value holding a comma (a map, an array) with NUL characters
    lines = list(csv.reader(io.StringIO(done.stdout), quotechar="\x00"))
    starts = [i for i, line in enumerate(lines) if line and line[0].startswith("query-")]
    assert len(starts) == len(queries), done.stdout[-2000:] + done.stderr[-2000:]
    for n, (query, start) in enumerate(zip(queries, starts, strict=True)):
        # the next marker's header line
        end = starts[n + 1] - 1 if n + 1 < len(starts) else len(lines)
        block = [line for line in lines[start + 1 : end] if line]
        assert block, f"{query}: beeline printed no header"
        header, *rows = block
        columns, spark_rows = spark_results[query]
        assert header == columns, query
        assert_same_rows(spark_rows, rows, query)
    assert "courier sql-server is read-only: DELETE" in done.stderr


def test_courier_sql_uses_the_endpoint_without_spark(spark, endpoint):
    query = f"SELECT image_cluster_id, items FROM {DB}.cluster_summary ORDER BY image_cluster_id"
    probe = (
        "import sys; from jobs.cli import main; rc = main(sys.argv[1:]); "
        "print('pyspark imported:', 'pyspark' in sys.modules, file=sys.stderr); sys.exit(rc)"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            probe,
            "sql",
            query,
            "--limit",
            "3",
            "--set",
            f"spark.warehouse_dir={endpoint.warehouse}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pyspark imported: False" in done.stderr and "no SQL endpoint" not in done.stderr
    # Spark's own show() is the reference, not courier's format_table (a change to format_table
    # would change both sides of the comparison).
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        spark.sql(query).show(3, 60)
    assert done.stdout == shown.getvalue()


def endpoint_cfg(endpoint) -> SparkConfig:
    """A configuration naming the endpoint's warehouse."""
    return SparkConfig(warehouse_dir=str(endpoint.warehouse))


WRITES = [
    ("INSERT", f"INSERT INTO {DB}.fresh VALUES (1000)"),
    ("INSERT", f"INSERT OVERWRITE {DB}.fresh SELECT 1"),
    (
        "MERGE",
        f"MERGE INTO {DB}.fresh t USING (SELECT 1 AS v) s ON t.v = s.v WHEN MATCHED THEN DELETE",
    ),
    ("UPDATE", f"UPDATE {DB}.fresh SET v = 0 WHERE v = 1"),
    ("DELETE", f"DELETE FROM {DB}.fresh WHERE v = 1"),
    ("TRUNCATE", f"TRUNCATE TABLE {DB}.fresh"),
    ("CREATE", f"CREATE TABLE {DB}.other (v INT) USING delta"),
    ("CREATE", f"CREATE TABLE {DB}.other USING delta AS SELECT 1 AS v"),
    ("CREATE", f"CREATE OR REPLACE VIEW {DB}.cluster_summary AS SELECT 1 AS v"),
    ("CREATE", "CREATE DATABASE courier_sql_endpoint_other"),
    ("CREATE", "CREATE TEMPORARY FUNCTION f AS 'java.lang.String'"),
    ("DROP", f"DROP TABLE {DB}.fresh"),
    ("DROP", f"DROP VIEW {DB}.cluster_summary"),
    ("DROP", f"DROP DATABASE {DB} CASCADE"),
    ("ALTER", f"ALTER TABLE {DB}.fresh ADD COLUMNS (w INT)"),
    ("ALTER", f"ALTER TABLE {DB}.fresh SET TBLPROPERTIES ('x' = '1')"),
    ("ALTER", f"ALTER TABLE {DB}.fresh RENAME TO {DB}.renamed"),
    ("OPTIMIZE", f"OPTIMIZE {DB}.fresh"),
    ("VACUUM", f"VACUUM {DB}.fresh RETAIN 0 HOURS"),
    ("CACHE", f"CACHE TABLE {DB}.fresh"),
    ("ADD JAR", "ADD JAR /nonexistent.jar"),
    ("reflect", "SELECT reflect('java.lang.System', 'getProperty', 'user.home')"),
    ("TRANSFORM", f"SELECT TRANSFORM(v) USING 'cat' AS (w) FROM {DB}.fresh"),
]
READS = [
    f"SHOW TABLES IN {DB}",
    f"DESCRIBE TABLE {DB}.fresh",
    f"DESCRIBE HISTORY {DB}.fresh",
    f"USE {DB}",
    "SET spark.sql.shuffle.partitions=2",
    f"EXPLAIN SELECT * FROM {DB}.fresh",
    f"SHOW COLUMNS IN {DB}.fresh",
    f"SHOW TBLPROPERTIES {DB}.fresh",
]


def test_every_kind_of_write_is_refused_and_reads_are_not(spark, endpoint, fresh_table):
    version = spark.sql(f"DESCRIBE HISTORY {fresh_table} LIMIT 1").first()["version"]
    with endpoint.connect() as connection:
        cursor = connection.cursor()
        for kind, statement in WRITES:
            with pytest.raises(Exception) as refused:  # noqa: PT011 - thrift's or PyHive's class; message checked below
                cursor.execute(statement)
            message = refused.value.args[0].status.errorMessage
            assert "courier sql-server is read-only" in message and kind.split()[0] in message, (
                statement,
                message,
            )
        for statement in READS:
            cursor.execute(statement)
    assert spark.sql(f"DESCRIBE HISTORY {fresh_table} LIMIT 1").first()["version"] == version
    assert spark.catalog.tableExists(f"{DB}.cluster_summary") and not spark.catalog.tableExists(
        f"{DB}.other"
    )


def _listening_on(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp* writes them) that listen on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                found.add(local.rsplit(":", 1)[0])
    return found


def test_logins_need_the_generated_credentials(endpoint):
    # 127.0.0.1 only (on an IPv6 socket the JVM writes it ::ffff:127.0.0.1):
    # no wildcard, no other address
    assert _listening_on(endpoint.port) and _listening_on(endpoint.port) <= {
        "0100007F",
        "0000000000000000FFFF00000100007F",
    }
    credentials = endpoint.warehouse / ".sql-server" / "credentials.properties"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert f"password={endpoint.password}" in credentials.read_text()
    for wrong in (
        dataclasses.replace(endpoint, password=endpoint.password + "x"),
        dataclasses.replace(endpoint, user="root"),
        dataclasses.replace(endpoint, password=""),
    ):
        with pytest.raises(Exception, match="Error validating the login"):
            wrong.connect()


def test_a_commit_is_seen_by_the_next_query_and_does_not_break_a_running_one(
    spark, endpoint, fresh_table
):
    with endpoint.connect() as connection:
        cursor = connection.cursor()
        cursor.execute(f"SELECT count(*) FROM {fresh_table}")
        before = cursor.fetchall()[0][0]
        spark.range(0, 7).withColumnRenamed("id", "v").write.format("delta").mode(
            "append"
        ).saveAsTable(fresh_table)
        cursor.execute(f"SELECT count(*) FROM {fresh_table}")
        assert cursor.fetchall()[0][0] == before + 7  # no stale snapshot, no cached table

        # A query that runs for a few seconds while the
        # table is overwritten: it answers from one version.
        slow = (
            f"SELECT count(*) FROM {fresh_table} a CROSS JOIN range(200000) r "
            "WHERE (a.v + r.id) % 7 >= 0"
        )
        result: list = []
        worker = threading.Thread(target=lambda: result.append(_run(endpoint, slow)))
        worker.start()
        spark.range(0, 3).withColumnRenamed("id", "v").write.format("delta").mode(
            "overwrite"
        ).saveAsTable(fresh_table)
        worker.join(timeout=240)
        assert result and result[0] in ((before + 7) * 200000, 3 * 200000), result
        cursor.execute(f"SELECT count(*) FROM {fresh_table}")
        assert cursor.fetchall()[0][0] == 3

        # A commit that adds a column: the next query's plan is built on the new version. The
        # check above can pass on a stale snapshot too (a stale one starts a background refresh
        # that may land before the scan), but the columns are fixed when the query is analysed:
        # with a snapshot allowed to be stale (stalenessLimit 1h), `w` does not exist yet.
        spark.range(0, 5).selectExpr("id AS v", "id AS w").write.format("delta").mode(
            "append"
        ).option("mergeSchema", "true").saveAsTable(fresh_table)
        cursor.execute(f"SELECT count(w) FROM {fresh_table}")
        assert cursor.fetchall()[0][0] == 5


def _run(endpoint, query: str):
    with endpoint.connect() as connection:
        cursor = connection.cursor()
        cursor.execute(query)
        return cursor.fetchall()[0][0]


def test_the_endpoint_shares_the_catalog_server_and_refuses_a_second_start(endpoint, tmp_path):
    assert (endpoint.warehouse / ".catalog" / "clients" / str(endpoint.pid)).is_file()
    cfg = endpoint_cfg(endpoint)
    with pytest.raises(SqlServerError, match=f"running already on 127.0.0.1:{endpoint.port}"):
        start_sql_server(cfg, port=endpoint.port)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SqlServerError, match=f"port {port} on 127.0.0.1 is in use"):
            start_sql_server(dataclasses.replace(cfg, warehouse_dir=str(tmp_path)), port=port)


def test_stop_leaves_no_process(endpoint):
    warehouse = endpoint.warehouse
    assert stop_sql_server(warehouse)
    assert not pid_alive(endpoint.pid) and not pid_alive(endpoint.java_pid)
    assert running_endpoint(warehouse) is None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", endpoint.port), timeout=5).close()
    assert not stop_sql_server(warehouse)
