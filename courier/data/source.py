"""The loader interface training uses: a BatchSource per rank, built from a pinned snapshot.

Training code depends only on this module. ``kind`` picks the reader behind it:
``"petastorm"`` (the default: Petastorm worker pool, JPEG decoding inside its
workers via a TransformSpec) or ``"pyarrow"`` (plain pyarrow reads and a thread
pool; a fallback and a cross-check). Both read the same files in the same
order and yield identical batches for the same (seed, epoch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Protocol

if TYPE_CHECKING:
    import torch

    from courier.data.snapshot import TrainingSnapshot

KINDS = ("petastorm", "pyarrow")


class EpochRowCountError(RuntimeError):
    """An epoch read a different number of rows than the snapshot promised (a short, long or empty epoch)."""

    def __init__(self, message: str, *, table: str, version: int, rank: int, epoch: int,
                 expected: int, read: int) -> None:
        super().__init__(message)
        self.table, self.version, self.rank, self.epoch = table, version, rank, epoch
        self.expected, self.read = expected, read


@dataclass(frozen=True)
class EpochStats:
    """What one rank's pass over an epoch read; kept as ``source.last_epoch_stats`` and logged."""

    epoch: int
    rank: int
    files: int              # files read (all of the rank's files, or those from the resume point on)
    rows_expected: int      # rows the snapshot records for those files
    rows_read: int          # rows the reader returned (== rows_expected, or EpochRowCountError)
    rows_skipped: int       # rows before the resume point in the first window read (skip > 0)
    rows_in_batches: int    # rows yielded: batches * batch_size
    rows_left_over: int     # rows read beyond the last full batch (not trained on this epoch)
    batches: int


class BatchSource(Protocol):
    """Batches of one rank, epoch by epoch."""

    def steps_per_epoch(self) -> int:
        """Batches every rank yields per epoch (the same on every rank)."""
        ...

    def batches(self, epoch: int, skip: int = 0) -> Iterator[dict[str, "torch.Tensor"]]:
        """The batches of ``epoch`` after the first ``skip``; deterministic for (seed, epoch).

        Raises EpochRowCountError when the rows read differ from the rows
        expected (before the epoch's last batch is handed out), and as soon as
        the reader ends without returning a file it should have.
        """
        ...


def make_batch_source(
    snapshot: "TrainingSnapshot",
    rank: int,
    world_size: int,
    batch_size: int,
    seed: int,
    workers: int = 1,
    kind: str = "petastorm",
    shuffle_window: int = 4,
    group_by_query: bool = False,
) -> BatchSource:
    """The BatchSource of ``rank`` out of ``world_size`` over ``snapshot``.

    ``workers``: reader threads decoding row groups. ``shuffle_window``: files
    (row groups) whose rows are shuffled together; with ``workers`` it sets the
    memory bound (see ``ShardedBatchSource.memory_estimate_bytes``). ``group_by_query``:
    batches drawn one query at a time within each window (hard in-batch negatives).
    """
    if kind == "petastorm":
        from courier.data.petastorm_source import PetastormBatchSource

        return PetastormBatchSource(snapshot, rank, world_size, batch_size, seed, workers, shuffle_window,
                                    group_by_query)
    if kind == "pyarrow":
        from courier.data.arrow_source import PyArrowBatchSource

        return PyArrowBatchSource(snapshot, rank, world_size, batch_size, seed, workers, shuffle_window,
                                  group_by_query)
    raise ValueError(f"loader kind must be one of {KINDS}, got {kind!r}")
