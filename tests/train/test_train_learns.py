"""A short CPU run of `courier train` learns, and its MLflow run holds what the docs promise.

One training run (in-process, the ``--no-spark`` path, real Petastorm loader on
the real Delta table) is shared by the tests of this module.
"""

from __future__ import annotations

import re

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from courier.config import CourierConfig
from courier.tracking import git_revision, resolve_tracking_uri
from courier.train import ResumeError, run_training

STEPS = 40


@pytest.fixture(scope="module")
def trained(spark, shop_config: CourierConfig, training_table: str):
    # lr 1e-3, not the paper's 1e-4 (an ImageNet Swin fine-tuned with 3,072-row batches): a
    # from-scratch small CNN needs the bigger step to move measurably in 40 steps. Over 4 seeds on
    # this shop the held-out in-batch rank fell by 0.20-0.24 with 1e-3 and by 0.06-0.10 with 1e-4
    # (docs/TRAINING.md), so the thresholds below sit well inside the first and fail a run that
    # learns less than half as much.
    cfg = shop_config.replace([f"train.max_steps={STEPS}", "train.lr=0.001"])
    return cfg, run_training(cfg, spark=spark, run_name="learns", distributed=False)


def test_loss_goes_down(trained):
    _, result = trained
    history = result.result["history"]
    assert [h["step"] for h in history] == [float(s) for s in range(5, STEPS + 1, 5)]
    first, last = history[0]["loss"], np.mean([h["loss"] for h in history[-2:]])
    # Chance level is about ln(#PV items in a batch) + ln(#rows) = 5.0 + 3.5; a run that does not
    # learn stays there (the first window already averages 5 steps of training).
    assert last < first - 0.5, [round(h["loss"], 3) for h in history]
    assert all(np.isfinite(h["loss"]) for h in history)


def test_held_out_reconstructions_retrieve_clicked_items_better_than_at_init(trained):
    _, result = trained
    ev = result.result["eval"]
    assert ev["eval/rows_scored"] >= 100  # held-out rows (the latest files), never trained on
    # The training objective on unseen rows: among all items shown in an evaluation batch, where
    # does the reconstruction from a row's clicks rank
    # the row's clicked item (0 = first, 0.5 = chance)?
    assert ev["eval/inbatch_rank"] < ev["eval_init/inbatch_rank"] - 0.08, ev
    # The held-out loss (tau = 0.05 makes it sensitive to a few confident misses) fell by 1.1-1.3
    # over 4 local seeds but by only 0.06 in one CI run whose rank still fell by more than 0.08:
    # the rank is the learning check, the loss only has to be below the initial model's.
    assert ev["eval/loss"] < ev["eval_init/loss"], ev
    # Within the page (same category, so it needs style, which COURIER learns later; see the
    # prototype notes in docs/TRAINING.md) the metric is reported; here only that it is sane.
    assert 0.0 < ev["eval/hit1_chance"] < 1.0 and 0.0 <= ev["eval/hit1"] <= 1.0
    assert 0.0 <= ev["eval/rank_clicked"] <= 1.0 and 0.0 <= ev["eval/row_auc"] <= 1.0


def test_embeddings_do_not_collapse(trained):
    _, result = trained
    ev = result.result["eval"]
    # Collapsed embeddings (every image the same direction) give ~1e-4 here; spread 256-d
    # unit vectors give up to 1/16. Same for uniformity: 0 on collapse.
    assert ev["eval/embedding_std"] > 0.01, ev
    assert ev["eval/uniformity"] < -0.3, ev
    assert 0.0 < ev["eval/attention_entropy"] <= np.log(5) + 1e-6


def test_mlflow_run_records_config_data_version_code_and_curves(trained, spark, training_table):
    cfg, result = trained
    client = MlflowClient(resolve_tracking_uri(cfg.mlflow.tracking_uri))
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    params, tags = run.data.params, run.data.tags
    assert params["train.max_steps"] == str(STEPS)
    assert params["model.backbone"] == "small_cnn"
    assert params["loss.tau"] == "0.05"
    assert params["train.lr"] == str(cfg.train.lr)

    from courier.tables import delta_version

    assert tags["courier.training_table"] == training_table
    assert tags["courier.table_version"] == str(delta_version(spark, training_table))
    assert tags["courier.table_version"] == str(result.snapshot["version"])
    # The checkout's HEAD when the run started
    # (others may commit meanwhile, so not compared to now).
    assert (
        re.fullmatch(r"[0-9a-f]{40}", tags["courier.git_revision"]) or git_revision() == "unknown"
    )
    assert tags["mlflow.source.git.commit"] == tags["courier.git_revision"]
    assert int(tags["courier.snapshot_rows"]) == int(tags["courier.train_rows"]) + int(
        tags["courier.holdout_rows"]
    )
    assert int(tags["courier.holdout_rows"]) > 0

    losses = client.get_metric_history(result.mlflow_run_id, "loss")
    assert [m.step for m in losses] == list(range(5, STEPS + 1, 5))
    assert len(client.get_metric_history(result.mlflow_run_id, "images_per_s")) == STEPS // 5
    for name in (
        "eval/alignment",
        "eval/uniformity",
        "eval/embedding_std",
        "eval/attention_entropy",
        "eval/hit1",
        "eval/rank_clicked",
        "eval/rank_unclicked",
        "eval_init/hit1",
        "eval_init/embedding_std",
    ):
        assert name in run.data.metrics, name
    artifacts = {a.path for a in client.list_artifacts(result.mlflow_run_id)}
    assert {"config.yaml", "snapshot.json"} <= artifacts


def test_registered_model_is_reachable_by_alias_and_embeds(trained):
    cfg, result = trained
    uri = resolve_tracking_uri(cfg.mlflow.tracking_uri)
    client = MlflowClient(uri, registry_uri=uri)
    version = client.get_model_version_by_alias(cfg.mlflow.registered_model, "candidate")
    assert str(version.version) == result.model_version
    assert version.run_id == result.mlflow_run_id

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model_uri = f"models:/{cfg.mlflow.registered_model}@candidate"
    encoder = mlflow.pytorch.load_model(model_uri)
    # Self-describing: decoded uint8 images in, its own size and normalisation in the metadata.
    from courier.data.decode import IMAGENET_MEAN, IMAGENET_STD
    from courier.tracking.models import PreprocessingSpec

    spec = PreprocessingSpec.from_metadata(
        mlflow.models.get_model_info(model_uri).metadata, model_uri
    )
    assert spec.image_size == 32
    np.testing.assert_allclose(spec.mean, IMAGENET_MEAN, rtol=1e-6)
    np.testing.assert_allclose(spec.std, IMAGENET_STD, rtol=1e-6)
    # a batch size other than the example's
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    emb = encoder(images)
    assert emb.shape == (5, cfg.model.embedding_dim)
    assert torch.isfinite(emb).all()
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(5), rtol=0, atol=1e-5)
    # The same weights as the final checkpoint, in eval mode, after the loader's normalisation.
    from courier.data.decode import normalise_images
    from courier.train.launch import _export_encoder

    exported = _export_encoder(cfg, result.final_checkpoint, 32)
    raw = exported.encoder(torch.from_numpy(normalise_images(images.numpy())))
    torch.testing.assert_close(
        emb, torch.nn.functional.normalize(raw, dim=-1), rtol=1e-4, atol=1e-5
    )


def test_a_finished_run_is_not_trained_again(trained):
    cfg, result = trained
    # By MLflow run id (resolved to the run's checkpoint folder) and by run name.
    with pytest.raises(ResumeError, match="already finished"):
        run_training(cfg, resume=result.mlflow_run_id, distributed=False)
    with pytest.raises(ResumeError, match="already finished"):
        run_training(cfg, run_name=result.run_name, distributed=False)


def test_the_run_is_recorded_in_pipeline_runs(spark, trained):
    cfg, result = trained
    rows = (
        spark.table(cfg.tables.qualified("pipeline_runs"))
        .where((F.col("stage") == "train") & (F.col("run_id") == result.run_name))
        .collect()
    )
    assert len(rows) == 1
    m = rows[0]["metrics"]
    assert m["steps"] == STEPS and m["model_version"] == int(result.model_version)
    assert m["train_rows"] == sum(result.snapshot["file_rows"])
    assert m["holdout_rows"] == sum(result.holdout["file_rows"]) > 0
    assert m["table_version"] == result.snapshot["version"]
