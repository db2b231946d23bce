"""The run directory and its manifest (``run.json``): what a resumed run must reuse.

The manifest is written by the driver before any process starts, so a run
killed even before its first checkpoint resumes with the same snapshot, the
same held-out files and the same MLflow run.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from courier.train.checkpoint import atomic_write_json, read_json
from courier.train.errors import ResumeError

log = logging.getLogger(__name__)

MANIFEST = "run.json"
RESULT = "result.json"

# Settings a resumed run must share with the original, or it would not continue the
# same optimisation (other train.* keys, e.g. max_steps or logging cadence, may change).
# The number of processes is checked against the checkpoint instead (--no-spark runs one).
_FROZEN_TRAIN_KEYS = ("batch_size", "lr", "weight_decay", "seed", "holdout_fraction", "loader_kind")
# Model keys that change how, not what, is computed.
_EXECUTION_MODEL_KEYS = frozenset({"compile", "gradient_checkpointing", "channels_last"})


@dataclass
class RunManifest:
    """Identity of one training run.

    Attributes:
        run_name: folder name under train.checkpoint_dir and the MLflow run name.
        mlflow_run_id: the MLflow run every process logs to.
        snapshot: TrainingSnapshot.to_dict() of the rows trained on.
        holdout: TrainingSnapshot.to_dict() of the held-out rows, or None.
        pinned: the full pinned snapshot (before the hold-out split).
        config: the resolved CourierConfig.to_log_dict() of the first start (secrets masked).
        created_at: ISO time of the first start.
        resumes: how many times the run was resumed.
    """

    run_name: str
    mlflow_run_id: str
    snapshot: dict[str, Any]
    holdout: dict[str, Any] | None
    pinned: dict[str, Any]
    config: dict[str, Any]
    created_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())
    resumes: int = 0

    def save(self, run_dir: Path) -> None:
        atomic_write_json(Path(run_dir) / MANIFEST, asdict(self))

    @classmethod
    def load(cls, run_dir: Path) -> RunManifest:
        path = Path(run_dir) / MANIFEST
        if not path.is_file():
            raise ResumeError(f"{run_dir} is not a courier training run (no {MANIFEST})")
        return cls(**read_json(path))


def new_run_name() -> str:
    """``courier-YYYYmmdd-HHMMSS-xxxx`` (UTC): sortable and unique enough for one warehouse."""
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"courier-{now}-{secrets.token_hex(2)}"


def frozen_config_differences(original: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys (dotted) whose value differs in a way that
    breaks resuming: model, loss, core train keys."""
    diffs: list[str] = []
    for section in ("model", "loss"):
        for key in sorted(set(original.get(section, {})) | set(current.get(section, {}))):
            if section == "model" and key in _EXECUTION_MODEL_KEYS:
                continue
            a, b = original.get(section, {}).get(key), current.get(section, {}).get(key)
            if a != b:
                diffs.append(f"{section}.{key}: {a!r} -> {b!r}")
    for key in _FROZEN_TRAIN_KEYS:
        a, b = original.get("train", {}).get(key), current.get("train", {}).get(key)
        if a != b:
            diffs.append(f"train.{key}: {a!r} -> {b!r}")
    return diffs
