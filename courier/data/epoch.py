"""What one rank's pass over an epoch read, and the error when it is not what the snapshot promised.

Below ``source.py`` (the interface) and ``sharded.py`` (the readers behind it), which both use them.
"""

from __future__ import annotations

from dataclasses import dataclass


class EpochRowCountError(RuntimeError):
    """An epoch read a different number of rows than the
    snapshot promised (a short, long or empty epoch)."""

    def __init__(
        self,
        message: str,
        *,
        table: str,
        version: int,
        rank: int,
        epoch: int,
        expected: int,
        read: int,
    ) -> None:
        super().__init__(message)
        self.table, self.version, self.rank, self.epoch = table, version, rank, epoch
        self.expected, self.read = expected, read


@dataclass(frozen=True)
class EpochStats:
    """What one rank's pass over an epoch read; kept as ``source.last_epoch_stats`` and logged."""

    epoch: int
    rank: int
    files: int  # files read (all of the rank's files, or those from the resume point on)
    rows_expected: int  # rows the snapshot records for those files
    rows_read: int  # rows the reader returned (== rows_expected, or EpochRowCountError)
    rows_skipped: int  # rows before the resume point in the first window read (skip > 0)
    rows_in_batches: int  # rows yielded: batches * batch_size
    rows_left_over: int  # rows read beyond the last full batch (not trained on this epoch)
    batches: int
