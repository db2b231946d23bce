"""What a training run hands on: its ``TrainResult``, and the encoder as it is registered.

Shared by ``launch.py`` (COURIER) and ``baselines.py`` (the image-only objectives), below both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from courier import tracking

if TYPE_CHECKING:
    from courier.config import CourierConfig

log = logging.getLogger("courier.train")


@dataclass
class TrainResult:
    """What a finished ``courier train`` produced.

    Attributes:
        run_name / run_dir: the run's name and checkpoint folder.
        mlflow_run_id: the MLflow run.
        snapshot: TrainingSnapshot (dict) trained on; holdout: the held-out one or None.
        result: rank 0's result.json (history, eval metrics, images/s, final checkpoint).
        model_version: registered model version, or None when not logged.
    """

    run_name: str
    run_dir: Path
    mlflow_run_id: str
    snapshot: dict[str, Any]
    holdout: dict[str, Any] | None
    result: dict[str, Any]
    model_version: str | None

    @property
    def final_checkpoint(self) -> Path:
        return Path(self.result["final_checkpoint"])

    def summary(self) -> str:
        r = self.result
        if r.get("objective", "courier") != "courier":
            loss = (
                f", loss {r['history'][0]['loss']:.3f} -> {r['history'][-1]['loss']:.3f}"
                if r["history"]
                else ""
            )
            return (
                f"training run {self.run_name} (MLflow run {self.mlflow_run_id}): objective "
                f"{r['objective']}, {r['global_step']} steps{loss}, registered as version "
                f"{self.model_version}"
            )
        lines = [
            f"training run {self.run_name} (MLflow run {self.mlflow_run_id})",
            f"  snapshot        {self.snapshot['table']} v{self.snapshot['version']}, "
            f"{self.snapshot['total_rows']:,} rows",
            f"  steps           {r['global_step']:,} ({r['steps_per_epoch']:,} per epoch)",
            f"  images/s        {r['images_per_s']:,.1f}",
        ]
        if r["history"]:
            first, last = r["history"][0], r["history"][-1]
            lines.append(
                f"  loss            {first['loss']:.4f} (step {first['step']:.0f}) -> "
                f"{last['loss']:.4f} (step {last['step']:.0f})"
            )
        for key in (
            "eval/hit1",
            "eval_init/hit1",
            "eval/row_auc",
            "eval_init/row_auc",
            "eval/embedding_std",
        ):
            if key in r["eval"]:
                lines.append(f"  {key:<15} {r['eval'][key]:.4f}")
        lines.append(f"  checkpoints     {self.run_dir}")
        if self.model_version:
            lines.append(f"  model version   {self.model_version}")
        return "\n".join(lines)


def embedding_model(encoder: Any, image_size: int) -> Any:
    """``encoder`` as the registered EmbeddingModel,
    with the training loader's normalisation, in eval mode."""
    from courier.data.decode import IMAGENET_MEAN, IMAGENET_STD
    from courier.model.serving import EmbeddingModel
    from courier.tracking.models import PreprocessingSpec

    spec = PreprocessingSpec(
        image_size, tuple(map(float, IMAGENET_MEAN)), tuple(map(float, IMAGENET_STD))
    )
    return EmbeddingModel(encoder, spec).eval()


def register_encoder(
    cfg: CourierConfig, tracking_uri: str, run_id: str, exported: Any
) -> str | None:
    """Log ``exported`` (an ``embedding_model``) to the run, register it as ``cfg.mlflow`` says and
    tag the run with the version; returns the version, or None when nothing was registered."""
    version = tracking.log_encoder(
        tracking_uri,
        run_id,
        exported,
        exported.spec,
        embedding_dim=cfg.model.embedding_dim,
        registered_model=cfg.mlflow.registered_model or None,
        alias=cfg.mlflow.alias,
    )
    if version is not None:
        tracking.client(tracking_uri).set_tag(run_id, tracking.TAG_MODEL_VERSION, version)
        log.info(
            "registered %s version %s, alias %r",
            cfg.mlflow.registered_model,
            version,
            cfg.mlflow.alias,
        )
    return version
