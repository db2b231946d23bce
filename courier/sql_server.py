"""The analysts' SQL endpoint: Spark's Thrift JDBC/ODBC
server over the warehouse, read-only, on loopback.

``courier sql-server start`` runs HiveThriftServer2 (its JARs and ``beeline`` ship with the pinned
pyspark) in a background process, over the same catalog and warehouse as the jobs: the process is
one more client of the warehouse's Derby network server (courier.catalog), registered like any job.
beeline, DBeaver, Superset and notebooks speak to it over JDBC/ODBC
(``jdbc:hive2://127.0.0.1:PORT``), and ``courier sql`` with a Python client
(PyHive), so a query costs no JVM start of its own.

Why Thrift and not Spark Connect: every BI tool and ``beeline`` already speaks HiveServer2's
protocol, while Spark Connect needs a Spark client library (pyspark's ``remote()`` or Scala's) and
offers nothing to JDBC/ODBC tools. Spark Connect (``spark-connect_2.13-4.0.1.jar`` ships too)
would be added as a second ``serve`` mode: the same session settings with
``spark.plugins=org.apache.spark.sql.connect.SparkConnectPlugin`` and
``spark.connect.grpc.binding.address=127.0.0.1`` instead of starting HiveThriftServer2; the
read-only extension applies unchanged (it checks analysed plans, whatever the protocol), but
Connect has no password check of its own (it would need a gRPC interceptor,
``spark.connect.grpc.interceptor.classes``, in the same JAR).

Access:
- the server listens on 127.0.0.1 only (``hive.server2.thrift.bind.host``; the driver's own
  ports too, SPARK_LOCAL_IP), and the Spark UI is off;
- CUSTOM authentication (SASL PLAIN, which hive-jdbc and PyHive both speak): user ``analyst``
  and a password generated at each start into ``credentials.properties``, mode 0600, as the
  catalog does with derby.properties; the provider is ``CredentialsFileAuthenticator``;
- read-only: the Spark SQL extension ``ReadOnlyExtension`` refuses every analysed plan that
  writes or changes the catalog (INSERT, MERGE, UPDATE, DELETE, CREATE, DROP, ALTER, and any
  command not on its allow-list), or runs code on the server (reflect, TRANSFORM).
Both classes are in ``build/sql-server/*.java``; ``make setup`` compiles them into
``.jars/sql-server/courier-sql-server.jar`` (a folder below the Delta JARs: jobs do not load it).

Freshness: each query resolves its Delta tables at the version committed last
(``spark.databricks.delta.stalenessLimit`` 0: Delta lists the table's log before planning, a
few ms), and Spark's table cache is never filled (CACHE TABLE is refused). A job's commit
during a query does not disturb it: the query reads the snapshot it started with, whose files
a commit never deletes (only VACUUM does, after the retention period).

Files under ``<warehouse>/.sql-server``:
    server.json             port and pids while the server is up (written once it accepts logins)
    credentials.properties  ``user`` and ``password`` (mode 0600)
    spark.json              the Spark settings the server runs with (mode 0600: it may hold a
                            metastore password)
    server.log              the server's output
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from courier.catalog import accepts_connections, detach, pid_alive
from courier.config import PROJECT_ROOT, Catalog, SparkConfig
from courier.config.plumbing import JARS_DIR

log = logging.getLogger(__name__)

STATE_DIR = ".sql-server"
USER = "analyst"
DEFAULT_PORT = 10000  # HiveServer2's usual port: what BI tools propose
START_TIMEOUT_S = (
    240.0  # a JVM, a Spark session and the catalog; ~25 s idle, minutes on a loaded 2-core box
)
STOP_TIMEOUT_S = 60.0
# under spark.jars_dir, where make setup builds it
EXTENSION_JAR = Path("sql-server") / "courier-sql-server.jar"
READ_ONLY_EXTENSION = "courier.sqlserver.ReadOnlyExtension"
AUTHENTICATOR = "courier.sqlserver.CredentialsFileAuthenticator"
CREDENTIALS_PROPERTY = "courier.sqlserver.credentials"  # read by CredentialsFileAuthenticator
THRIFT_SERVER = "org.apache.spark.sql.hive.thriftserver.HiveThriftServer2"


class SqlServerError(RuntimeError):
    """The SQL endpoint cannot start, stop or be reached
    (the message names what and says what to do)."""


@dataclass(frozen=True)
class Endpoint:
    """A running SQL endpoint and how to log in to it."""

    warehouse: Path
    port: int
    user: str
    password: str
    pid: int  # the serving Python process
    java_pid: int  # its JVM (the Spark driver and the Thrift server)

    @property
    def jdbc_url(self) -> str:
        return f"jdbc:hive2://127.0.0.1:{self.port}/default"

    def connect(self) -> Any:
        """A PyHive DB-API connection (SASL PLAIN with the generated credentials)."""
        try:
            from pyhive import hive
        except ImportError as exc:
            raise SqlServerError(
                "the Python client of the SQL endpoint is not installed: "
                "pip install 'courier[sql]' (PyHive with pure-sasl; make setup does)"
            ) from exc
        logging.getLogger("pyhive").setLevel(logging.WARNING)  # it logs every statement at INFO
        return hive.connect(
            host="127.0.0.1",
            port=self.port,
            username=self.user,
            password=self.password,
            auth="CUSTOM",
        )


# --- paths and state ------------------------------------------------------------------------------


def warehouse_path(cfg: SparkConfig) -> Path:
    """The local warehouse folder of ``cfg``
    (as courier.spark.resolve_path, without importing pyspark:
    ``courier sql`` through the endpoint stays a ~0.3 s Python start)."""
    if "://" in cfg.warehouse_dir:
        raise SqlServerError(
            f"the SQL endpoint serves a local warehouse (spark.warehouse_dir), got "
            f"{cfg.warehouse_dir}: on a cluster the shop's SQL engine serves analysts "
            "(docs/PRODUCTION.md)"
        )
    path = Path(cfg.warehouse_dir)
    return (path if path.is_absolute() else PROJECT_ROOT / path).resolve()


def extension_jar(cfg: SparkConfig) -> Path:
    """The JAR of ReadOnlyExtension and CredentialsFileAuthenticator (built by ``make setup``)."""
    jars_dir = Path(cfg.jars_dir or JARS_DIR)
    return (jars_dir if jars_dir.is_absolute() else PROJECT_ROOT / jars_dir) / EXTENSION_JAR


class _State:
    """``<warehouse>/.sql-server``: what the server and its clients share."""

    def __init__(self, warehouse: Path) -> None:
        self.warehouse = warehouse.resolve()
        self.path = self.warehouse / STATE_DIR
        self.info_file = self.path / "server.json"
        self.credentials = self.path / "credentials.properties"
        self.spark_file = self.path / "spark.json"
        self.log = self.path / "server.log"

    def read_info(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.info_file.read_text())
        except (OSError, ValueError):
            return None

    def write_private(self, path: Path, text: str) -> None:
        """Write an owner-only file (mode 0600 from its creation on: never readable by others)."""
        path.unlink(missing_ok=True)  # O_CREAT keeps an existing file's mode
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)

    def write_credentials(self) -> None:
        self.write_private(self.credentials, f"user={USER}\npassword={secrets.token_urlsafe(24)}\n")

    def read_credentials(self) -> tuple[str, str]:
        try:
            text = self.credentials.read_text()
        except OSError as exc:
            raise SqlServerError(
                f"the SQL endpoint's credentials file {self.credentials} cannot be read "
                f"({exc.strerror}): restart it with `courier sql-server start`"
            ) from exc
        values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        if "user" not in values or "password" not in values:
            raise SqlServerError(
                f"{self.credentials} has no user or password: restart the endpoint"
            )
        return values["user"], values["password"]

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def running_endpoint(warehouse: Path) -> Endpoint | None:
    """The warehouse's endpoint if its processes are alive and it accepts connections, else None."""
    state = _State(warehouse)
    info = state.read_info()
    if info is None or not (pid_alive(info["pid"]) and pid_alive(info["java_pid"])):
        return None
    if not accepts_connections(info["port"]):
        return None
    user, password = state.read_credentials()
    return Endpoint(
        state.warehouse, int(info["port"]), user, password, int(info["pid"]), int(info["java_pid"])
    )


def endpoint_for(cfg: SparkConfig) -> Endpoint | None:
    """The running endpoint of ``cfg``'s warehouse;
    None when there is none (or the warehouse is remote)."""
    if "://" in cfg.warehouse_dir:
        return None
    return running_endpoint(warehouse_path(cfg))


# --- the client side: courier sql through the endpoint --------------------------------------------


def run_statements(
    endpoint: Endpoint,
    statements: Sequence[str],
    limit: int,
    truncate: int,
    out: TextIO | None = None,
) -> None:
    """Run ``statements`` through the endpoint, printing each result as Spark's ``show`` would.

    Raises:
        SqlServerError: the login or a statement was refused (the message quotes the server).
    """
    out = out or sys.stdout
    try:
        connection = endpoint.connect()
    except SqlServerError:
        raise
    except Exception as exc:  # thrift's TTransportException and socket errors
        raise SqlServerError(
            f"cannot log in to the SQL endpoint {endpoint.jdbc_url} as {endpoint.user}: {exc}. "
            "Restart it (`courier sql-server stop`, then `start`) or use --no-endpoint"
        ) from exc
    with closing(connection):
        cursor = connection.cursor()
        for statement in statements:
            try:
                cursor.execute(statement)
                rows = cursor.fetchmany(limit + 1) if cursor.description else None
            except Exception as exc:  # pyhive.exc.DatabaseError carrying the server's response
                raise SqlServerError(
                    f"the SQL endpoint {endpoint.jdbc_url} answered: {server_message(exc)}"
                ) from exc
            if rows is not None:
                columns = [d[0] for d in cursor.description]
                out.write(format_table(columns, rows[:limit], truncate, more=len(rows) > limit))


def server_message(exc: Exception) -> str:
    """The server's error text from a PyHive error (its first argument is the Thrift response)."""
    response = exc.args[0] if exc.args else None
    message = getattr(getattr(response, "status", None), "errorMessage", None)
    return (message or str(exc)).strip()


def format_table(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], truncate: int, more: bool
) -> str:
    """Rows as Spark's ``DataFrame.show(n, truncate)`` prints them
    (right-aligned unless truncate is 0)."""

    def cell(value: Any) -> str:
        text = (
            "NULL"
            if value is None
            else str(value).lower()
            if isinstance(value, bool)
            else str(value)
        )
        if 0 < truncate < len(text):
            text = text[:truncate] if truncate < 4 else text[: truncate - 3] + "..."
        return text

    header = [cell(c) for c in columns]
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(3, len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    pad: Callable[[str, int], str] = (
        (lambda text, width: text.rjust(width))
        if truncate > 0
        else (lambda text, width: text.ljust(width))
    )
    rule = "+" + "+".join("-" * w for w in widths) + "+"

    def line(texts: list[str]) -> str:
        return "|" + "|".join(pad(t, w) for t, w in zip(texts, widths, strict=False)) + "|"

    # Spark's showString ends each table line with a newline and adds the footer without one;
    # show() prints it with one more: a blank line after a whole table, none after the footer.
    shown = "".join(f"{text}\n" for text in [rule, line(header), rule, *map(line, cells), rule])
    if more:
        shown += f"only showing top {len(rows)} row{'s' if len(rows) != 1 else ''}"
    return shown + "\n"


# --- start, stop, status --------------------------------------------------------------------------


def start_sql_server(
    cfg: SparkConfig, port: int = DEFAULT_PORT, timeout_s: float = START_TIMEOUT_S
) -> Endpoint:
    """Start the endpoint for ``cfg``'s warehouse in the background; return once it accepts logins.

    Raises:
        SqlServerError: it is running already, the port is taken, the extension JAR is not built,
            or the server did not come up (the message quotes its log).
    """
    state = _State(warehouse_path(cfg))
    if (running := running_endpoint(state.warehouse)) is not None:
        raise SqlServerError(
            f"the SQL endpoint of {state.warehouse} is running already on 127.0.0.1:"
            f"{running.port} (pid {running.pid}): `courier sql-server stop` first"
        )
    if not extension_jar(cfg).is_file():
        raise SqlServerError(
            f"the SQL endpoint's read-only extension {extension_jar(cfg)} is not built: "
            "run `make setup`"
        )
    _require_free_port(port)
    state.path.mkdir(parents=True, exist_ok=True)
    state.info_file.unlink(missing_ok=True)
    state.write_credentials()
    state.write_private(state.spark_file, json.dumps(dataclasses.asdict(cfg)))
    launched = subprocess.run(
        [
            sys.executable,
            "-m",
            "courier.sql_server",
            "serve",
            "--detach",
            "--warehouse",
            str(state.warehouse),
            "--port",
            str(port),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    pid = int(launched.stdout.strip() or 0) if launched.returncode == 0 else 0
    deadline = time.monotonic() + timeout_s
    while pid and pid_alive(pid) and time.monotonic() < deadline:
        endpoint = running_endpoint(state.warehouse)
        if endpoint is not None and endpoint.pid == pid:
            log.info(
                "sql-server: serving %s on %s (log %s)",
                state.warehouse,
                endpoint.jdbc_url,
                state.log,
            )
            return endpoint
        time.sleep(0.5)
    if pid and pid_alive(pid):
        _stop_processes(state, {"pid": pid, "java_pid": 0})
    raise SqlServerError(
        f"the SQL endpoint for {state.warehouse} did not start on 127.0.0.1:{port} within "
        f"{timeout_s:.0f} s; the end of {state.log}:\n{launched.stderr.strip()}{state.log_tail()}"
    )


def _require_free_port(port: int) -> None:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise SqlServerError(
                f"port {port} on 127.0.0.1 is in use ({exc.strerror}): stop what listens there "
                "or choose another with `courier sql-server start --port N`"
            ) from exc


def stop_sql_server(warehouse: Path, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop the warehouse's endpoint, its JVM included; False when none was running."""
    state = _State(warehouse)
    info = state.read_info()
    if info is None or not (pid_alive(info["pid"]) or pid_alive(info["java_pid"])):
        state.info_file.unlink(missing_ok=True)
        return False
    _stop_processes(state, info, timeout_s)
    return True


def _stop_processes(state: _State, info: dict[str, Any], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the serving process (it stops the Thrift server and Spark);
    SIGKILL what outlives the timeout."""
    pids = [pid for pid in (info["pid"], info["java_pid"]) if pid]
    if pid_alive(info["pid"]):
        os.kill(info["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(pid_alive(pid) for pid in pids):
        time.sleep(0.2)
    for pid in pids:
        if pid_alive(pid):
            log.warning(
                "sql-server: pid %d outlived %.0f s after SIGTERM, killing it", pid, timeout_s
            )
            os.kill(pid, signal.SIGKILL)
    state.info_file.unlink(missing_ok=True)


def server_status(warehouse: Path) -> str:
    """One paragraph: where the endpoint listens and how to log in, or that it is not running."""
    state = _State(warehouse)
    endpoint = running_endpoint(state.warehouse)
    if endpoint is None:
        return f"sql-server: not running for {state.warehouse} (`courier sql-server start`)"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state.info_file.stat().st_mtime))
    return (
        f"sql-server: up since {started} for {state.warehouse} "
        f"(pid {endpoint.pid}, JVM {endpoint.java_pid})\n"
        f"  {endpoint.jdbc_url}  user {endpoint.user}, password in {state.credentials}\n"
        f"  beeline -u {endpoint.jdbc_url} -n {endpoint.user} -p \"$(sed -n 's/^password=//p' "
        f'{state.credentials})"\n  log: {state.log}'
    )


# --- the serving process (python -m courier.sql_server serve) -------------------------------------


def server_spark_config(cfg: SparkConfig, state: _State, port: int) -> SparkConfig:
    """``cfg`` plus the endpoint's settings:
    read-only extension, Thrift on loopback with CUSTOM auth."""
    from courier.spark import DELTA_EXTENSION, delta_jars, derby_jars

    # Thrift's worker threads (logins, sessions, queries) load classes through the JVM's own class
    # loader, which does not see spark.jars: Delta's classes, the extension and the authenticator go
    # on the driver's class path (without this,
    # queries fail at random: NoClassDefFoundError of Delta).
    class_path = [*(delta_jars(cfg.jars_dir) if cfg.jars_dir else []), str(extension_jar(cfg))]
    if cfg.catalog == Catalog.DERBY:
        class_path.insert(0, derby_jars(cfg).client)  # what courier.spark puts there, kept
    hive = {
        "bind.host": "127.0.0.1",
        "port": str(port),
        "transport.mode": "binary",
        "authentication": "CUSTOM",
        "custom.authentication.class": AUTHENTICATOR,
        "enable.doAs": "false",
        "logging.operation.log.location": str(state.path / "operation_logs"),
    }
    # Hive's scratch folders default to /tmp/hive and /tmp/<user>,
    # shared by every user of the machine.
    scratch = {
        "hive.exec.scratchdir": state.path / "scratch",
        "hive.exec.local.scratchdir": state.path / "scratch",
    }
    conf = {
        **cfg.conf,
        # Delta after the endpoint's check: Spark runs every extension's check rules on each plan.
        "spark.sql.extensions": f"{DELTA_EXTENSION},{READ_ONLY_EXTENSION}",
        "spark.driver.extraClassPath": os.pathsep.join(class_path),
        # 0 (Delta's default, pinned here): every query lists the table's log and plans on the
        # newest committed version, so analysts see a job's commit at once.
        "spark.databricks.delta.stalenessLimit": "0",
        # Delta answers count/min/max from its log when it can, but its min/max of a DATE column is
        # a java.time.LocalDate that the Thrift server's row encoder cannot cast to java.sql.Date
        # (SELECT max(dt) FROM courier_samples fails with a ClassCastException):
        # read the files instead.
        "spark.databricks.delta.optimizeMetadataQuery.enabled": "false",
        # No SELECT * FROM parquet.`/any/path`:
        # analysts read the catalog's tables, not the owner's files.
        "spark.sql.runSQLOnFiles": "false",
        **{
            f"spark.hadoop.hive.server2.thrift.{k}"
            if k in ("bind.host", "port")
            else f"spark.hadoop.hive.server2.{k}": v
            for k, v in hive.items()
        },
        **{f"spark.hadoop.{k}": str(v) for k, v in scratch.items()},
    }
    return dataclasses.replace(cfg, app_name="courier-sql-server", ui_enabled=False, conf=conf)


def serve(warehouse: Path, port: int) -> int:
    """Run the Thrift server until SIGTERM;
    then stop it and Spark (the JVM exits with this process)."""
    from courier.spark import build_spark_session

    state = _State(warehouse)
    cfg = SparkConfig(**json.loads(state.spark_file.read_text()))
    os.environ["SPARK_LOCAL_IP"] = (
        "127.0.0.1"  # the driver's RPC and block manager ports: loopback too
    )
    stop_requested: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.append(True))
    signal.signal(signal.SIGINT, lambda *_: stop_requested.append(True))
    # No database argument: CREATE DATABASE is a write, which the endpoint's own session refuses.
    spark = build_spark_session(server_spark_config(cfg, state, port))
    jvm, gateway = spark.sparkContext._jvm, spark.sparkContext._gateway
    assert jvm is not None and gateway is not None  # set on the driver while the session runs
    jvm.java.lang.System.setProperty(CREDENTIALS_PROPERTY, str(state.credentials))
    # Hive reads the authenticator's class from a fresh HiveConf, which sees system properties only.
    jvm.java.lang.System.setProperty("hive.server2.custom.authentication.class", AUTHENTICATOR)
    server = getattr(jvm, THRIFT_SERVER).startWithContext(spark._jsparkSession.sqlContext())
    java_pid = gateway.proc.pid
    tmp = state.info_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"port": port, "pid": os.getpid(), "java_pid": java_pid}))
    os.replace(tmp, state.info_file)
    print(
        f"sql-server: serving {state.warehouse} on jdbc:hive2://127.0.0.1:{port}/default",
        flush=True,
    )
    while not stop_requested:
        time.sleep(0.5)
    print("sql-server: stopping", flush=True)
    state.info_file.unlink(missing_ok=True)
    server.stop()
    spark.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m courier.sql_server")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="run the SQL endpoint (courier sql-server start runs this)")
    run.add_argument("--warehouse", type=Path, required=True)
    run.add_argument("--port", type=int, required=True)
    run.add_argument(
        "--detach", action="store_true", help="run it in the background; print its pid"
    )
    args = parser.parse_args(argv)
    if args.detach:
        return detach(
            "courier.sql_server", [a for a in argv if a != "--detach"], _State(args.warehouse).log
        )
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return serve(args.warehouse, args.port)


if __name__ == "__main__":
    sys.exit(main())
