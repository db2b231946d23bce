"""``courier status``: what an on-call engineer looks at first.

    latest run of each stage    pipeline_runs: when, how long, its counts, its rejects by reason
    tables                      each table's Delta version and row count, and where it lives
    models                      the registered encoder version behind each alias (MLflow registry)
    clusters                    the current cluster version (what `courier assign` uses) and its k

Everything is read through the DataFrame API and the Delta/MLflow clients (no SQL text).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from delta.tables import DeltaTable
from pyspark.sql import SparkSession, Window, functions as F

from courier.config import CourierConfig
from courier.tables import delta_version, one_row
from courier.tracking import client, resolve_tracking_uri

# Every table of the contract, in pipeline order (architecture.md).
TABLES = (
    "raw_items",
    "raw_impressions",
    "item_images",
    "courier_samples",
    "courier_training_rows",
    "item_embeddings",
    "cluster_centroids",
    "item_image_features",
    "ctr_samples",
    "rejects",
    "pipeline_runs",
    "eval_item_styles",
    "eval_user_preferences",
)


@dataclass(frozen=True)
class StageRun:
    """The latest pipeline_runs row of one stage, with its rejects."""

    stage: str
    run_id: str
    start_dt: Any
    end_dt: Any
    started_at: Any
    seconds: float
    metrics: dict[str, int]
    rejects: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TableState:
    name: str
    rows: int
    version: int
    location: str


def latest_stage_runs(spark: SparkSession, cfg: CourierConfig) -> list[StageRun]:
    """The newest run of every stage in pipeline_runs
    (by started_at), with its rejects by reason."""
    runs_table, rejects_table = (
        cfg.tables.qualified("pipeline_runs"),
        cfg.tables.qualified("rejects"),
    )
    if not spark.catalog.tableExists(runs_table):
        return []
    newest = Window.partitionBy("stage").orderBy(
        F.col("started_at").desc(), F.col("finished_at").desc()
    )
    rows = (
        spark.table(runs_table)
        .withColumn("_n", F.row_number().over(newest))
        .where("_n = 1")
        .orderBy("started_at")
        .collect()
    )
    rejects: dict[tuple[str, str], dict[str, int]] = {}
    if rows and spark.catalog.tableExists(rejects_table):
        ids = [r["run_id"] for r in rows]
        for r in (
            spark.table(rejects_table)
            .where(F.col("run_id").isin(ids))
            .groupBy("stage", "run_id", "reason")
            .count()
            .collect()
        ):
            rejects.setdefault((r["stage"], r["run_id"]), {})[r["reason"]] = int(r["count"])
    return [
        StageRun(
            stage=r["stage"],
            run_id=r["run_id"],
            start_dt=r["start_dt"],
            end_dt=r["end_dt"],
            started_at=r["started_at"],
            seconds=(r["finished_at"] - r["started_at"]).total_seconds(),
            metrics=dict(r["metrics"] or {}),
            rejects=rejects.get((r["stage"], r["run_id"]), {}),
        )
        for r in rows
    ]


def table_states(spark: SparkSession, cfg: CourierConfig) -> list[TableState]:
    """Each existing table of the contract: rows, latest Delta version, location."""
    states = []
    for attr in TABLES:
        name = cfg.tables.qualified(attr)
        if not spark.catalog.tableExists(name):
            continue
        location = one_row(DeltaTable.forName(spark, name).detail().select("location"))["location"]
        states.append(
            TableState(name, spark.table(name).count(), delta_version(spark, name), location)
        )
    return states


def model_aliases(cfg: CourierConfig) -> dict[str, str]:
    """alias -> version of the registered encoder (empty when nothing is registered yet)."""
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(cfg.mlflow.tracking_uri)
    try:
        model = client(uri).get_registered_model(cfg.mlflow.registered_model)
    except MlflowException:
        return {}
    return {alias: str(version) for alias, version in sorted(model.aliases.items())}


def current_clusters(spark: SparkSession, cfg: CourierConfig) -> dict[str, Any] | None:
    """The newest cluster version (assign's default): version, encoder model version, k."""
    table = cfg.tables.qualified("cluster_centroids")
    if not spark.catalog.tableExists(table):
        return None
    df = spark.table(table)
    version = one_row(df.agg(F.max("cluster_version")))[0]
    if version is None:
        return None
    row = one_row(
        df.where(F.col("cluster_version") == version).agg(
            F.first("model_version").alias("model_version"), F.count("*").alias("k")
        )
    )
    return {
        "cluster_version": int(version),
        "model_version": row["model_version"],
        "k": int(row["k"]),
    }


def describe_tables(spark: SparkSession, cfg: CourierConfig) -> str:
    """The tables block of the status (also printed by the demo)."""
    lines = [f"{'table':<36} {'rows':>10} {'version':>8}  location"]
    lines += [
        f"{t.name:<36} {t.rows:>10,} {t.version:>8}  {t.location}" for t in table_states(spark, cfg)
    ]
    return "\n".join(lines)


def _describe_run(run: StageRun) -> list[str]:
    dates = f" for {run.start_dt}..{run.end_dt}" if run.start_dt else ""
    lines = [
        f"{run.stage:<16} {run.started_at:%Y-%m-%d %H:%M:%S} UTC, {run.seconds:,.0f} s{dates} (run "
        f"{run.run_id})"
    ]
    counts = {k: v for k, v in run.metrics.items() if not k.startswith("ms.")}
    if counts:
        lines.append("    " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    if run.rejects:
        lines.append(
            "    rejects: " + ", ".join(f"{k} {v:,}" for k, v in sorted(run.rejects.items()))
        )
    return lines


def status_report(spark: SparkSession, cfg: CourierConfig) -> str:
    """The whole status as text: stages, tables, models, clusters."""
    runs = latest_stage_runs(spark, cfg)
    lines = ["latest run of each stage:"]
    lines += [line for run in runs for line in _describe_run(run)] or [
        "    (no runs recorded in pipeline_runs)"
    ]
    lines += [
        "",
        "tables:",
        describe_tables(spark, cfg),
        "",
        f"models ({cfg.mlflow.registered_model}):",
    ]
    aliases = model_aliases(cfg)
    lines += [f"    {alias:<12} version {version}" for alias, version in aliases.items()] or [
        "    (none registered)"
    ]
    clusters = current_clusters(spark, cfg)
    lines += [
        "",
        "clusters:",
        f"    current version {clusters['cluster_version']} (k {clusters['k']:,}, encoder "
        f"version {clusters['model_version']})"
        if clusters
        else "    (no cluster version yet)",
    ]
    return "\n".join(lines)
