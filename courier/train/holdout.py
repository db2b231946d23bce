"""Split a pinned snapshot into training files and held-out files.

Held out by whole files, the ones with the greatest paths: the table is
partitioned by ``dt``, so those are the latest days, and evaluating on them is
evaluating on the future of the training rows (no row of a held-out file is
ever trained on). Both parts keep the snapshot's table and Delta version.
"""

from __future__ import annotations

import dataclasses
import logging
import math

from courier.data.snapshot import TrainingSnapshot

log = logging.getLogger(__name__)


def _subset(snapshot: TrainingSnapshot, keep: list[int]) -> TrainingSnapshot:
    files = tuple(snapshot.files[i] for i in keep)
    rows = tuple(snapshot.file_rows[i] for i in keep)
    return dataclasses.replace(snapshot, files=files, file_rows=rows, total_rows=sum(rows))


def split_holdout(
    snapshot: TrainingSnapshot, fraction: float
) -> tuple[TrainingSnapshot, TrainingSnapshot | None]:
    """(training part, held-out part or None).

    ``round(fraction * n_files)`` files are held out, at least one when
    ``fraction > 0``, and always at least one left for training; a snapshot of a
    single file is not split (logged).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"train.holdout_fraction must be in [0, 1), got {fraction}")
    n = len(snapshot.files)
    if fraction == 0.0:
        return snapshot, None
    if n < 2:
        log.warning(
            "snapshot of %s v%d has %d file(s): nothing held out, no evaluation",
            snapshot.table,
            snapshot.version,
            n,
        )
        return snapshot, None
    n_hold = min(n - 1, max(1, math.floor(fraction * n + 0.5)))
    by_path = sorted(range(n), key=lambda i: snapshot.files[i])
    held = set(by_path[-n_hold:])
    train = _subset(snapshot, [i for i in range(n) if i not in held])
    holdout = _subset(snapshot, [i for i in range(n) if i in held])
    return train, holdout
