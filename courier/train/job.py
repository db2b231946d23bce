"""What the driver hands a training process, and what rank 0 hands back.

``launch.py`` (the driver) builds one ``TrainJob`` and every training process (``loop.py``)
receives it: TorchDistributor and ``horovod.spark.run`` both ship it with cloudpickle,
``--no-spark`` passes it in-process. Every field is a frozen dataclass, a ``Path`` or a scalar,
their classes importable from ``courier`` (which the processes import anyway), so the job
pickles without driver state (no SparkSession, no MLflow client). Rank 0 writes a
``TrainProcessResult`` to ``<run_dir>/result.json``, which the driver reads (TorchDistributor's
own return value is written by every rank to one file, so it is not a reliable way to get rank 0's
answer back).

Torch-free, beside ``outputs.py``, so both sides import it without pulling the other's
dependencies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from courier.config import CourierConfig
    from courier.data.snapshot import TrainingSnapshot


@dataclass(frozen=True)
class MlflowTarget:
    """The MLflow run every process logs to (rank 0 only, in practice)."""

    tracking_uri: str  # resolved on the driver: a file: URI or a server's address
    run_id: str


@dataclass(frozen=True)
class TrainJob:
    """One training run as a process sees it.

    Attributes:
        config: the resolved config, secrets included: the processes need the driver's
            credentials (S3, MLflow). The job is never logged; TorchDistributor's pickle of it
            lives in a temporary folder of the driver while the processes run.
        snapshot: the pinned files to train on; holdout: the held-out ones, or None.
        run_dir: absolute path of ``<train.checkpoint_dir>/<run name>``.
        mlflow: the run to log metrics to.
        single_process: ignore RANK/WORLD_SIZE from the environment (``--no-spark``).
    """

    config: CourierConfig
    snapshot: TrainingSnapshot
    holdout: TrainingSnapshot | None
    run_dir: Path
    mlflow: MlflowTarget
    single_process: bool = False


@dataclass(frozen=True)
class TrainProcessResult:
    """What rank 0 reports at the end (``result.json``; ``TrainResult.result`` holds its dict).

    Attributes:
        global_step / total_steps / steps_per_epoch: where training stopped, of how many steps.
        final_checkpoint: the checkpoint written at the end.
        history: one entry per logging window (step, loss terms, images_per_s, epoch).
        eval: the held-out metrics (``eval/...``, ``eval_init/...``); empty without a hold-out.
        setup: what was switched on (``describe_setup`` and the backend's name).
        images_per_s / train_seconds: over the whole run, resumed attempts included.
    """

    global_step: int
    total_steps: int
    steps_per_epoch: int
    final_checkpoint: Path
    history: list[dict[str, float]]
    eval: dict[str, float]
    setup: dict[str, Any]
    images_per_s: float
    train_seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, the keys of ``result.json``."""
        return {**asdict(self), "final_checkpoint": str(self.final_checkpoint)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainProcessResult:
        """Inverse of ``to_dict``."""
        return cls(**{**d, "final_checkpoint": Path(d["final_checkpoint"])})
