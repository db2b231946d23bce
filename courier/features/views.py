"""The analyst views over the feature tables, created from ``sql/features/<view>.sql``.

They are persistent views in the warehouse's catalog, so ``courier sql`` (or any
Spark SQL client on the same metastore) can query them from another process.
"""

from __future__ import annotations

from pyspark.sql import SparkSession

from courier.config import CourierConfig
from courier.sql_files import create_view
from courier.tables import SchemaError

# In creation order: later views read earlier ones.
FEATURE_VIEWS: tuple[str, ...] = (
    "item_clusters_current",
    "cluster_summary",
    "category_clusters",
    "cluster_click_share_daily",
)


def create_feature_views(spark: SparkSession, cfg: CourierConfig) -> list[str]:
    """(Re)create every analyst view; returns their qualified names."""
    t = cfg.tables
    tables = {
        name: t.qualified(name)
        for name in ("item_image_features", "item_images", "raw_impressions", *FEATURE_VIEWS)
    }
    for source in ("item_image_features", "item_images", "raw_impressions"):
        if not spark.catalog.tableExists(tables[source]):
            raise SchemaError(
                f"table {tables[source]} does not exist: the feature views read it "
                f"({', '.join(FEATURE_VIEWS)})"
            )
    created = []
    for view in FEATURE_VIEWS:
        create_view(spark, f"features/{view}", tables[view], tables)
        created.append(tables[view])
    return created
