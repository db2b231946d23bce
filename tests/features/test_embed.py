"""``courier embed`` on real Spark + Delta + MLflow:
exact, incremental, pinned to one model version."""

from __future__ import annotations

import hashlib

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from courier.data.decode import decode_jpeg
from courier.features.embed import embed_items, make_predict_fn
from courier.tracking import resolve_tracking_uri
from courier.tracking.models import ModelResolutionError

DB = "courier_embed_test"


@pytest.fixture(scope="module")
def cfg(feature_db):
    return feature_db(DB)


@pytest.fixture(scope="module")
def first_run(spark, cfg):
    return embed_items(spark, cfg)


def item_count(spark, cfg) -> int:
    return spark.table(cfg.tables.qualified("item_images")).count()


def _embeddings(spark, cfg, model_version: str) -> dict[int, np.ndarray]:
    rows = (
        spark.table(cfg.tables.qualified("item_embeddings"))
        .where(F.col("model_version") == model_version)
        .select("item_id", "embedding")
        .collect()
    )
    return {r["item_id"]: np.array(r["embedding"], dtype=np.float32) for r in rows}


def _images(spark, cfg) -> dict[int, bytes]:
    rows = spark.table(cfg.tables.qualified("item_images")).select("item_id", "jpeg").collect()
    return {r["item_id"]: bytes(r["jpeg"]) for r in rows}


def _model_uri(cfg, version: str) -> str:
    return f"models:/{cfg.mlflow.registered_model}/{version}"


def test_every_item_is_embedded_once_with_the_resolved_version(
    spark, cfg, first_run, registered_encoder
):
    m = first_run.record.metrics
    items = item_count(spark, cfg)
    assert first_run.model.model_version == registered_encoder
    assert first_run.model.uri == _model_uri(cfg, registered_encoder)  # the alias, pinned
    assert m["embedded"] == items and m["items_in"] == items and m.get("unchanged", 0) == 0
    table = spark.table(cfg.tables.qualified("item_embeddings"))
    assert table.count() == items
    assert table.select("item_id", "model_version").distinct().count() == items
    assert {r[0] for r in table.select("model_version").distinct().collect()} == {
        registered_encoder
    }


def test_udf_embeddings_equal_a_plain_torch_loop(spark, cfg, first_run, registered_encoder):
    uri = resolve_tracking_uri(cfg.mlflow.tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pytorch.load_model(_model_uri(cfg, registered_encoder))
    images = _images(spark, cfg)
    ids = sorted(images)
    batch = torch.from_numpy(
        np.stack([decode_jpeg(images[i], cfg.samples.image_size) for i in ids])
    )
    with torch.inference_mode():
        expected = model(batch).numpy()  # [n, d], one batch, no Spark
    got = _embeddings(spark, cfg, registered_encoder)
    actual = np.stack([got[i] for i in ids])
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(actual, axis=1), 1.0, atol=1e-5)
    # Not a degenerate model: items differ from each other far more than the tolerance.
    assert np.abs(actual - actual.mean(axis=0)).max() > 1e-3


def test_embeddings_do_not_depend_on_batch_composition(spark, cfg, first_run, registered_encoder):
    images = _images(spark, cfg)
    ids = sorted(images)[:40]
    # torch_threads=0 leaves this process's thread count alone:
    # later tests compare runs made with the default.
    predict = make_predict_fn(
        _model_uri(cfg, registered_encoder),
        resolve_tracking_uri(cfg.mlflow.tracking_uri),
        cfg.samples.image_size,
        cfg.model.embedding_dim,
        "cpu",
        0,
    )()
    jpegs = np.array([images[i] for i in ids], dtype=object)
    whole = predict(jpegs)["embedding"]
    singles = np.concatenate([predict(jpegs[i : i + 1])["embedding"] for i in range(len(ids))])
    order = np.random.default_rng(0).permutation(len(ids))
    shuffled = np.empty_like(whole)
    for start in range(0, len(ids), 7):  # odd-sized batches of a shuffled order
        chunk = order[start : start + 7]
        shuffled[chunk] = predict(jpegs[chunk])["embedding"]
    np.testing.assert_allclose(singles, whole, rtol=0, atol=1e-5)
    np.testing.assert_allclose(shuffled, whole, rtol=0, atol=1e-5)
    # And end to end: a full re-embed with other Spark and UDF batch sizes writes the same vectors.
    before = _embeddings(spark, cfg, registered_encoder)
    rerun = embed_items(
        spark, cfg.replace(["embed.batch_size=7", "embed.arrow_batch_rows=13"]), full=True
    )
    assert rerun.record.metrics["embedded"] == len(before)
    after = _embeddings(spark, cfg, registered_encoder)
    for item_id, vector in before.items():
        np.testing.assert_allclose(after[item_id], vector, rtol=0, atol=1e-5)


def test_a_rerun_with_nothing_new_embeds_nothing(spark, cfg, first_run):
    table = cfg.tables.qualified("item_embeddings")
    version = spark.sql(f"DESCRIBE HISTORY {table} LIMIT 1").first()["version"]
    again = embed_items(spark, cfg)
    assert again.record.metrics["embedded"] == 0
    assert again.record.metrics["unchanged"] == item_count(spark, cfg)
    assert "nothing new" in again.summary()
    assert spark.sql(f"DESCRIBE HISTORY {table} LIMIT 1").first()["version"] == version  # no commit


def test_changing_three_images_re_embeds_exactly_those_three(
    spark, cfg, first_run, registered_encoder
):
    item_images = cfg.tables.qualified("item_images")
    ids = sorted(_images(spark, cfg))
    changed, donors = ids[:3], ids[-3:]
    images = _images(spark, cfg)
    for item_id, donor in zip(changed, donors, strict=True):
        jpeg = images[donor]
        spark.sql(
            f"UPDATE {item_images} SET jpeg = :j, content_hash = :h WHERE item_id = :i",
            args={
                "j": bytearray(jpeg),
                "h": hashlib.sha256(jpeg + b"changed").hexdigest(),
                "i": item_id,
            },
        )
    before = _embeddings(spark, cfg, registered_encoder)
    run = embed_items(spark, cfg)
    assert run.record.metrics["embedded"] == 3
    assert run.record.metrics["unchanged"] == item_count(spark, cfg) - 3
    after = _embeddings(spark, cfg, registered_encoder)
    for item_id, donor in zip(changed, donors, strict=True):
        # now shows the donor's image
        np.testing.assert_allclose(after[item_id], before[donor], rtol=0, atol=1e-5)
    assert all(np.array_equal(after[i], before[i]) for i in ids if i not in changed)


def test_a_moved_alias_writes_rows_of_the_new_version_and_keeps_the_old(
    spark, cfg, first_run, registered_encoder
):
    uri = resolve_tracking_uri(cfg.mlflow.tracking_uri)
    client = MlflowClient(uri, registry_uri=uri)
    name = cfg.mlflow.registered_model
    old = client.get_model_version(name, registered_encoder)
    new = client.create_model_version(name, source=old.source, run_id=old.run_id)
    client.set_registered_model_alias(name, cfg.mlflow.alias, new.version)
    try:
        run = embed_items(spark, cfg)
        assert run.model.model_version == str(new.version)
        n = item_count(spark, cfg)
        assert run.record.metrics["embedded"] == n  # a new model version: everything is new
        counts = {
            r["model_version"]: r["count"]
            for r in spark.table(cfg.tables.qualified("item_embeddings"))
            .groupBy("model_version")
            .count()
            .collect()
        }
        assert counts == {registered_encoder: n, str(new.version): n}
    finally:
        client.set_registered_model_alias(name, cfg.mlflow.alias, registered_encoder)


def test_a_missing_model_version_is_a_clear_error(spark, cfg, first_run):
    with pytest.raises(ModelResolutionError, match=r"no version 999"):
        embed_items(spark, cfg, model_uri=f"models:/{cfg.mlflow.registered_model}/999")
    with pytest.raises(ModelResolutionError, match=r"no alias 'nowhere'"):
        embed_items(spark, cfg, model_uri=f"models:/{cfg.mlflow.registered_model}@nowhere")
    with pytest.raises(ModelResolutionError, match=r"a stage or 'latest' reference moves"):
        embed_items(spark, cfg, model_uri=f"models:/{cfg.mlflow.registered_model}/latest")


def test_items_without_a_usable_image_go_to_rejects_and_counts_reconcile(spark, cfg, first_run):
    t = cfg.tables
    # One catalogue item with no prepared image, one with a JPEG that does not decode.
    spark.sql(
        f"INSERT INTO {t.qualified('raw_items')} (item_id, category, updated_at) "
        "VALUES (990001, 'hats', TIMESTAMP'2026-01-01 00:00:00')"
    )
    spark.sql(
        f"INSERT INTO {t.qualified('item_images')} (item_id, category, jpeg, content_hash, "
        "image_size) VALUES (990002, 'hats', X'FFD8FF00DEADBEEF', 'garbage', "
        f"{cfg.samples.image_size})"
    )
    run = embed_items(spark, cfg)
    m = run.record.metrics
    assert m["rejected.item_without_image"] == 1 and m["rejected.undecodable_image"] == 1
    assert m["embedded"] == 0
    assert (
        m["items_in"]
        == m["unchanged"]
        + m["embedded"]
        + m["rejected.item_without_image"]
        + m["rejected.undecodable_image"]
    )
    rejects = {
        (r["key"], r["reason"])
        for r in spark.table(t.qualified("rejects")).where("stage = 'embed'").collect()
    }
    assert ("990001", "item_without_image") in rejects and (
        "990002",
        "undecodable_image",
    ) in rejects
    embedded = {
        r[0] for r in spark.table(t.qualified("item_embeddings")).select("item_id").collect()
    }
    assert not {990001, 990002} & embedded
