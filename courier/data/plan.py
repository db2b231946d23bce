"""Which files each rank reads, in which order, and how many steps an epoch has.

Everything here is a pure function of the snapshot's ``file_rows`` and
(seed, epoch, rank): every rank computes the same plan without talking to the
others, and a resumed run recomputes exactly the plan it was interrupted in.

DDP needs every rank to run the same number of steps (or a collective hangs),
so files are dealt to ranks balanced by rows (the writer puts one row group in
each file, so a file is the unit a reader fetches and decodes) and
``steps_per_epoch = min over ranks of rows_r // batch_size``.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_MASK64 = (1 << 64) - 1


def assign_files(file_rows: Sequence[int], world_size: int) -> tuple[tuple[int, ...], ...]:
    """File indices per rank, balanced by rows; deterministic.

    Largest files first, each to the rank with the fewest rows so far (ties:
    lowest rank), so ranks differ by at most one file's rows. Each rank's
    files are returned in snapshot order; the epoch shuffles them.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    heap = [(0, rank) for rank in range(world_size)]
    per_rank: list[list[int]] = [[] for _ in range(world_size)]
    for index in sorted(range(len(file_rows)), key=lambda i: (-file_rows[i], i)):
        if file_rows[index] == 0:
            continue
        rows, rank = heapq.heappop(heap)
        per_rank[rank].append(index)
        heapq.heappush(heap, (rows + file_rows[index], rank))
    return tuple(tuple(sorted(files)) for files in per_rank)


def rows_per_rank(file_rows: Sequence[int], assignment: Sequence[Sequence[int]]) -> tuple[int, ...]:
    return tuple(sum(file_rows[i] for i in files) for files in assignment)


def steps_per_epoch(
    file_rows: Sequence[int], assignment: Sequence[Sequence[int]], batch_size: int
) -> int:
    """Full batches every rank can fill: min over ranks of rows_r // batch_size."""
    return min(rows // batch_size for rows in rows_per_rank(file_rows, assignment))


def rng(seed: int, *key: int) -> np.random.Generator:
    """A generator for (seed, *key): independent streams per epoch, rank and window."""
    return np.random.default_rng(
        np.random.SeedSequence([seed & _MASK64, *(k & _MASK64 for k in key)])
    )


# Stream purposes in rng keys.
_FILE_ORDER, _WINDOW_ORDER = 0, 1


@dataclass(frozen=True)
class EpochPlan:
    """What one rank reads in one epoch (from the resume point on)."""

    epoch: int
    rank: int
    files: tuple[int, ...]  # snapshot file indices to read, in read order
    windows: tuple[int, ...]  # files per shuffle window, in order; sums to len(files)
    first_window: int  # index of windows[0] in the whole epoch (keys its shuffle)
    skip_rows: int  # rows of the first window's shuffled order already consumed (resume)
    batches: int  # batches to yield
    skipped_batches: int  # batches of this epoch before the resume point

    def window_rng(self, seed: int, window: int) -> np.random.Generator:
        """The row shuffle of ``windows[window]``
        (a function of the window's place in the whole epoch)."""
        return rng(seed, self.epoch, self.rank, _WINDOW_ORDER, self.first_window + window)


def plan_epoch(
    file_rows: Sequence[int],
    rank_files: Sequence[int],
    *,
    seed: int,
    epoch: int,
    rank: int,
    batch_size: int,
    steps: int,
    skip: int,
    window: int,
) -> EpochPlan:
    """The read plan of ``rank`` for ``epoch``, resuming after ``skip`` batches.

    Rows stream as: files in a seeded order, grouped into windows of ``window``
    files, each window's rows in a seeded permutation. Batch k is rows
    [k*B, (k+1)*B) of that stream, so resuming at batch ``skip`` starts at the
    window holding row skip*B and never reads the windows before it.
    """
    if not 0 <= skip <= steps:
        raise ValueError(f"skip must be in 0..{steps} (steps per epoch), got {skip}")
    if window < 1:
        raise ValueError(f"shuffle window must be >= 1 file, got {window}")
    order = [
        rank_files[i] for i in rng(seed, epoch, rank, _FILE_ORDER).permutation(len(rank_files))
    ]
    groups = [order[i : i + window] for i in range(0, len(order), window)]
    if skip == steps:
        return EpochPlan(epoch, rank, (), (), len(groups), 0, 0, skip)
    start_row = skip * batch_size
    seen = 0
    for first, group in enumerate(groups):  # noqa: B007 - `first` is read after the break
        rows = sum(file_rows[i] for i in group)
        if seen + rows > start_row:
            break
        seen += rows
    files = tuple(i for group in groups[first:] for i in group)
    return EpochPlan(
        epoch=epoch,
        rank=rank,
        files=files,
        windows=tuple(len(g) for g in groups[first:]),
        first_window=first,
        skip_rows=start_row - seen,
        batches=steps - skip,
        skipped_batches=skip,
    )
