"""Two DDP processes under TorchDistributor (local mode, gloo on CPU) train and log to MLflow."""

from __future__ import annotations

import dataclasses
import json

import pytest
from mlflow.tracking import MlflowClient

from courier.config import CourierConfig
from courier.tracking import resolve_tracking_uri
from courier.train import TrainingDataError, run_training

STEPS = 4


@pytest.mark.slow
def test_two_process_torchdistributor_run(spark, shop_config: CourierConfig, training_table):
    cfg = shop_config.replace(
        [
            "train.num_processes=2",
            "train.batch_size=8",
            f"train.max_steps={STEPS}",
            "train.log_every_steps=2",
            "train.checkpoint_every_steps=2",
            "train.holdout_fraction=0.0",
            "train.loader_workers=1",
            "mlflow.log_model=false",
        ]
    )
    result = run_training(cfg, spark=spark, run_name="two-processes", distributed=True)

    assert result.result["global_step"] == STEPS
    assert result.result["setup"]["world_size"] == 2
    checkpoint = json.loads((result.run_dir / "run.json").read_text())
    assert checkpoint["mlflow_run_id"] == result.mlflow_run_id
    client = MlflowClient(resolve_tracking_uri(cfg.mlflow.tracking_uri))
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.num_processes"] == "2"
    # Only rank 0 logs: one value per logging step, not one per process.
    assert [m.step for m in client.get_metric_history(result.mlflow_run_id, "loss")] == [2, 4]
    assert run.data.metrics["images_per_s"] > 0 and run.data.metrics["run/images_per_s"] > 0


@pytest.mark.slow
def test_a_data_error_in_the_processes_reaches_the_driver_as_itself(
    spark, shop_config: CourierConfig, snapshot
):
    # The guard fires inside the torchrun processes; TorchDistributor hands back only their output.
    rows = tuple(n + 1 for n in snapshot.file_rows)
    tampered = dataclasses.replace(snapshot, file_rows=rows, total_rows=sum(rows))
    cfg = shop_config.replace(
        [
            "train.num_processes=2",
            "train.batch_size=8",
            "train.max_steps=2",
            "train.holdout_fraction=0.0",
            "train.loader_workers=1",
            "mlflow.log_model=false",
        ]
    )
    with pytest.raises(
        TrainingDataError, match=rf"{snapshot.table} version {snapshot.version}.*expected \d+ rows"
    ):
        run_training(
            cfg, spark=spark, snapshot=tampered, run_name="two-processes-tampered", distributed=True
        )
