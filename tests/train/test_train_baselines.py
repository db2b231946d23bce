"""The image-only objectives of ``courier train``:
they learn what they should and register like COURIER.

Each trains a few steps on the training shop's item_images (240 items, 32 px) in
this process and registers an EmbeddingModel; the loaded model embeds uint8
images into unit vectors, as ``courier embed`` needs.
"""

from __future__ import annotations

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from courier.data.decode import decode_jpegs
from courier.tracking import resolve_tracking_uri
from courier.train import run_training
from courier.train.baselines import nt_xent


def registered_embedding(cfg, version: str, images: np.ndarray) -> np.ndarray:
    uri = resolve_tracking_uri(cfg.mlflow.tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pytorch.load_model(f"models:/{cfg.mlflow.registered_model}/{version}")
    with torch.no_grad():
        return model(torch.from_numpy(images)).numpy()


@pytest.fixture(scope="module")
def shop_images(spark, shop_config, training_table):
    rows = (
        spark.table(shop_config.tables.qualified("item_images"))
        .orderBy("item_id")
        .limit(16)
        .collect()
    )
    return decode_jpegs([bytes(r["jpeg"]) for r in rows], 32)


@pytest.mark.parametrize(("objective", "steps"), [("label_aligned", 40), ("simclr", 15)])
def test_objective_lowers_its_loss_and_registers_an_encoder(
    spark, shop_config, training_table, shop_images, objective, steps
):
    cfg = shop_config.replace(
        [
            f"train.objective={objective}",
            f"train.max_steps={steps}",
            "train.lr=0.001",
            "train.log_every_steps=5",
            f"mlflow.registered_model=courier-test-{objective}",
        ]
    )
    result = run_training(cfg, spark=spark, run_name=f"baseline-{objective}", distributed=False)
    losses = [h["loss"] for h in result.result["history"]]
    assert len(losses) == steps // 5 and all(np.isfinite(losses))
    # label_aligned starts at ln(6 categories) = 1.79; simclr at ln(2 x 64 - 1) = 4.84
    assert losses[-1] < losses[0] - (0.5 if objective == "label_aligned" else 0.2), losses
    run = MlflowClient(resolve_tracking_uri(cfg.mlflow.tracking_uri)).get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["courier.objective"] == objective
    emb = registered_embedding(cfg, result.model_version, shop_images)
    assert emb.shape == (16, cfg.model.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)


def test_random_init_registers_the_seeded_initial_network(spark, shop_config, shop_images):
    embeddings = []
    for name in ("a", "b"):
        cfg = shop_config.replace(
            ["train.objective=random_init", f"mlflow.registered_model=courier-test-init-{name}"]
        )
        result = run_training(cfg, spark=spark, run_name=f"init-{name}", distributed=False)
        assert result.result["global_step"] == 0
        embeddings.append(registered_embedding(cfg, result.model_version, shop_images))
    # same train.seed, same network
    np.testing.assert_allclose(embeddings[0], embeddings[1], atol=1e-5)


def test_nt_xent_is_low_when_views_match_and_chance_when_they_do_not():
    z = torch.nn.functional.normalize(torch.randn(32, 16), dim=1)
    assert nt_xent(z, z, tau=0.05) < 0.1
    assert nt_xent(z, torch.randn(32, 16), tau=1.0) > np.log(63) - 0.5


def test_imagenet_initialised_swin_t_registers_the_local_weights(
    spark, shop_config, shop_images, tmp_path
):
    """The experiment's ``imagenet_swin_t`` arm: random_init on swin_t with a local state dict.

    No ImageNet file can be downloaded here, so a seeded torchvision swin_t stands in for
    it: what is tested is that its backbone weights are the ones registered.
    """
    from torchvision.models import swin_t

    torch.manual_seed(123)
    weights = swin_t(weights=None).state_dict()
    path = tmp_path / "swin_t_imagenet.pth"
    torch.save(weights, path)
    cfg = shop_config.replace(
        [
            "train.objective=random_init",
            "model.backbone=swin_t",
            f"model.pretrained_weights_path={path}",
            "mlflow.registered_model=courier-test-swin",
        ]
    )
    result = run_training(cfg, spark=spark, run_name="imagenet-swin", distributed=False)
    uri = resolve_tracking_uri(cfg.mlflow.tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    registered = mlflow.pytorch.load_model(
        f"models:/{cfg.mlflow.registered_model}/{result.model_version}"
    )
    backbone = registered.encoder.backbone.state_dict()
    # Every non-head tensor is the file's (checkpoint-wrapped stages keep torchvision's key names).
    compared = [k for k in weights if not k.startswith("head.")]
    assert len(compared) > 100 and all(torch.equal(backbone[k], weights[k]) for k in compared)
    emb = registered_embedding(cfg, result.model_version, shop_images)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
