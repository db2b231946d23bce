"""``courier cluster``: item_embeddings -> a new cluster_version in cluster_centroids.

    pick the model version -> sample k x max_points_per_centroid embeddings in Spark
    -> faiss spherical k-means on the driver (warm-started from the previous version)
    -> match the new clusters to the previous ids -> MLflow run -> one Delta commit

The version is published by one insert-only MERGE keyed on its number: visible
whole or not at all, and never twice. Two runs that picked the same number
conflict (Delta's optimistic commit) or find it taken; the second stops with a
ConcurrentRunError and its MLflow run fails. The MLflow run records the fit (k, d,
iterations, objective, imbalance, empty clusters, the model version) and the
centroids as an artifact.
"""

from __future__ import annotations

import json
import logging
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession, functions as F, types as T

from courier import tracking
from courier.config import CourierConfig, config_json
from courier.features.kmeans import (
    KMeansFit,
    fit_spherical_kmeans,
    match_cluster_ids,
)
from courier.sql_files import run_sql_file
from courier.tables import (
    ConcurrentRunError,
    RunRecord,
    WriteConflict,
    committing,
    ensure_table,
    held_before_commit,
    one_row,
    timed,
    utc_now,
)

log = logging.getLogger(__name__)

STAGE = "cluster"
CLUSTER_CENTROIDS_SCHEMA = T.StructType(
    [
        T.StructField("cluster_version", T.IntegerType()),
        T.StructField("cluster_id", T.IntegerType()),
        T.StructField("centroid", T.ArrayType(T.FloatType())),
        T.StructField("size", T.LongType()),  # training points nearest to the centroid
        T.StructField("model_version", T.StringType()),
        T.StructField("mlflow_run_id", T.StringType()),
        T.StructField("created_at", T.TimestampType()),
    ]
)


class ClusteringError(ValueError):
    """The embeddings cannot be clustered as configured (the message names the table and values)."""


@dataclass(frozen=True)
class CentroidVersion:
    """One version of cluster_centroids, read back:
    ids [k], centroids [k, d] (row i has id ids[i])."""

    cluster_version: int
    model_version: str
    ids: np.ndarray
    centroids: np.ndarray


@dataclass
class ClusterResult:
    record: RunRecord
    version: CentroidVersion
    fit: KMeansFit
    warm_started_from: int | None
    mlflow_run_id: str

    def summary(self) -> str:
        sizes = np.sort(self.fit.sizes)[::-1]
        return "\n".join(
            [
                f"cluster: version {self.version.cluster_version} of model version "
                f"{self.version.model_version}, k={len(sizes)}, warm start from "
                f"{self.warm_started_from or 'none'} (MLflow run {self.mlflow_run_id})",
                f"  objective {self.fit.objective:,.1f}, "
                f"imbalance {self.fit.imbalance_factor:.3f}, "
                f"empty clusters {self.fit.empty_clusters}, trained on {self.fit.n_train:,} items",
                f"  cluster sizes: largest {sizes[:5].tolist()}, median {int(np.median(sizes))}, "
                f"smallest {sizes[-3:].tolist()}",
            ]
        )


def latest_model_version(spark: SparkSession, table: str) -> str:
    """The model version of the newest embeddings in ``table``; ClusteringError if it holds none."""
    if not spark.catalog.tableExists(table):
        raise ClusteringError(f"table {table} does not exist: run `courier embed` first")
    # One row per model version, none for an empty table (not a global aggregate: no one_row).
    row = (
        spark.table(table)
        .groupBy("model_version")
        .agg(F.max("computed_at").alias("at"))
        .orderBy(F.col("at").desc())
        .first()
    )
    if row is None:
        raise ClusteringError(f"table {table} holds no embeddings: run `courier embed` first")
    return row["model_version"]


def read_centroid_version(
    spark: SparkSession, table: str, version: int | None = None
) -> CentroidVersion | None:
    """A version of cluster_centroids (None = the newest); None when the table has none.

    Raises:
        ClusteringError: ``version`` was asked for and does not exist.
    """
    if not spark.catalog.tableExists(table):
        if version is not None:
            raise ClusteringError(
                f"cluster version {version} requested, but table {table} does not exist"
            )
        return None
    df = spark.table(table)
    if version is None:
        version = one_row(df.agg(F.max("cluster_version")))[0]
        if version is None:
            return None
    rows = df.where(F.col("cluster_version") == version)
    model_version = rows.select("model_version").first()
    if model_version is None:
        known = [
            r[0]
            for r in df.select("cluster_version").distinct().orderBy("cluster_version").collect()
        ]
        raise ClusteringError(
            f"cluster version {version} is not in table {table} (versions: {known})"
        )
    ids, centroids = vectors(rows.orderBy("cluster_id"), "cluster_id", "centroid")
    return CentroidVersion(
        cluster_version=int(version),
        model_version=model_version[0],
        ids=ids.astype(np.int64),
        centroids=centroids,
    )


def vectors(df: DataFrame, key: str, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(keys [n], float32 [n, d]) of an ARRAY<FLOAT> column, through Arrow (1e5 centroids or a
    2.56e7-row sample would crawl through Row objects)."""
    table = df.select(key, column).toArrow()
    flat = table.column(column).combine_chunks()
    d = len(flat[0]) if len(flat) else 0
    x = flat.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(flat), d)
    return table.column(key).to_numpy(), x


def sample_embeddings(
    spark: SparkSession,
    table: str,
    model_version: str,
    k: int,
    max_points_per_centroid: int,
    seed: int,
) -> tuple[np.ndarray, int]:
    """(float32 [m, d] sample, n items):
    at most ~k x max_points_per_centroid embeddings, drawn in Spark.

    faiss would subsample to that many points anyway; drawing them in Spark keeps the
    driver's memory at the sample's size whatever the catalogue's (6e7 items in production).
    """
    df = spark.table(table).where(F.col("model_version") == model_version)
    n = df.count()
    if n == 0:
        raise ClusteringError(
            f"table {table} holds no embeddings of model version {model_version}: "
            "run `courier embed` with that model first"
        )
    budget = k * max_points_per_centroid
    if n > budget:
        # 5% headroom so the Bernoulli sample rarely falls short of the budget.
        df = df.sample(fraction=min(1.0, 1.05 * budget / n), seed=seed)
    _, x = vectors(df.select("item_id", "embedding").orderBy("item_id"), "item_id", "embedding")
    return x, n


def _initial_centroids(
    previous: CentroidVersion | None, k: int, x: np.ndarray, seed: int
) -> np.ndarray | None:
    """The previous centroids as the starting point, topped up with sample points when k grew."""
    if previous is None or previous.centroids.shape[1] != x.shape[1]:
        return None
    init = previous.centroids[:k]
    if len(init) < k:
        extra = np.random.default_rng(seed).choice(len(x), size=k - len(init), replace=False)
        init = np.concatenate([init, x[extra]])
    return np.ascontiguousarray(init, dtype=np.float32)


def carried_centroids(
    spark: SparkSession, cfg: CourierConfig, previous: CentroidVersion, model_version: str
) -> CentroidVersion | None:
    """``previous`` (fitted on another model's embeddings) moved into ``model_version``'s space.

    Another model's centroids live in another embedding space: neither a start nor a
    match. Each previous cluster is carried over as the new model's mean embedding of
    the items that hold its id now (sql/features/carried_centroids.sql), so the re-fit
    starts from them and keeps their ids. None (fresh ids 0..k-1) when no item of the
    previous version has a new embedding.
    """
    t = cfg.tables
    rows = run_sql_file(
        spark,
        "features/carried_centroids",
        {
            "item_image_features": t.qualified("item_image_features"),
            "item_embeddings": t.qualified("item_embeddings"),
            "cluster_version": previous.cluster_version,
            "model_version": model_version,
        },
    ).toArrow()
    if rows.num_rows == 0:
        log.info(
            "cluster version %d clustered model version %s and no item of it has a %s embedding: "
            "fitting from scratch",
            previous.cluster_version,
            previous.model_version,
            model_version,
        )
        return None
    cluster, pos = rows.column("cluster_id").to_numpy(), rows.column("pos").to_numpy()
    ids, row = np.unique(cluster, return_inverse=True)
    means = np.zeros((len(ids), int(pos.max()) + 1), dtype=np.float32)  # [k_carried, d]
    means[row, pos] = rows.column("value").to_numpy().astype(np.float32)
    means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    log.info(
        "cluster version %d (model version %s): %d of its %d clusters carried into model version "
        "%s's space",
        previous.cluster_version,
        previous.model_version,
        len(ids),
        len(previous.ids),
        model_version,
    )
    return CentroidVersion(previous.cluster_version, model_version, ids.astype(np.int64), means)


def cluster_embeddings(
    spark: SparkSession, cfg: CourierConfig, run_id: str | None = None
) -> ClusterResult:
    """Fit a new cluster version over the embeddings of one model version and publish it atomically.

    Raises:
        ClusteringError: no embeddings, or ``cluster.k`` larger than the number of items.
    """
    t, c = cfg.tables, cfg.cluster
    run_id = run_id or uuid.uuid4().hex[:12]
    started = utc_now()
    timings: dict[str, int] = {}
    embeddings, centroids_table = t.qualified("item_embeddings"), t.qualified("cluster_centroids")
    model_version = c.model_version or latest_model_version(spark, embeddings)
    with timed(timings, "sample"):
        x, n_items = sample_embeddings(
            spark, embeddings, model_version, c.k, c.max_points_per_centroid, c.seed
        )
    if n_items < c.k:
        raise ClusteringError(
            f"cluster.k={c.k} is larger than the {n_items} items with embeddings of model version "
            f"{model_version} in {embeddings}: lower cluster.k"
        )
    previous = read_centroid_version(spark, centroids_table) if c.warm_start else None
    # Ids the newest version used: items not yet re-assigned may hold any of them, carried or not.
    used_ids = int(previous.ids.max()) + 1 if previous is not None and len(previous.ids) else 0
    if previous is not None and previous.model_version != model_version:
        previous = carried_centroids(spark, cfg, previous, model_version)
    init = _initial_centroids(previous, c.k, x, c.seed)
    with timed(timings, "fit"):
        fit = fit_spherical_kmeans(x, c, init_centroids=init)
    if previous is not None:
        ids = match_cluster_ids(
            fit.centroids, previous.centroids, previous.ids, first_fresh=used_ids
        )
    else:
        ids = np.arange(c.k, dtype=np.int64)
    version_number = _max_version(spark, centroids_table) + 1
    version = CentroidVersion(version_number, model_version, ids, fit.centroids)
    mlflow_run_id = _track(
        cfg,
        version,
        fit,
        n_items,
        previous,
        lambda rid: _publish(spark, centroids_table, version, fit, rid),
    )
    metrics = {
        "items": n_items,
        "trained_on": fit.n_train,
        "k": c.k,
        "cluster_version": version_number,
        "empty_clusters": fit.empty_clusters,
        **timings,
    }
    record = RunRecord(run_id, STAGE, None, None, started, metrics, config_json(cfg))
    record.save(spark, t.qualified("pipeline_runs"))
    return ClusterResult(
        record, version, fit, previous.cluster_version if previous else None, mlflow_run_id
    )


def _max_version(spark: SparkSession, table: str) -> int:
    if not spark.catalog.tableExists(table):
        return 0
    return int(one_row(spark.table(table).agg(F.max("cluster_version")))[0] or 0)


def _publish(
    spark: SparkSession, table: str, version: CentroidVersion, fit: KMeansFit, mlflow_run_id: str
) -> None:
    """Insert the version's k rows in one Delta commit, unless that version number is already taken.

    Raises:
        ConcurrentRunError: another run published this version number first (nothing was written).
    """
    now = utc_now()
    rows = [
        (
            version.cluster_version,
            int(cid),
            [float(v) for v in centroid],
            int(size),
            version.model_version,
            mlflow_run_id,
            now,
        )
        for cid, centroid, size in zip(version.ids, version.centroids, fit.sizes, strict=True)
    ]
    ensure_table(spark, table, CLUSTER_CENTROIDS_SCHEMA)
    source = held_before_commit(spark.createDataFrame(rows, CLUSTER_CENTROIDS_SCHEMA))
    try:
        with committing(table):
            metrics = one_row(
                DeltaTable.forName(spark, table)
                .alias("t")
                .merge(source.alias("s"), "t.cluster_version = s.cluster_version")
                .whenNotMatchedInsertAll()
                .execute()
            )
            if metrics["num_inserted_rows"] != len(rows):
                raise WriteConflict(
                    table,
                    f"cluster version {version.cluster_version} was published by another "
                    "run while this one was fitting",
                )
    except WriteConflict as conflict:
        # Not retried: each run of `courier cluster` publishes a version of its own.
        raise ConcurrentRunError(
            f"cluster: {conflict}; this run published nothing. Run `courier cluster` again if a "
            "newer version is wanted"
        ) from conflict


def _track(
    cfg: CourierConfig,
    version: CentroidVersion,
    fit: KMeansFit,
    n_items: int,
    previous: CentroidVersion | None,
    publish: Callable[[str], None],
) -> str:
    """One MLflow run per fit; ``publish(run_id)`` writes
    the table inside it, so a failed write fails the run."""
    import mlflow

    uri = tracking.resolve_tracking_uri(cfg.mlflow.tracking_uri)
    experiment_id = tracking.ensure_experiment(
        uri, cfg.mlflow.experiment, cfg.mlflow.artifact_location
    )
    c = cfg.cluster
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"cluster-v{version.cluster_version}"
    ) as run:
        mlflow.set_tags(
            {
                "courier.stage": STAGE,
                "courier.cluster_version": str(version.cluster_version),
                "courier.model_version": version.model_version,
                tracking.TAG_GIT: tracking.git_revision(),
            }
        )
        mlflow.log_params(
            {
                "k": c.k,
                "d": int(fit.centroids.shape[1]),
                "niter": c.niter,
                "seed": c.seed,
                "max_points_per_centroid": c.max_points_per_centroid,
                "model_version": version.model_version,
                "warm_start_from": previous.cluster_version if previous else "none",
                "gpu": fit.used_gpu,
            }
        )
        mlflow.log_metrics(
            {
                "objective": fit.objective,
                "imbalance_factor": fit.imbalance_factor,
                "empty_clusters": fit.empty_clusters,
                "iterations": fit.iterations,
                "items": n_items,
                "trained_on": fit.n_train,
            }
        )
        with tempfile.TemporaryDirectory() as tmp:
            np.save(Path(tmp) / "centroids.npy", version.centroids)
            np.save(Path(tmp) / "cluster_ids.npy", version.ids)
            (Path(tmp) / "sizes.json").write_text(
                json.dumps(dict(zip(map(int, version.ids), map(int, fit.sizes), strict=True)))
            )
            mlflow.log_artifacts(tmp, artifact_path="centroids")
        publish(run.info.run_id)
        return run.info.run_id
