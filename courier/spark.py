"""The SparkSession every job and test uses: Delta enabled, a named catalog.

On the embedded default the catalog is a Hive metastore on Derby inside the
warehouse folder, so ``courier.courier_samples`` keeps its name across jobs and
an analyst can open ``courier sql`` later and query it.
"""
from __future__ import annotations

import fcntl
import logging
import os
import struct
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

from pyspark import SparkContext
from pyspark.sql import SparkSession

from courier.config import PROJECT_ROOT, SparkConfig

log = logging.getLogger(__name__)

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"


class CatalogUnavailableError(RuntimeError):
    """The table catalog cannot be opened (the message names it and says what to do)."""


def derby_lock_holder(metastore_dir: Path) -> int | None:
    """The pid of the process whose JVM has the Derby database ``metastore_dir`` open, or None.

    Derby holds a POSIX lock on ``dbex.lck`` while a JVM has the database booted; asking for
    it (F_GETLK) takes no lock, so this never disturbs a JVM that is booting it.
    """
    lock = metastore_dir / "dbex.lck"
    if not lock.exists():
        return None
    fd = os.open(lock, os.O_RDONLY)
    try:
        probe = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)  # struct flock, whole file
        kind, _, _, _, pid = struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK, probe))
    finally:
        os.close(fd)
    return None if kind == fcntl.F_UNLCK else pid


def _process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return "?"


def check_embedded_catalog_free(warehouse: str) -> None:
    """CatalogUnavailableError naming the other process when the embedded Derby metastore is in use.

    Embedded Derby admits one JVM: a second job would fail deep inside Hive with "Unable to
    instantiate SessionHiveMetaStoreClient". Called only before this process starts Spark.
    """
    metastore = Path(warehouse) / "metastore_db"
    holder = derby_lock_holder(metastore)
    if holder is not None:
        raise CatalogUnavailableError(
            f"the embedded catalog (Derby metastore {metastore}) is open in another process, pid {holder} "
            f"({_process_name(holder)}). The embedded default (spark.catalog: derby) serves one process at a "
            "time: wait for that job to finish, or run the jobs against a shared Hive metastore "
            "(spark.catalog: external, see conf/cluster.example.yaml)")


def _catalog_error(exc: Exception, cfg: SparkConfig) -> CatalogUnavailableError | None:
    """A CatalogUnavailableError for Hive's "cannot reach the metastore" errors, else None."""
    text = str(exc)
    if "SessionHiveMetaStoreClient" not in text and "Could not connect to meta store" not in text:
        return None
    uris = cfg.conf.get("spark.hadoop.hive.metastore.uris") or cfg.conf.get("spark.hadoop.javax.jdo.option.ConnectionURL")
    where = f"the Hive metastore at {uris}" if uris else f"the catalog of spark.catalog={cfg.catalog}"
    return CatalogUnavailableError(
        f"cannot open {where} ({text.splitlines()[0][:300]}). Check that the metastore service is up and "
        "reachable from this machine (spark.conf spark.hadoop.hive.metastore.uris in the profile), "
        "or use the embedded default (--profile local)")


def resolve_path(path: str) -> str:
    """Project-relative local paths become absolute; URIs (s3a://, hdfs://) stay as they are."""
    if "://" in path:
        return path
    p = Path(path)
    return str(p if p.is_absolute() else (PROJECT_ROOT / p).resolve())


def delta_jars(jars_dir: str) -> list[str]:
    """The Delta JARs resolved by ``make setup``; a clear error if they are missing."""
    folder = Path(resolve_path(jars_dir))
    jars = sorted(str(p) for p in folder.glob("*.jar"))
    if not any("delta-spark" in Path(j).name for j in jars):
        raise FileNotFoundError(
            f"Delta Lake JARs not found in {folder}: run `make setup` (resolves them from Maven Central), "
            "or set spark.jars_dir: null and pass --packages io.delta:delta-spark_2.13:4.0.1 to spark-submit"
        )
    return jars


def spark_conf(cfg: SparkConfig) -> dict[str, str]:
    """The Spark settings for ``cfg``, before user-supplied ``cfg.conf`` overrides."""
    warehouse = resolve_path(cfg.warehouse_dir)
    conf: dict[str, str] = {
        "spark.app.name": cfg.app_name,
        "spark.sql.extensions": DELTA_EXTENSION,
        "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
        "spark.sql.warehouse.dir": warehouse,
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
        "spark.driver.memory": cfg.driver_memory,
        "spark.ui.enabled": str(cfg.ui_enabled).lower(),
        "spark.ui.showConsoleProgress": "false",
        # Delta's own defaults are sized for clusters; 50 snapshot partitions dominate small jobs.
        "spark.databricks.delta.snapshotPartitions": str(max(2, cfg.shuffle_partitions)),
    }
    java_options = [f"-Dlog4j2.configurationFile=file:{resolve_path(cfg.log4j_config)}"] if cfg.log4j_config else []
    if java_options:
        conf["spark.driver.extraJavaOptions"] = " ".join(java_options)
    if cfg.master:
        conf["spark.master"] = cfg.master
    if cfg.jars_dir:
        conf["spark.jars"] = ",".join(delta_jars(cfg.jars_dir))
    if cfg.catalog == "derby":
        if "://" in warehouse:
            raise ValueError(f"spark.catalog=derby needs a local warehouse_dir, got {warehouse}")
        Path(warehouse).mkdir(parents=True, exist_ok=True)
        conf.update(
            {
                "spark.sql.catalogImplementation": "hive",
                "spark.hadoop.javax.jdo.option.ConnectionURL": (
                    f"jdbc:derby:;databaseName={warehouse}/metastore_db;create=true"
                ),
                # Keeps derby.log inside the warehouse instead of the working directory.
                "spark.driver.extraJavaOptions": " ".join([f"-Dderby.system.home={warehouse}", *java_options]),
                "spark.hadoop.hive.metastore.warehouse.dir": warehouse,
            }
        )
    elif cfg.catalog == "in-memory":
        conf["spark.sql.catalogImplementation"] = "in-memory"
    elif cfg.catalog != "external":
        raise ValueError(f"spark.catalog must be derby, external or in-memory, got {cfg.catalog!r}")
    conf.update(cfg.conf)
    return conf


def build_spark_session(cfg: SparkConfig, database: str | None = None) -> SparkSession:
    """Create (or return the running) SparkSession for ``cfg``; create ``database`` if given."""
    if (cfg.master or "").startswith("local"):
        # Local Python workers must run the driver's interpreter (the project venv), not `python3` on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    conf = spark_conf(cfg)
    if cfg.catalog == "derby" and SparkContext._active_spark_context is None:
        check_embedded_catalog_free(conf["spark.sql.warehouse.dir"])
    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    if cfg.catalog != "in-memory":
        builder = builder.enableHiveSupport()
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.log_level)
    if database:
        try:
            spark.sql("CREATE DATABASE IF NOT EXISTS IDENTIFIER(:database)", args={"database": database})
        except Exception as exc:  # noqa: BLE001 - Py4J/AnalysisException wrapping Hive's MetaException
            if (error := _catalog_error(exc, cfg)) is not None:
                raise error from exc
            raise
    log.info("spark %s, master %s, warehouse %s", spark.version, spark.sparkContext.master,
             spark.conf.get("spark.sql.warehouse.dir"))
    return spark


@contextmanager
def session_conf(spark: SparkSession, settings: Mapping[str, str]) -> Iterator[None]:
    """Set runtime SQL settings for the duration of a block, then restore what was there."""
    previous = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)
