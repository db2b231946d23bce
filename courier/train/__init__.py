"""``courier train``: COURIER pre-training on a pinned Delta snapshot (method.md, appendix E).

Public API:
    run_training, check_train_config                -- the driver side (launch.py)
    TrainResult                                     -- what a run produced (outputs.py)
    TrainJob, TrainProcessResult                    -- driver -> processes -> driver (job.py)
    train_process                                   -- one training process (loop.py)
    evaluate_reconstruction                         -- held-out retrieval + health (evaluate.py)
    split_holdout                                   -- training / held-out files (holdout.py)
    resolve_precision, Precision                    -- mixed precision policy (precision.py)
    TrainingError, TrainingDataError, ResumeError, CheckpointError   -- errors.py

Imports are lazy: a torchrun worker importing ``courier.train.loop`` should not
pay for MLflow or Spark, nor should ``import courier.train``.
"""

from __future__ import annotations

from typing import Any

from courier.train.errors import CheckpointError, ResumeError, TrainingDataError, TrainingError

_LAZY = {
    "run_training": "courier.train.launch",
    "TrainResult": "courier.train.outputs",
    "TrainJob": "courier.train.job",
    "TrainProcessResult": "courier.train.job",
    "check_train_config": "courier.train.launch",
    "train_process": "courier.train.loop",
    "evaluate_reconstruction": "courier.train.evaluate",
    "split_holdout": "courier.train.holdout",
    "resolve_precision": "courier.train.precision",
    "Precision": "courier.train.precision",
}

__all__ = ["CheckpointError", "ResumeError", "TrainingDataError", "TrainingError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'courier.train' has no attribute {name!r}")
