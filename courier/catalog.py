"""The embedded catalog: Derby's network server, one per warehouse, started on demand.

Embedded Derby lets one JVM open a database, so while one ``courier`` job held the
warehouse's metastore a second process (an analyst's ``courier sql`` during the nightly
run) could not open the catalog at all. On the embedded default (``spark.catalog: derby``)
no Spark driver opens the database itself any more: the first courier process that needs
it starts Derby's network server for the warehouse on a free loopback port, under a small
supervisor process, and every driver connects to it as a JDBC client. Any number of
processes then share the catalog, and Delta's optimistic commits keep their table writes
consistent. The database stays where it was (``<warehouse>/metastore_db``), so a
warehouse made before keeps its tables.

Why Derby's server rather than PostgreSQL: it is the same database engine Spark ships,
needs no system package, no root and no service to install on a laptop (its one JAR,
``derbynet``, comes from Maven Central with the Delta JARs), and it opens the existing
metastore files as they are. A production cluster has its own shared Hive metastore
(``spark.catalog: external``), usually on PostgreSQL or MySQL; this is for one machine.

The supervisor stops the server once no courier process has used it for
``spark.catalog_idle_s`` seconds: each process registers its pid under
``<warehouse>/.catalog/clients``, and the pids of processes that ended (killed ones too)
are swept. The server listens on 127.0.0.1 only and asks for a password that lives in a
file only the warehouse's owner can read.

Files under ``<warehouse>/.catalog``:
    server.json     port and pids while the server is up (written once it accepts connections)
    lock            flock that serialises starting, registering and stopping
    server.log      the supervisor's and the server's output
    derby.properties  the server's settings and its user (mode 0600)
    clients/<pid>   one per process using the server
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DERBY_USER = "courier"
CLIENT_DRIVER = "org.apache.derby.jdbc.ClientDriver"
SERVER_MAIN = "org.apache.derby.drda.NetworkServerControl"
STATE_DIR = ".catalog"
START_TIMEOUT_S = 90.0
POLL_S = 1.0


class CatalogUnavailableError(RuntimeError):
    """The table catalog cannot be opened (the message names it and says what to do)."""


@dataclass(frozen=True)
class CatalogServer:
    """A running Derby network server serving one warehouse's metastore."""

    warehouse: Path
    port: int
    password: str

    @property
    def jdbc_url(self) -> str:
        return f"jdbc:derby://127.0.0.1:{self.port}/{self.warehouse}/metastore_db;create=true"

    def spark_conf(self) -> dict[str, str]:
        """The Hive metastore settings that make a Spark driver a client of this server."""
        return {
            "spark.hadoop.javax.jdo.option.ConnectionURL": self.jdbc_url,
            "spark.hadoop.javax.jdo.option.ConnectionDriverName": CLIENT_DRIVER,
            "spark.hadoop.javax.jdo.option.ConnectionUserName": DERBY_USER,
            "spark.hadoop.javax.jdo.option.ConnectionPassword": self.password,
        }


@dataclass(frozen=True)
class DerbyJars:
    """Derby's JARs: the engine Spark ships,
    plus the network server and client of the same version."""

    engine: tuple[str, ...]  # derby, derbyshared, derbytools from pyspark's jars/
    server: str  # derbynet
    client: str  # derbyclient: must be on the Spark driver's class path (JDBC's DriverManager)

    @property
    def server_classpath(self) -> str:
        return os.pathsep.join([*self.engine, self.server])


def find_derby_jars(jars_dir: Path) -> DerbyJars:
    """The Derby JARs for the server and the client; an error saying how to get them if missing."""
    spark_jars = _spark_home() / "jars"
    engine = sorted(spark_jars.glob("derby-*.jar"))
    if not engine:
        raise CatalogUnavailableError(
            f"no derby-*.jar in {spark_jars}: this pyspark has no Derby engine"
        )
    version = engine[0].name[len("derby-") : -len(".jar")]
    names = ("derbyshared", "derbytools")
    engine_jars = [str(engine[0]), *(str(spark_jars / f"{name}-{version}.jar") for name in names)]
    server, client = (jars_dir / f"derbynet-{version}.jar", jars_dir / f"derbyclient-{version}.jar")
    missing = [str(p) for p in (server, client, *map(Path, engine_jars)) if not p.is_file()]
    if missing:
        raise CatalogUnavailableError(
            f"the embedded catalog's Derby {version} JARs are missing ({', '.join(missing)}): run "
            "`make setup` (it resolves derbynet and derbyclient from Maven Central with the Delta "
            "JARs)"
        )
    return DerbyJars(tuple(engine_jars), str(server), str(client))


def _spark_home() -> Path:
    """SPARK_HOME (spark-submit sets it;
    there pyspark itself is imported from a zip), else pyspark's folder."""
    if os.environ.get("SPARK_HOME"):
        return Path(os.environ["SPARK_HOME"])
    import pyspark

    return Path(pyspark.__file__).parent


# --- the client side: find or start the server, register this process ----------------------------


def ensure_catalog_server(warehouse: str | Path, jars: DerbyJars, idle_s: float) -> CatalogServer:
    """The warehouse's running catalog server,
    started if there is none; this process becomes its client.

    Raises:
        CatalogUnavailableError: the server would not start (the message quotes its log).
    """
    state = _StateDir(Path(warehouse))
    state.path.mkdir(parents=True, exist_ok=True)
    with state.locked():
        server = state.running_server()
        if server is None:
            server = _start_server(state, jars, idle_s)
        state.register_client(os.getpid())
    return server


def _start_server(state: _StateDir, jars: DerbyJars, idle_s: float) -> CatalogServer:
    """Start the supervisor (which starts Derby) and wait until the server accepts connections."""
    state.write_server_properties()
    state.clients.mkdir(exist_ok=True)
    # `serve --detach` starts the supervisor in a session of its own and exits at once, printing
    # its pid: the supervisor is then nobody's child here (no zombie), and outlives this process.
    launched = subprocess.run(
        [
            sys.executable,
            "-m",
            "courier.catalog",
            "serve",
            "--detach",
            "--warehouse",
            str(state.warehouse),
            "--classpath",
            jars.server_classpath,
            "--idle-s",
            str(idle_s),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    supervisor_pid = int(launched.stdout.strip() or 0) if launched.returncode == 0 else 0
    deadline = time.monotonic() + START_TIMEOUT_S
    while supervisor_pid and time.monotonic() < deadline and pid_alive(supervisor_pid):
        server = state.running_server()
        if server is not None:
            log.info(
                "catalog: started Derby's network server for %s on 127.0.0.1:%d (log %s)",
                state.warehouse,
                server.port,
                state.log,
            )
            return server
        time.sleep(0.2)
    if supervisor_pid and pid_alive(supervisor_pid):
        os.kill(supervisor_pid, signal.SIGTERM)
    raise CatalogUnavailableError(
        f"the embedded catalog's Derby server for {state.warehouse} did not start; the end of "
        f"{state.log}:\n{launched.stderr.strip()}{state.log_tail()}\nIs `java` (Java 17) on PATH "
        f"or JAVA_HOME set? Is another Derby using {state.warehouse}/metastore_db (a job of an "
        "older courier)? Fix that, or use --set spark.catalog=in-memory for a throw-away catalog"
    )


def stop_catalog_server(warehouse: str | Path, timeout_s: float = 30.0) -> bool:
    """Stop the warehouse's catalog server now (clients or not); False when none was running."""
    state = _StateDir(Path(warehouse))
    info = state.read_info()
    if info is None or not pid_alive(info["supervisor_pid"]):
        return False
    os.kill(info["supervisor_pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and pid_alive(info["supervisor_pid"]):
        time.sleep(0.1)
    return True


# --- the warehouse's .catalog folder --------------------------------------------------------------


class _StateDir:
    """``<warehouse>/.catalog``: the server's state, shared by its clients and its supervisor."""

    def __init__(self, warehouse: Path) -> None:
        self.warehouse = warehouse.resolve()
        self.path = self.warehouse / STATE_DIR
        self.info_file = self.path / "server.json"
        self.log = self.path / "server.log"
        self.clients = self.path / "clients"
        self.properties = self.path / "derby.properties"

    @contextmanager
    def locked(self) -> Iterator[None]:
        with open(self.path / "lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def read_info(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.info_file.read_text())
        except (OSError, ValueError):
            return None

    def write_info(self, info: dict[str, Any]) -> None:
        tmp = self.info_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, self.info_file)  # readers see the whole file or none

    def running_server(self) -> CatalogServer | None:
        """The server in server.json if its supervisor
        and JVM are alive and it accepts connections."""
        info = self.read_info()
        if info is None or not (pid_alive(info["supervisor_pid"]) and pid_alive(info["java_pid"])):
            return None
        if not accepts_connections(info["port"]):
            return None
        return CatalogServer(self.warehouse, int(info["port"]), self.password())

    def write_server_properties(self) -> None:
        """derby.properties with a fresh password for the server's one user (owner-only file)."""
        password = secrets.token_urlsafe(24)
        text = (
            "derby.connection.requireAuthentication=true\n"
            "derby.authentication.provider=BUILTIN\n"
            f"derby.user.{DERBY_USER}={password}\n"
            "derby.drda.host=127.0.0.1\n"
        )
        fd = os.open(self.properties, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)

    def password(self) -> str:
        for line in self.properties.read_text().splitlines():
            if line.startswith(f"derby.user.{DERBY_USER}="):
                return line.split("=", 1)[1]
        raise CatalogUnavailableError(f"{self.properties} has no derby.user.{DERBY_USER}")

    def register_client(self, pid: int) -> None:
        (self.clients / str(pid)).write_text(_start_time(pid))

    def live_clients(self) -> list[int]:
        """Pids of registered processes still running; the entries of ended ones are removed."""
        live = []
        for entry in self.clients.glob("*"):
            pid = int(entry.name) if entry.name.isdigit() else -1
            if pid > 0 and pid_alive(pid) and entry.read_text() == _start_time(pid):
                live.append(pid)
            else:
                entry.unlink(missing_ok=True)
        return live

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (another user's counts: signal 0 is refused, not lost)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start_time(pid: int) -> str:
    """The process's start time (guards against a reused pid), where /proc has it; else ''."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def accepts_connections(port: int) -> bool:
    """Whether something listens on ``127.0.0.1:port`` (a TCP connect within 2 s)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- the supervisor (python -m courier.catalog serve) ---------------------------------------------


def _java() -> str:
    """The java that Spark would use: $JAVA_HOME/bin/java, else the one on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        java = Path(java_home) / "bin" / "java"
        if not java.is_file():
            raise SystemExit(f"catalog: JAVA_HOME={java_home} has no bin/java")
        return str(java)
    found = shutil.which("java")
    if not found:
        raise SystemExit("catalog: no java on PATH and JAVA_HOME is not set")
    return found


def serve(warehouse: Path, classpath: str, idle_s: float) -> int:
    """Run Derby's network server for ``warehouse`` until
    it has had no client for ``idle_s`` seconds."""
    state = _StateDir(warehouse)
    port = _free_port()
    server = subprocess.Popen(
        [
            _java(),
            "-Xmx256m",
            "-cp",
            classpath,
            f"-Dderby.system.home={state.path}",
            SERVER_MAIN,
            "start",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-noSecurityManager",
        ],
        stdin=subprocess.DEVNULL,
    )
    stop_requested: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.append(True))
    signal.signal(signal.SIGINT, lambda *_: stop_requested.append(True))
    deadline = time.monotonic() + START_TIMEOUT_S
    while not accepts_connections(port):
        if server.poll() is not None or time.monotonic() > deadline or stop_requested:
            print(f"catalog: Derby's server did not come up on port {port}", flush=True)
            _shutdown(server)
            return 1
        time.sleep(0.2)
    state.write_info(
        {
            "port": port,
            "supervisor_pid": os.getpid(),
            "java_pid": server.pid,
            "warehouse": str(state.warehouse),
        }
    )
    print(
        f"catalog: serving {state.warehouse}/metastore_db on 127.0.0.1:{port} (stops after "
        f"{idle_s:.0f} s idle)",
        flush=True,
    )
    _watch(state, server, idle_s, stop_requested)
    return 0


def _watch(
    state: _StateDir, server: subprocess.Popen[bytes], idle_s: float, stop_requested: list[bool]
) -> None:
    """Until stopped, idle or gone: sweep ended clients; then retire the server under the lock."""
    idle_since = time.monotonic()
    while not stop_requested and server.poll() is None and state.path.is_dir():
        time.sleep(POLL_S)
        with state.locked():
            if state.live_clients():
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= idle_s:
                print(f"catalog: no client for {idle_s:.0f} s, stopping", flush=True)
                _retire(state, server)
                return
    with state.locked():
        _retire(state, server)


def _retire(state: _StateDir, server: subprocess.Popen[bytes]) -> None:
    """Unpublish the server (so no client picks it), then stop it: called holding the lock."""
    state.info_file.unlink(missing_ok=True)
    _shutdown(server)


def _shutdown(server: subprocess.Popen[bytes]) -> None:
    # Derby logs every commit before it returns: a stop at any instant loses nothing, and the
    # next boot replays the log. SIGTERM first, so the JVM's shutdown hooks run.
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def detach(module: str, argv: Sequence[str], log_file: Path) -> int:
    """Start ``python -m module argv`` (its ``serve`` without --detach) in a session of its own,
    print its pid, return at once: it is then nobody's child here
    (no zombie in a long-lived caller) and outlives
    the command that started it. Used by the catalog's and the SQL endpoint's ``serve --detach``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", module, *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    print(child.pid)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m courier.catalog")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "serve", help="run a warehouse's Derby network server (started by courier on demand)"
    )
    run.add_argument("--warehouse", type=Path, required=True)
    run.add_argument("--classpath", required=True)
    run.add_argument("--idle-s", type=float, required=True)
    run.add_argument(
        "--detach", action="store_true", help="run it in the background; print its pid"
    )
    stop = sub.add_parser("stop", help="stop a warehouse's Derby network server")
    stop.add_argument("--warehouse", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "serve" and args.detach:
        return detach(
            "courier.catalog", [a for a in argv if a != "--detach"], _StateDir(args.warehouse).log
        )
    if args.command == "serve":
        return serve(args.warehouse, args.classpath, args.idle_s)
    print("stopped" if stop_catalog_server(args.warehouse) else "no server was running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
