"""MLflow tracking, shared by the stages: the run's params and tags, metric logging, the logged and
registered encoder; ``courier.tracking.models``: which registered model a run uses, and the
preprocessing every logged encoder carries. Shared plumbing: imports no stage (training, the feature
stages, the experiment, promotion and ``courier status`` all use it).

Who talks to MLflow: the driver creates the run (params, tags) before any
training process starts and logs + registers the model after they finish;
during training only rank 0 logs metrics, live, so a long run's curves can be
watched while it runs. So there is one writer at a time, which the embedded
SQLite store needs (the driver is idle, waiting on the processes, meanwhile).
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from courier.config import PROJECT_ROOT

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

_SQLITE = "sqlite:///"

TAG_TABLE = "courier.training_table"
TAG_VERSION = "courier.table_version"
TAG_ROWS = "courier.snapshot_rows"
TAG_TRAIN_ROWS = "courier.train_rows"
TAG_HOLDOUT_ROWS = "courier.holdout_rows"
TAG_GIT = "courier.git_revision"
TAG_RUN_DIR = "courier.checkpoint_dir"
TAG_RESUMES = "courier.resumes"
TAG_MODEL_VERSION = "courier.registered_model_version"


def resolve_tracking_uri(uri: str) -> str:
    """A relative SQLite path is taken from the project root
    (like warehouse_dir); its folder is created."""
    if not uri.startswith(_SQLITE):
        return uri
    path = Path(uri[len(_SQLITE) :])
    if not path.is_absolute():
        path = (PROJECT_ROOT / path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"{_SQLITE}{path}"


def default_artifact_location(tracking_uri: str) -> str | None:
    """Artifacts of a SQLite store go next to the database, not into the working directory."""
    if not tracking_uri.startswith(_SQLITE):
        return None
    return (Path(tracking_uri[len(_SQLITE) :]).parent / "mlartifacts").as_uri()


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> ``{"a.b.c": "value"}`` (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


def git_revision(root: Path = PROJECT_ROOT) -> str:
    """``git rev-parse HEAD`` of the project, or "unknown" (an installed wheel, no git)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    rev = done.stdout.strip()
    return rev if done.returncode == 0 and rev else "unknown"


def client(tracking_uri: str) -> MlflowClient:
    """An MlflowClient for ``tracking_uri`` (registry on the same store)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def ensure_experiment(tracking_uri: str, name: str, artifact_location: str | None) -> str:
    """The id of experiment ``name``, created (with ``artifact_location``) if missing."""
    mlc = client(tracking_uri)
    experiment = mlc.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = artifact_location or default_artifact_location(tracking_uri)
    return mlc.create_experiment(name, artifact_location=location)


def create_run(
    tracking_uri: str,
    experiment_id: str,
    run_name: str,
    params: Mapping[str, str],
    tags: Mapping[str, str],
) -> str:
    """Create the run (status RUNNING) with ``params`` and ``tags``; returns its id."""
    from mlflow.entities import Param, RunTag

    mlc = client(tracking_uri)
    run = mlc.create_run(experiment_id, run_name=run_name, tags={"mlflow.runName": run_name})
    items = list(params.items())
    for start in range(0, len(items), 100):  # log_batch takes at most 100 params per call
        mlc.log_batch(run.info.run_id, params=[Param(k, v) for k, v in items[start : start + 100]])
    mlc.log_batch(run.info.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    return run.info.run_id


class MetricLogger:
    """Rank 0's live metric logging; a failing store costs a warning, not the run."""

    def __init__(self, tracking_uri: str | None, run_id: str | None) -> None:
        self.run_id = run_id
        self._client = client(tracking_uri) if tracking_uri and run_id else None

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if self._client is None or self.run_id is None or not metrics:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        try:
            self._client.log_batch(self.run_id, metrics=batch)
        except Exception as exc:  # noqa: BLE001 - metrics are best effort, the checkpoint is not
            log.warning("MLflow metric logging failed at step %d: %s", step, exc)


def log_encoder(
    tracking_uri: str,
    run_id: str,
    model: Any,
    spec: Any,
    embedding_dim: int,
    registered_model: str | None,
    alias: str | None,
) -> str | None:
    """Log ``model`` (an EmbeddingModel:
    uint8 images [N,3,S,S] -> unit embeddings [N,d]) and register it.

    The signature, an input example and ``spec`` (its PreprocessingSpec, as model
    metadata) make the logged model self-describing. Returns the registered model
    version (None when ``registered_model`` is None).
    """
    import mlflow
    import mlflow.pytorch
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    size = spec.image_size
    signature = ModelSignature(
        # Unnamed tensors: the pytorch flavour takes and returns one plain ndarray.
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, 3, size, size))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, embedding_dim))]),
    )
    # Two images: torch.export (MLflow's default "pt2" format) would freeze a batch dimension
    # of size 1 into the saved program; with 2 it stays dynamic.
    example = np.random.default_rng(0).integers(0, 256, (2, 3, size, size), dtype=np.uint8)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            model,
            name="image_encoder",
            signature=signature,
            input_example=example,
            registered_model_name=registered_model,
            metadata=spec.to_metadata(),
            # torch.export's program: loading it needs torch only, not this package (Spark UDFs).
            serialization_format="pt2",
        )
    if registered_model is None:
        return None
    version = str(info.registered_model_version)
    if alias:
        client(tracking_uri).set_registered_model_alias(registered_model, alias, version)
    return version
