"""The SparkSession every job and test uses: Delta enabled, a named catalog.

On the embedded default the catalog is a Hive metastore on Derby inside the
warehouse folder, served by Derby's network server (courier.catalog), so
``courier.courier_samples`` keeps its name across jobs and an analyst can run
``courier sql`` against it while a job is writing.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from pyspark.sql import SparkSession

from courier.catalog import (
    CatalogServer,
    CatalogUnavailableError,
    DerbyJars,
    ensure_catalog_server,
    find_derby_jars,
)
from courier.config import PROJECT_ROOT, Catalog, SparkConfig
from courier.config.plumbing import JARS_DIR

log = logging.getLogger(__name__)

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"


def _catalog_error(exc: Exception, cfg: SparkConfig) -> CatalogUnavailableError | None:
    """A CatalogUnavailableError for Hive's "cannot reach the metastore" errors, else None."""
    text = str(exc)
    if "SessionHiveMetaStoreClient" not in text and "Could not connect to meta store" not in text:
        return None
    uris = cfg.conf.get("spark.hadoop.hive.metastore.uris") or cfg.conf.get(
        "spark.hadoop.javax.jdo.option.ConnectionURL"
    )
    where = (
        f"the Hive metastore at {uris}" if uris else f"the catalog of spark.catalog={cfg.catalog}"
    )
    return CatalogUnavailableError(
        f"cannot open {where} ({text.splitlines()[0][:300]}). Check that the metastore service is "
        "up and reachable from this machine (spark.conf spark.hadoop.hive.metastore.uris in the "
        "profile), or use the embedded default (--profile local)"
    )


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
            f"Delta Lake JARs not found in {folder}: run `make setup` (resolves them from Maven "
            "Central), or set spark.jars_dir: null and pass --packages "
            "io.delta:delta-spark_2.13:4.0.1 to spark-submit"
        )
    return jars


def derby_jars(cfg: SparkConfig) -> DerbyJars:
    """The embedded catalog's Derby JARs, from ``spark.jars_dir`` (or, when spark-submit gives the
    JARs, the default folder ``make setup`` fills)."""
    return find_derby_jars(Path(resolve_path(cfg.jars_dir or JARS_DIR)))


def spark_conf(cfg: SparkConfig, catalog: CatalogServer | None = None) -> dict[str, str]:
    """The Spark settings for ``cfg``, before user-supplied ``cfg.conf`` overrides.

    ``catalog``: the Derby server of the warehouse, required by ``spark.catalog: derby``.
    """
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
    if cfg.log4j_config:
        conf["spark.driver.extraJavaOptions"] = (
            f"-Dlog4j2.configurationFile=file:{resolve_path(cfg.log4j_config)}"
        )
    if cfg.master:
        conf["spark.master"] = cfg.master
    if cfg.jars_dir:
        conf["spark.jars"] = ",".join(delta_jars(cfg.jars_dir))
    if cfg.catalog == Catalog.DERBY:
        if "://" in warehouse:
            raise ValueError(f"spark.catalog=derby needs a local warehouse_dir, got {warehouse}")
        if catalog is None:
            raise ValueError(
                "spark.catalog=derby needs the warehouse's catalog server (courier.catalog)"
            )
        conf.update(catalog.spark_conf())
        conf.update(
            {
                "spark.sql.catalogImplementation": "hive",
                "spark.hadoop.hive.metastore.warehouse.dir": warehouse,
                # JDBC's DriverManager only hands out drivers of the JVM's own class path, not
                # spark.jars'. Effective when this process starts the JVM;
                # under spark-submit, --driver-class-path.
                "spark.driver.extraClassPath": derby_jars(cfg).client,
            }
        )
    elif cfg.catalog == Catalog.IN_MEMORY:
        conf["spark.sql.catalogImplementation"] = "in-memory"
    # Catalog.EXTERNAL: the metastore is configured in spark.conf (SparkConfig checks the choice).
    conf.update(cfg.conf)
    return conf


def _require_derby_client(spark: SparkSession, jars: DerbyJars) -> None:
    """CatalogUnavailableError unless the JVM
    (started by spark-submit, say) can load the Derby client."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None  # set on the driver while the session runs
    try:
        jvm.java.lang.ClassLoader.getSystemClassLoader().loadClass(
            "org.apache.derby.client.ClientAutoloadedDriver"
        )
    except Exception as exc:  # Py4JJavaError wrapping ClassNotFoundException
        raise CatalogUnavailableError(
            f"the embedded catalog's Derby client is not on the Spark driver's class path: pass "
            f"--driver-class-path {jars.client} to spark-submit (courier's DAGs do)"
        ) from exc


def build_spark_session(cfg: SparkConfig, database: str | None = None) -> SparkSession:
    """Create (or return the running) SparkSession for ``cfg``; create ``database`` if given.

    On the embedded default this first finds (or starts) the warehouse's catalog server.
    """
    if (cfg.master or "").startswith("local"):
        # Local Python workers must run the driver's interpreter
        # (the project venv), not `python3` on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    catalog = None
    if cfg.catalog == Catalog.DERBY:
        catalog = ensure_catalog_server(
            resolve_path(cfg.warehouse_dir), derby_jars(cfg), cfg.catalog_idle_s
        )
    conf = spark_conf(cfg, catalog)
    if "PYSPARK_GATEWAY_PORT" in os.environ:
        # Started by spark-submit, whose --name (the DAGs': courier-<task>) or application file
        # already names the run in the UI and the event log: keep that name.
        conf.pop("spark.app.name")
    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    if cfg.catalog != Catalog.IN_MEMORY:
        builder = builder.enableHiveSupport()
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.log_level)
    if catalog is not None:
        _require_derby_client(spark, derby_jars(cfg))
    if database:
        try:
            spark.sql(
                "CREATE DATABASE IF NOT EXISTS IDENTIFIER(:database)", args={"database": database}
            )
        except Exception as exc:  # Py4J/AnalysisException wrapping Hive's MetaException
            if (error := _catalog_error(exc, cfg)) is not None:
                raise error from exc
            raise
    log.info(
        "spark %s, master %s, warehouse %s",
        spark.version,
        spark.sparkContext.master,
        spark.conf.get("spark.sql.warehouse.dir"),
    )
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
        for key, old in previous.items():
            if old is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, old)
