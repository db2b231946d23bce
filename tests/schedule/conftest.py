"""The deployment's machinery, built once per session: `make dist`'s packed environment laid out
as on a node, and a Spark standalone cluster (a master and two workers) started from it.

The packed environment (build/dist.sh, here as a plain tar: the same environment and code path
as `make dist`'s tar.gz without minutes of gzip on 2 cores) is unpacked as a node does for
`--archives courier-env.tar.gz#environment` into ``<node>/environment``, after checking every
member against the unpacking rule Spark applies (entries and links stay inside the folder).

The cluster runs from that environment: its Spark (the wheel-installed pyspark), its Python for
the executors' workers. What the applications ship with --archives is a launcher archive
(write_launcher_archive): a .tar.gz whose bin/python runs that installed environment, so every
executor unpacks an archive and starts its Python as ./environment/bin/python, as with `make
dist`'s own archive. Why not ship that one: the CUDA build of torch makes it 8.4 GB, and every
application copies it four times (the driver unpacks it; each executor fetches it, copies it out
of the fetch cache and unpacks it): tried with two executors, the disk ran out (~58 GB free;
docs/PRODUCTION.md).

A .pth file added to the unpacked environment records the sys.prefix, command line and launcher
(the archive's bin/python it was started through, if any) of every Python process started from
it (while COURIER_PROBE_LOG names a file): the proof that a stage's Python workers ran from the
environment.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from courier.config import PROJECT_ROOT
from tests.conftest import SHORT_LIVED_JVM_OPTS

# Appends one JSON line per Python process started from the unpacked environment (when asked to).
PROBE_PTH = (
    "import os, sys, json; p = os.environ.get('COURIER_PROBE_LOG'); p and open(p, "
    "'a').write(json.dumps({'pid': os.getpid(), 'prefix': sys.prefix, 'executable': "
    "sys.executable, 'argv': sys.orig_argv, 'launcher': os.environ.get('COURIER_PROBE_LAUNCHER')"
    "}) + '\\n')\n"
)
WORKERS, WORKER_CORES, WORKER_MEMORY = 2, 1, "2g"
CLUSTER_START_TIMEOUT_S = 180


def run_checked(
    cmd: list[str], what: str, *, timeout: int = 600, **kwargs: Any
) -> subprocess.CompletedProcess:
    """``cmd`` run to its end (``kwargs``: cwd, env);
    fails with its last output unless it exits 0."""
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert out.returncode == 0, (
        f"{what} failed ({out.returncode}):\n{(out.stdout + out.stderr)[-4000:]}"
    )
    return out


def assert_spark_can_unpack(archive: Path, dest: Path) -> None:
    """Every member stays inside the folder it is unpacked into,
    links included (Spark refuses others)."""
    with tarfile.open(archive) as tar:
        for member in tar:
            assert not member.name.startswith(("./", "/")), f"{archive}: member {member.name!r}"
            # raises for absolute links and links leaving dest
            tarfile.data_filter(member, str(dest))


def probe_records(log: Path) -> list[dict]:
    """The probe's records, one per process
    (lib64 -> lib makes site read the .pth twice)."""
    if not log.exists():
        return []
    return list({line: json.loads(line) for line in log.read_text().splitlines()}.values())


@dataclass(frozen=True)
class PackedEnvironment:
    """`make dist`'s output as a node holds it: the archive's name, the wheel, the unpacked
    environment (``<node>/environment``); the archive itself is gone (8 GB)."""

    archive: Path
    wheel: Path
    node: Path

    @property
    def environment(self) -> Path:
        return self.node / "environment"

    @property
    def python(self) -> Path:
        return self.environment / "bin" / "python"

    @property
    def site_packages(self) -> Path:
        return self.environment / "lib" / "python3.11" / "site-packages"

    @property
    def spark_home(self) -> Path:
        return self.site_packages / "pyspark"


@pytest.fixture(scope="session")
def packed_environment() -> Iterator[PackedEnvironment]:
    """build/dist.sh --format tar, unpacked as a node unpacks --archives, with the probe .pth."""
    # build/dist.sh stages the environment with hard links to .venv: its output folder must be on
    # the same file system, which the checkout's (git-ignored) dist/ is and a tmpfs /tmp is not.
    (PROJECT_ROOT / "dist").mkdir(exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="test-packed-env-", dir=PROJECT_ROOT / "dist"))
    try:
        run_checked(
            ["bash", str(PROJECT_ROOT / "build" / "dist.sh"), "--format", "tar", "--out", str(out)],
            "build/dist.sh --format tar",
        )
        archive = out / "courier-env.tar"
        (wheel,) = out.glob("courier-*-py3-none-any.whl")
        packed = PackedEnvironment(archive, wheel, out / "node")
        packed.environment.mkdir(parents=True)
        assert_spark_can_unpack(archive, packed.environment)
        run_checked(
            ["tar", "-xf", str(archive), "-C", str(packed.environment)], "unpacking the archive"
        )
        archive.unlink()
        (packed.site_packages / "courier_test_probe.pth").write_text(PROBE_PTH)
        yield packed
    finally:
        shutil.rmtree(out, ignore_errors=True)


# bin/python of the launcher archive: records where Spark unpacked it, then runs the environment
# installed on the node. `export`, not `VAR=... exec`: dash keeps such a variable from the program.
LAUNCHER = """#!/bin/sh
COURIER_PROBE_LAUNCHER="$(cd "$(dirname "$0")" && pwd -P)/$(basename "$0")"
export COURIER_PROBE_LAUNCHER
exec {python} "$@"
"""


def write_launcher_archive(packed: PackedEnvironment, archive: Path) -> Path:
    """A .tar.gz holding only ``bin/python``, which runs ``packed``'s Python: shipped with
    ``--archives archive#environment`` in place of the 8 GB environment itself (docs/PRODUCTION.md,
    "What the tests ship with --archives"), so that each executor fetches and unpacks an archive
    and its Python workers start as ``./environment/bin/python`` from the executor's folder."""
    script = LAUNCHER.format(python=packed.python).encode()
    with tarfile.open(archive, "w:gz") as tar:
        folder = tarfile.TarInfo("bin")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        info = tarfile.TarInfo("bin/python")
        info.size, info.mode = len(script), 0o755
        tar.addfile(info, io.BytesIO(script))
    assert_spark_can_unpack(archive, archive.parent / "environment")
    return archive


def node_environment(packed: PackedEnvironment, **extra: str) -> dict[str, str]:
    """A node's process environment: the packed environment's bin/ and the system's on PATH,
    nothing of the dev venv or this checkout."""
    env = {
        "HOME": os.environ["HOME"],
        "TZ": "UTC",
        "PATH": f"{packed.environment / 'bin'}:/usr/bin:/bin",
        **extra,
    }
    if "JAVA_HOME" in os.environ:
        env["JAVA_HOME"] = os.environ["JAVA_HOME"]
    assert not any(str(PROJECT_ROOT / ".venv") + "/" in value for value in env.values()), env
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class StandaloneCluster:
    """A running master and its workers; every application's event log lands in ``event_logs``,
    every Python process started from the environment in ``probe_log``."""

    master_url: str
    ui_url: str
    work_dir: Path
    event_logs: Path
    probe_log: Path

    def alive_workers(self) -> list[dict]:
        with urllib.request.urlopen(f"{self.ui_url}/json/", timeout=10) as answer:
            state = json.load(answer)
        return [w for w in state["workers"] if w["state"] == "ALIVE"]

    def spark_conf(self) -> dict[str, str]:
        """What an application on this cluster sets: an event log per application."""
        return {
            "spark.eventLog.enabled": "true",
            "spark.eventLog.dir": f"file://{self.event_logs}",
            "spark.eventLog.compress": "false",  # zstd by default since Spark 4.0
            # Executors live for one small job, as the tests' other short-lived JVMs (C1 only:
            # SHORT_LIVED_JVM_OPTS in tests/conftest.py).
            "spark.executor.extraJavaOptions": SHORT_LIVED_JVM_OPTS,
        }

    def applications(self) -> dict[str, list[dict]]:
        """Each application's event log (its JSON events), by application id."""
        apps: dict[str, list[dict]] = {}
        for log in sorted(self.event_logs.iterdir()):
            # Spark 4 writes each application's log as a folder of rolled files (events_1_...).
            parts = sorted(log.glob("events_*"), key=_part_number) if log.is_dir() else [log]
            lines = [line for part in parts for line in part.read_text().splitlines()]
            events = [json.loads(line) for line in lines if line]
            start = next(e for e in events if e["Event"] == "SparkListenerApplicationStart")
            apps[start["App ID"]] = events
        return apps


def _part_number(part: Path) -> int:
    """N of a rolled event log file ``events_N_<app id>``."""
    return int(part.name.split("_")[1])


def application_name(events: list[dict]) -> str:
    """The name an application's event log starts with."""
    return str(next(e for e in events if e["Event"] == "SparkListenerApplicationStart")["App Name"])


def task_executors(events: list[dict], stage_from: str = "") -> list[str]:
    """The executor id of each finished task of an application's event log; with ``stage_from``,
    of the tasks of stages whose call site (stage name) holds it only."""
    stages = {
        e["Stage Info"]["Stage ID"]
        for e in events
        if e["Event"] == "SparkListenerStageSubmitted"
        and stage_from in e["Stage Info"]["Stage Name"]
    }
    return [
        e["Task Info"]["Executor ID"]
        for e in events
        if e["Event"] == "SparkListenerTaskEnd" and e["Stage ID"] in stages
    ]


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM to each daemon's process group (a worker's executors are its children), then KILL."""
    for process in reversed(processes):
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    for process in processes:
        try:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="session")
def standalone_cluster(
    packed_environment: PackedEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StandaloneCluster]:
    """A Spark standalone master and WORKERS workers (WORKER_CORES core, WORKER_MEMORY each) on
    127.0.0.1, started with the packed environment's spark-class; stopped at the session's end."""
    root = tmp_path_factory.mktemp("standalone")
    port, ui_port = _free_port(), _free_port()
    cluster = StandaloneCluster(
        master_url=f"spark://127.0.0.1:{port}",
        ui_url=f"http://127.0.0.1:{ui_port}",
        work_dir=root / "work",
        event_logs=root / "event-logs",
        probe_log=root / "probe.jsonl",
    )
    cluster.event_logs.mkdir()
    spark_class = str(packed_environment.spark_home / "bin" / "spark-class")
    env = node_environment(
        packed_environment,
        SPARK_HOME=str(packed_environment.spark_home),
        SPARK_LOG_DIR=str(root / "logs"),
        # The daemons only keep books: 256 MB each, not 1 GB, and no C2 compiler.
        SPARK_DAEMON_MEMORY="256m",
        SPARK_DAEMON_JAVA_OPTS=SHORT_LIVED_JVM_OPTS,
        COURIER_PROBE_LOG=str(cluster.probe_log),
    )
    processes = [
        _start(
            [
                spark_class,
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--webui-port",
                str(ui_port),
            ],
            env,
            root / "master.log",
        )
    ]
    try:
        for i in range(WORKERS):
            processes.append(
                _start(
                    [
                        spark_class,
                        "org.apache.spark.deploy.worker.Worker",
                        "--host",
                        "127.0.0.1",
                        "--cores",
                        str(WORKER_CORES),
                        "--memory",
                        WORKER_MEMORY,
                        "--work-dir",
                        str(cluster.work_dir / str(i)),
                        "--webui-port",
                        "0",
                        cluster.master_url,
                    ],
                    env,
                    root / f"worker-{i}.log",
                )
            )
        _wait_for_workers(cluster, processes, root)
        yield cluster
    finally:
        _stop(processes)


def _wait_for_workers(cluster: StandaloneCluster, processes: list, root: Path) -> None:
    deadline = time.monotonic() + CLUSTER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        dead = [p.args[1] for p in processes if p.poll() is not None]
        assert not dead, f"{dead} exited: see {root}/*.log"
        try:
            if len(cluster.alive_workers()) == WORKERS:
                return
        except OSError:
            pass  # the master's UI is not up yet
        time.sleep(1)
    logs = {p.name: p.read_text()[-2000:] for p in root.glob("*.log")}
    raise AssertionError(f"no {WORKERS} workers on {cluster.master_url} in time: {logs}")
