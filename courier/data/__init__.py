"""Training data: pin a Delta version of courier_training_rows and stream decoded batches from it.

Public API:
    TrainingSnapshot, pin_training_snapshot, SnapshotError   -- the pinned version (snapshot.py)
    BatchSource, make_batch_source                           -- the loader interface (source.py)
    EpochRowCountError, EpochStats                           -- what an epoch read (epoch.py)
    IMAGENET_MEAN, IMAGENET_STD, RowDecoder, decode_jpeg     -- decoding (decode.py)

See docs/TRAINING_DATA.md.
"""

from __future__ import annotations

from courier.data.decode import (
    BATCH_KEYS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DecodeError,
    RowDecoder,
    decode_jpeg,
    decode_jpegs,
)
from courier.data.epoch import EpochRowCountError, EpochStats
from courier.data.snapshot import SnapshotError, TrainingSnapshot, pin_training_snapshot
from courier.data.source import BatchSource, make_batch_source

__all__ = [
    "BATCH_KEYS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BatchSource",
    "DecodeError",
    "EpochRowCountError",
    "EpochStats",
    "RowDecoder",
    "SnapshotError",
    "TrainingSnapshot",
    "decode_jpeg",
    "decode_jpegs",
    "make_batch_source",
    "pin_training_snapshot",
]
