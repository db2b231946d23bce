"""Config sections of the shared plumbing: the Spark session, the table names, MLflow."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from enum import StrEnum

from courier.checks import coerce_choices, require

# spark.jars_dir's default: where `make setup` resolves the Delta JARs (project-relative).
JARS_DIR = ".jars"


class Catalog(StrEnum):
    """``spark.catalog``: where table names live (courier.spark.spark_conf)."""

    DERBY = "derby"  # a Hive metastore on Derby inside warehouse_dir, served by courier.catalog
    EXTERNAL = "external"  # the Hive metastore configured in spark.conf (a cluster)
    IN_MEMORY = "in-memory"  # none: tables last as long as the session


@dataclass(frozen=True)
class SparkConfig:
    """How to build the SparkSession (see courier.spark)."""

    master: str | None = "local[*]"  # None: leave it to spark-submit --master
    app_name: str = "courier"  # under spark-submit, its --name (or application file) wins
    # Root of the embedded warehouse: Delta tables and the Derby metastore live here.
    warehouse_dir: str = "warehouse"
    # "derby": a persistent Hive metastore on Derby inside warehouse_dir (embedded default), served
    # to every process by Derby's network server, started on demand (courier.catalog);
    # "external": use the Hive metastore configured in `conf` (cluster); "in-memory": none.
    catalog: Catalog = Catalog.DERBY
    # The Derby server stops after this many seconds without a courier process using it.
    catalog_idle_s: int = 300
    # Folder of Delta JARs resolved by `make setup`;
    # None when spark-submit --packages provides them.
    jars_dir: str | None = JARS_DIR
    shuffle_partitions: int = 8
    driver_memory: str = "4g"
    ui_enabled: bool = True
    log_level: str = "WARN"
    # JVM log4j2 configuration (project-relative or absolute); None = Spark's or the cluster's own.
    log4j_config: str | None = "conf/log4j2.properties"
    conf: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        coerce_choices(self, "spark", {"catalog": Catalog})


_PLAIN_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


@dataclass(frozen=True)
class TablesConfig:
    """Table names (all Delta, all in one database)."""

    database: str = "courier"
    raw_items: str = "raw_items"
    raw_impressions: str = "raw_impressions"
    item_images: str = "item_images"
    courier_samples: str = "courier_samples"
    courier_training_rows: str = "courier_training_rows"
    rejects: str = "rejects"
    pipeline_runs: str = "pipeline_runs"
    eval_item_styles: str = "eval_item_styles"
    eval_user_preferences: str = "eval_user_preferences"
    item_embeddings: str = "item_embeddings"
    cluster_centroids: str = "cluster_centroids"
    item_image_features: str = "item_image_features"
    # Analyst views over the feature tables (sql/features/<view>.sql).
    item_clusters_current: str = "item_clusters_current"
    cluster_summary: str = "cluster_summary"
    category_clusters: str = "category_clusters"
    cluster_click_share_daily: str = "cluster_click_share_daily"
    ctr_samples: str = "ctr_samples"

    def __post_init__(self) -> None:
        # Names reach SQL through IDENTIFIER(:param) or quote_identifier, never pasted; refusing
        # anything but plain identifiers here stops a hostile --set before any job starts.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            require(
                isinstance(value, str) and _PLAIN_IDENTIFIER.match(value) is not None,
                f"tables.{f.name} must be a plain identifier (letters, digits and _, not starting "
                f"with a digit), got {value!r}",
            )

    def qualified(self, name: str) -> str:
        """``database.table`` for a table attribute name, e.g. ``qualified("rejects")``."""
        return f"{self.database}.{getattr(self, name)}"


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str = "sqlite:///warehouse/mlflow.db"
    # None: next to a SQLite store (<db folder>/mlartifacts), else the server's default.
    artifact_location: str | None = None
    experiment: str = "courier"
    registered_model: str = "courier-image-encoder"
    alias: str = "candidate"
    log_model: bool = True  # log + register the image encoder at the end of `courier train`
