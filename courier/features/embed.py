"""``courier embed``: item_images -> item_embeddings, in a Spark Arrow UDF.

    resolve the model (driver, once) -> candidates (sql/features/embed_candidates.sql)
    -> predict_batch_udf over the JPEGs (model loaded once per Python worker; decode and
       normalisation inside) -> MERGE on (item_id, model_version) -> rejects -> pipeline_runs

Incremental: an item is embedded when its image (``content_hash``) or the model
version is new; ``full=True`` recomputes everything. Counts reconcile: every
catalogue item is embedded, unchanged or rejected with a reason.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession, functions as F, types as T

from courier.config import CourierConfig, config_json
from courier.config.features import EmbedConfig
from courier.spark import session_conf
from courier.sql_files import run_sql_file
from courier.tables import (
    RunRecord,
    committing,
    count_by,
    ensure_table,
    merge_rejects,
    reconcile,
    require_columns,
    retry_on_conflict,
    timed,
    utc_now,
)
from courier.tracking import resolve_tracking_uri
from courier.tracking.models import ResolvedModel, default_model_uri, resolve_model

log = logging.getLogger(__name__)

STAGE = "embed"
ITEM_EMBEDDINGS_DDL = (
    "item_id BIGINT, model_version STRING, content_hash STRING, embedding ARRAY<FLOAT>, "
    "computed_at TIMESTAMP"
)
ITEM_IMAGES_COLUMNS = {
    "item_id": ("bigint",),
    "jpeg": ("binary",),
    "content_hash": ("string",),
    "image_size": ("int",),
}
UDF_OUTPUT = T.StructType(
    [
        T.StructField("embedding", T.ArrayType(T.FloatType())),
        T.StructField("error", T.StringType()),
    ]
)


def decode_for_model(jpegs: Any, image_size: int) -> tuple[np.ndarray, list[str | None]]:
    """JPEG bytes -> uint8 [n_ok, 3, S, S] of the decodable ones, and one error (or None) per input.

    Per image, so one bad JPEG costs its own row (a reject), never the batch.
    """
    from courier.data.decode import DecodeError, decode_jpeg

    images: list[np.ndarray] = []
    errors: list[str | None] = []
    for data in jpegs:
        try:
            images.append(decode_jpeg(bytes(data), image_size))
            errors.append(None)
        except DecodeError as exc:
            errors.append(str(exc))
    stacked = (
        np.stack(images) if images else np.zeros((0, 3, image_size, image_size), dtype=np.uint8)
    )
    return stacked, errors


def make_predict_fn(
    model_uri: str,
    tracking_uri: str,
    image_size: int,
    embedding_dim: int,
    device: str,
    torch_threads: int,
) -> Callable[[], Callable[[np.ndarray], dict[str, np.ndarray]]]:
    """``make_predict_fn`` for predict_batch_udf: loads the model once per Python worker.

    The predict function maps JPEG bytes [n] to {"embedding": float32 [n, d], "error": [n]};
    an undecodable image gets a zero vector and its error (the caller rejects it).
    """

    def make() -> Callable[[np.ndarray], dict[str, np.ndarray]]:
        import mlflow
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
        target = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        # Exported in eval mode (the pt2 program has no .eval()); inference_mode below.
        model = mlflow.pytorch.load_model(model_uri, map_location=target)

        def predict(jpegs: np.ndarray) -> dict[str, np.ndarray]:
            images, errors = decode_for_model(jpegs, image_size)  # uint8 [n_ok, 3, S, S]
            out = np.zeros((len(errors), embedding_dim), dtype=np.float32)
            if len(images):
                with torch.inference_mode():
                    emb = model(torch.from_numpy(images).to(target))  # [n_ok, d], unit norm
                ok = np.array([e is None for e in errors])
                out[ok] = emb.to("cpu", torch.float32).numpy()
            return {"embedding": out, "error": np.array(errors, dtype=object)}

        return predict

    return make


def embedding_udf(
    resolved: ResolvedModel, tracking_uri: str, cfg: EmbedConfig
) -> Callable[..., Column]:
    """The predict_batch_udf: BINARY jpeg -> struct<embedding ARRAY<FLOAT>, error STRING>."""
    from pyspark.ml.functions import predict_batch_udf

    make = make_predict_fn(
        resolved.uri,
        tracking_uri,
        resolved.spec.image_size,
        resolved.embedding_dim,
        str(cfg.device),
        cfg.torch_threads,
    )  # a plain str into the pickled UDF
    return predict_batch_udf(make, return_type=UDF_OUTPUT, batch_size=cfg.batch_size)


@dataclass
class EmbedResult:
    record: RunRecord
    model: ResolvedModel

    def summary(self) -> str:
        m = self.record.metrics
        head = (
            f"embed: model {self.model.uri} (asked for {self.model.requested_uri}), "
            f"{m.get('embedded', 0):,} items embedded"
        )
        if m.get("embedded", 0) == 0:
            head += (
                " (nothing new: every item is embedded from its current image by this model "
                "version)"
            )
        return head + "\n" + self.record.summary()


def _check_image_size(to_embed: DataFrame, item_images: str, resolved: ResolvedModel) -> None:
    """The model decides the input size; item_images prepared
    at another size is a config error, not a reject."""
    sizes = [r[0] for r in to_embed.select("image_size").distinct().collect()]
    wrong = sorted(s for s in sizes if s != resolved.spec.image_size)
    if wrong:
        raise ValueError(
            f"model {resolved.uri} takes {resolved.spec.image_size} px images, but {item_images} "
            f"holds images of {wrong} px: rebuild item_images with "
            f"samples.image_size={resolved.spec.image_size} (courier build-samples)"
        )


def _partitions(spark: SparkSession, rows: int, arrow_batch_rows: int) -> int:
    # item_images is a few files: without a repartition one Python worker would embed everything.
    return max(spark.sparkContext.defaultParallelism, math.ceil(rows / (8 * arrow_batch_rows)))


def embed_items(
    spark: SparkSession,
    cfg: CourierConfig,
    model_uri: str | None = None,
    full: bool = False,
    run_id: str | None = None,
) -> EmbedResult:
    """Embed every new or changed item image with one pinned model and MERGE into item_embeddings.

    Args:
        model_uri: any MLflow model URI; None = ``embed.model_uri`` or the registry alias.
        full: recompute every item, not only new images / a new model version.

    Raises:
        ModelResolutionError: the model, alias or version does not exist.
        SchemaError: item_images is missing or lacks a column.
        ReconciliationError: a catalogue item was neither embedded, unchanged nor rejected.
        ConcurrentRunError: concurrent runs kept committing first (after 3 attempts).
    """
    run_id = run_id or uuid.uuid4().hex[:12]
    return retry_on_conflict(STAGE, lambda: _embed_once(spark, cfg, model_uri, full, run_id))


def _embed_once(
    spark: SparkSession, cfg: CourierConfig, model_uri: str | None, full: bool, run_id: str
) -> EmbedResult:
    t, e = cfg.tables, cfg.embed
    started = utc_now()
    timings: dict[str, int] = {}
    tracking_uri = resolve_tracking_uri(cfg.mlflow.tracking_uri)
    requested = (
        model_uri or e.model_uri or default_model_uri(cfg.mlflow.registered_model, cfg.mlflow.alias)
    )
    resolved = resolve_model(tracking_uri, requested)
    log.info(
        "embedding with %s (model version %s, %d px, d=%d)",
        resolved.uri,
        resolved.model_version,
        resolved.spec.image_size,
        resolved.embedding_dim,
    )

    item_images, table = t.qualified("item_images"), t.qualified("item_embeddings")
    require_columns(spark, item_images, ITEM_IMAGES_COLUMNS)
    ensure_table(spark, table, ITEM_EMBEDDINGS_DDL)
    args = {
        "raw_items": t.qualified("raw_items"),
        "item_images": item_images,
        "item_embeddings": table,
        "model_version": resolved.model_version,
        "full": full,
    }
    with timed(timings, "candidates"):
        # Eager: the MERGE below rewrites item_embeddings, which the candidates read.
        candidates = run_sql_file(spark, "features/embed_candidates", args).localCheckpoint(
            eager=True
        )
    counts = count_by(
        candidates,
        "CASE WHEN reject_reason IS NOT NULL THEN concat('rejected.', reject_reason) "
        "WHEN unchanged THEN 'unchanged' ELSE 'to_embed' END",
    )
    to_embed_rows = counts.pop("to_embed", 0)
    metrics: dict[str, int] = {"items_in": sum(counts.values()) + to_embed_rows, **counts}
    rejects = candidates.where("reject_reason IS NOT NULL").select(
        F.col("item_id").cast("string").alias("key"),
        F.col("reject_reason").alias("reason"),
        F.col("reject_detail").alias("detail"),
        F.current_date().alias("dt"),
    )

    embedded = 0
    if to_embed_rows:
        to_embed = candidates.where("reject_reason IS NULL AND NOT unchanged")
        _check_image_size(to_embed, item_images, resolved)
        with timed(timings, "embed"):
            outputs = _run_udf(spark, to_embed, resolved, tracking_uri, e, to_embed_rows)
        failed = outputs.where("error IS NOT NULL").select(
            F.col("item_id").cast("string").alias("key"),
            F.lit("undecodable_image").alias("reason"),
            F.col("error").alias("detail"),
            F.current_date().alias("dt"),
        )
        rejects = rejects.unionByName(failed)
        with timed(timings, "merge"):
            embedded = _merge(spark, table, outputs.where("error IS NULL"), resolved.model_version)
        metrics["rejected.undecodable_image"] = outputs.where("error IS NOT NULL").count()
    metrics["embedded"] = embedded
    with timed(timings, "merge_rejects"):
        merge_rejects(spark, t.qualified("rejects"), rejects, STAGE, run_id)
    reconcile(
        "embed items", metrics["items_in"], {k: v for k, v in metrics.items() if k != "items_in"}
    )
    if resolved.model_version.isdigit():
        metrics["model_version"] = int(resolved.model_version)
    metrics.update(timings)
    record = RunRecord(run_id, STAGE, None, None, started, metrics, config_json(cfg))
    record.save(spark, t.qualified("pipeline_runs"))
    candidates.unpersist()
    return EmbedResult(record, resolved)


def _run_udf(
    spark: SparkSession,
    to_embed: DataFrame,
    resolved: ResolvedModel,
    tracking_uri: str,
    cfg: EmbedConfig,
    rows: int,
) -> DataFrame:
    """item_id, content_hash, embedding,
    error of every row of ``to_embed``, computed once (checkpointed)."""
    udf = embedding_udf(resolved, tracking_uri, cfg)
    settings = {"spark.sql.execution.arrow.maxRecordsPerBatch": str(cfg.arrow_batch_rows)}
    with session_conf(spark, settings):
        out = (
            to_embed.repartition(_partitions(spark, rows, cfg.arrow_batch_rows), "item_id")
            .select("item_id", "content_hash", udf("jpeg").alias("out"))
            .select("item_id", "content_hash", "out.embedding", "out.error")
            .localCheckpoint(eager=True)
        )
    log.info("embedded %d images with model version %s", rows, resolved.model_version)
    return out


def _merge(spark: SparkSession, table: str, good: DataFrame, model_version: str) -> int:
    """MERGE the embeddings on (item_id, model_version); returns the rows written."""
    source = good.select(
        "item_id",
        F.lit(model_version).alias("model_version"),
        "content_hash",
        "embedding",
        F.current_timestamp().alias("computed_at"),
    )
    with committing(table):
        (
            DeltaTable.forName(spark, table)
            .alias("t")
            .merge(source.alias("s"), "t.item_id = s.item_id AND t.model_version = s.model_version")
            .whenMatchedUpdateAll()
            .whenNotMatchedInsertAll()
            .execute()
        )
    return good.count()
