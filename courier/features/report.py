"""``courier report``: the pictures of the feature stages, as PNGs.

cluster_grid.png     one row per cluster (the largest N): its most typical item images
embedding_map.png    a 2-D PCA map of item embeddings, coloured by category (and, where
                     the synthetic shop's ground truth exists, by hidden style)
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pyspark.sql import SparkSession, Window, functions as F

from courier.config import CourierConfig

if TYPE_CHECKING:
    from matplotlib.axes import Axes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportFiles:
    cluster_grid: Path
    embedding_map: Path

    def summary(self) -> str:
        return (
            f"report:\n  cluster grid   {self.cluster_grid}\n  embedding map  {self.embedding_map}"
        )


def pca_2d(x: np.ndarray) -> np.ndarray:
    """[n, d] -> [n, 2]: the projection on the two leading principal components."""
    centred = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)  # vt [min(n, d), d]
    return centred @ vt[:2].T


def _decode(jpeg: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as img:
        return np.asarray(img.convert("RGB"))


def cluster_grid(spark: SparkSession, cfg: CourierConfig, path: Path) -> Path:
    """For the ``report.grid_clusters`` largest current clusters,
    a row of their most typical items."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, r = cfg.tables, cfg.report
    current = spark.table(t.qualified("item_clusters_current"))
    top = (
        current.groupBy("image_cluster_id")
        .agg(F.count("*").alias("items"), F.mode("category").alias("top"))
        .orderBy(F.col("items").desc(), "image_cluster_id")
        .limit(r.grid_clusters)
        .collect()
    )
    if not top:
        raise ValueError(
            f"{t.qualified('item_clusters_current')} is empty: run `courier assign` first"
        )
    ids = [row["image_cluster_id"] for row in top]
    rank = Window.partitionBy("image_cluster_id").orderBy(
        F.col("cluster_similarity").desc(), "item_id"
    )
    picked = (
        current.where(F.col("image_cluster_id").isin(ids))
        .withColumn("rank", F.row_number().over(rank))
        .where(F.col("rank") <= r.grid_items)
        .join(spark.table(t.qualified("item_images")).select("item_id", "jpeg"), "item_id")
        .select("image_cluster_id", "rank", "category", "jpeg")
        .collect()
    )
    by_cell = {(row["image_cluster_id"], row["rank"]): row for row in picked}
    fig, axes = plt.subplots(
        len(ids), r.grid_items, figsize=(1.1 * r.grid_items + 1.6, 1.1 * len(ids)), squeeze=False
    )
    for i, (cid, summary) in enumerate(zip(ids, top, strict=True)):
        for j in range(r.grid_items):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            cell = by_cell.get((cid, j + 1))
            if cell is not None:
                ax.imshow(_decode(cell["jpeg"]))
                ax.set_title(cell["category"], fontsize=6, pad=2)
            else:
                ax.axis("off")
        axes[i][0].set_ylabel(
            f"cluster {cid}\n{summary['items']} items\nmostly {summary['top']}",
            fontsize=7,
            rotation=0,
            ha="right",
            va="center",
            labelpad=8,
        )
    fig.suptitle(
        "Largest image clusters: items nearest to each centroid, left to right", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def embedding_map(spark: SparkSession, cfg: CourierConfig, path: Path) -> Path:
    """PCA of a deterministic sample of the current model's embeddings,
    coloured by category (and style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, r = cfg.tables, cfg.report
    current = spark.table(t.qualified("item_clusters_current")).select(
        "item_id", "category", "model_version"
    )
    df = (
        spark.table(t.qualified("item_embeddings"))
        .join(current, ["item_id", "model_version"])
        .orderBy(F.xxhash64("item_id"), "item_id")
        .limit(r.map_items)
    )
    styles_table = t.qualified("eval_item_styles")
    with_styles = spark.catalog.tableExists(styles_table)
    if with_styles:
        df = df.join(spark.table(styles_table).select("item_id", "style_id"), "item_id", "left")
    rows = df.collect()
    if len(rows) < 3:
        raise ValueError(
            f"{t.qualified('item_embeddings')}: too few assigned items to draw a map ({len(rows)})"
        )
    xy = pca_2d(np.array([row["embedding"] for row in rows], dtype=np.float32))
    panels = [("category", [row["category"] or "unknown" for row in rows])]
    if with_styles:
        # -1: an item the ground truth does not know (added after the shop was generated).
        panels.append(
            (
                "hidden style (ground truth, evaluation only)",
                [-1 if row["style_id"] is None else row["style_id"] for row in rows],
            )
        )
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.5), squeeze=False)
    for ax, (title, labels) in zip(axes[0], panels, strict=True):
        _scatter(ax, xy, labels, title)
    fig.suptitle(
        f"Item embeddings (model version {rows[0]['model_version']}), first two principal "
        f"components, {len(rows):,} items",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _scatter(ax: Axes, xy: np.ndarray, labels: list[Any], title: str) -> None:
    import matplotlib.pyplot as plt

    values = sorted(set(labels))  # one type per panel: category names or style ids
    cmap = plt.get_cmap("tab20" if len(values) > 10 else "tab10")
    for i, value in enumerate(values):
        mask = np.array([label == value for label in labels])
        ax.scatter(
            xy[mask, 0], xy[mask, 1], s=6, alpha=0.7, color=cmap(i % cmap.N), label=str(value)
        )
    ax.set_title(f"coloured by {title}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(values) <= 24:
        ax.legend(
            fontsize=6, markerscale=2, ncol=2 if len(values) > 8 else 1, loc="best", frameon=False
        )


def write_report(
    spark: SparkSession, cfg: CourierConfig, out_dir: str | Path | None = None
) -> ReportFiles:
    """Write both PNGs into ``out_dir`` (default ``report.out_dir``); returns their paths."""
    from courier.spark import resolve_path

    folder = Path(resolve_path(str(out_dir or cfg.report.out_dir)))
    folder.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(
        cluster_grid(spark, cfg, folder / "cluster_grid.png"),
        embedding_map(spark, cfg, folder / "embedding_map.png"),
    )
    log.info("report written to %s", folder)
    return files
