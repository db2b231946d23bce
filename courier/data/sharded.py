"""The reader-independent half of a BatchSource: plans, shuffle windows, batching, row-count checks.

A concrete reader only has to turn the files of an EpochPlan into decoded
``FileChunk``s, in plan order. Everything that decides *which rows land in
which batch* lives here, so two readers given the same snapshot and seed yield
the same batches.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Generator, Iterator
from contextlib import closing
from dataclasses import dataclass

import numpy as np
import torch

from courier.data.decode import BATCH_KEYS, RowDecoder
from courier.data.epoch import EpochRowCountError, EpochStats
from courier.data.plan import EpochPlan, assign_files, plan_epoch, rows_per_rank, steps_per_epoch
from courier.data.snapshot import TrainingSnapshot

log = logging.getLogger(__name__)

Columns = dict[str, np.ndarray]  # batch key -> [rows, ...]


@dataclass
class FileChunk:
    """The decoded rows of one planned file."""

    index: int  # position in EpochPlan.files
    columns: Columns

    @property
    def rows(self) -> int:
        return len(self.columns["request_keys"])


def _take(columns: Columns, idx: np.ndarray) -> Columns:
    return {k: v[idx] for k, v in columns.items()}


def _concat(parts: list[Columns]) -> Columns:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class _Window:
    """The rows of a few files, addressed 0..n-1 across them
    without concatenating (a copy of MBs of pixels)."""

    def __init__(self, parts: list[Columns]) -> None:
        self.parts = parts
        self.ends = np.cumsum([len(p["request_keys"]) for p in parts])
        self.rows = int(self.ends[-1]) if len(parts) else 0

    def take(self, idx: np.ndarray) -> Columns:
        """Rows ``idx`` (in that order) as fresh arrays."""
        if len(self.parts) == 1:
            return _take(self.parts[0], idx)
        part = np.searchsorted(self.ends, idx, side="right")
        local = idx - np.concatenate([[0], self.ends[:-1]])[part]
        first = self.parts[0]
        out = {k: np.empty((len(idx), *v.shape[1:]), dtype=v.dtype) for k, v in first.items()}
        # Row by row: one memcpy per row and key, no fancy-index temporaries.
        for j, (p, r) in enumerate(zip(part.tolist(), local.tolist(), strict=True)):
            source = self.parts[p]
            for k, column in out.items():
                column[j] = source[k][r]
        return out


def _to_tensors(columns: Columns) -> dict[str, torch.Tensor]:
    # Fancy indexing and concatenation return fresh contiguous arrays: zero-copy into torch.
    return {k: torch.from_numpy(np.ascontiguousarray(columns[k])) for k in BATCH_KEYS}


class ShardedBatchSource(ABC):
    """A BatchSource over one rank's files of a snapshot; subclasses supply the reader."""

    kind = "abstract"

    def __init__(
        self,
        snapshot: TrainingSnapshot,
        rank: int,
        world_size: int,
        batch_size: int,
        seed: int,
        workers: int,
        shuffle_window: int,
        group_by_query: bool,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        if batch_size < 1 or workers < 1 or shuffle_window < 1:
            raise ValueError(
                f"batch_size, workers and shuffle_window must be >= 1, got "
                f"{batch_size}, {workers}, {shuffle_window}"
            )
        self.snapshot = snapshot
        self.rank, self.world_size = rank, world_size
        self.batch_size, self.seed = batch_size, seed
        self.workers, self.shuffle_window = workers, shuffle_window
        self.group_by_query = group_by_query
        self.assignment = assign_files(snapshot.file_rows, world_size)
        self.rank_rows = rows_per_rank(snapshot.file_rows, self.assignment)
        self._steps = steps_per_epoch(snapshot.file_rows, self.assignment, batch_size)
        if self._steps == 0:
            raise ValueError(
                f"{snapshot.table}@{snapshot.version}: {snapshot.total_rows} rows in "
                f"{len(snapshot.files)} files give rank rows {list(self.rank_rows)}; not every one "
                f"of {world_size} ranks can fill a batch of {batch_size}"
            )
        self.decoder = RowDecoder(snapshot.l_pv, snapshot.l_click, snapshot.image_size)
        self.last_epoch_stats: EpochStats | None = None
        log.info(
            "%s loader rank %d/%d: %d files, %d rows, %d steps of %d, ~%.0f MiB decoded in flight",
            self.kind,
            rank,
            world_size,
            len(self.assignment[rank]),
            self.rank_rows[rank],
            self._steps,
            batch_size,
            self.memory_estimate_bytes() / 2**20,
        )

    def steps_per_epoch(self) -> int:
        """Batches per epoch, the same on every rank."""
        return self._steps

    def memory_estimate_bytes(self) -> int:
        """Rough upper bound of decoded bytes held at once:
        in-flight files, the shuffle window, two batches."""
        s = self.snapshot
        row_bytes = (s.l_pv + s.l_click) * 3 * s.image_size**2 * 4
        max_file_rows = max(s.file_rows) if s.file_rows else 0
        files = self.in_flight_files() + self.shuffle_window
        return (files * max_file_rows + 2 * self.batch_size) * row_bytes

    def in_flight_files(self) -> int:
        """Decoded files the reader may hold before the main thread takes them."""
        return self.workers + 2

    def batches(self, epoch: int, skip: int = 0) -> Generator[dict[str, torch.Tensor], None, None]:
        """The batches of ``epoch`` from batch ``skip`` on (see BatchSource.batches)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        plan = plan_epoch(
            self.snapshot.file_rows,
            self.assignment[self.rank],
            seed=self.seed,
            epoch=epoch,
            rank=self.rank,
            batch_size=self.batch_size,
            steps=self._steps,
            skip=skip,
            window=self.shuffle_window,
        )
        return self._batches(plan)

    def _batches(self, plan: EpochPlan) -> Generator[dict[str, torch.Tensor], None, None]:
        if plan.batches == 0:  # resumed exactly at the end of the epoch: nothing left to read
            return
        with closing(self._read(plan)) as chunks:
            yield from self._stream(plan, chunks)

    @abstractmethod
    def _read(self, plan: EpochPlan) -> Generator[FileChunk, None, None]:
        """Decoded chunks of ``plan.files``, in plan order
        (a file that yields no rows may be absent).

        Must release its reader when closed early (GeneratorExit).
        """

    # -- batching ------------------------------------------------------------------------------

    def _cut(self, window: _Window, order: np.ndarray, carry: list[Columns]) -> Iterator[Columns]:
        """Full batches of (carry, then ``window`` rows in ``order``);
        leaves the tail in ``carry``."""
        b = self.batch_size
        have = sum(len(c["request_keys"]) for c in carry)
        start = 0
        if carry:
            need = b - have
            carry.append(window.take(order[:need]))
            start = min(need, len(order))
            if have + start < b:
                return
            batch = _concat(carry)
            carry.clear()
            yield batch
        while start + b <= len(order):
            yield window.take(order[start : start + b])
            start += b
        if start < len(order):
            carry.append(window.take(order[start:]))

    def _window_order(self, plan: EpochPlan, w: int, parts: list[Columns], rows: int) -> np.ndarray:
        """The seeded order of window ``w``'s rows: a permutation, or with ``group_by_query`` one
        query after another (queries in a seeded order, rows shuffled within each).

        Grouped, consecutive batches mostly hold page views of one query, so the in-batch
        negatives share its category; a query's last rows share a batch with the next query's.
        Either way the stream is a permutation of the window, so resuming after k batches
        (rows [0, k*B) of the stream) works unchanged.
        """
        generator = plan.window_rng(self.seed, w)
        order = generator.permutation(rows)
        if not self.group_by_query:
            return order
        keys = np.concatenate([p["group_keys"] for p in parts])[order]
        queries = np.unique(keys)  # sorted: the seeded shuffle below is the only source of order
        rank_of = dict(
            zip(queries.tolist(), generator.permutation(len(queries)).tolist(), strict=True)
        )
        ranks = np.fromiter((rank_of[k] for k in keys.tolist()), dtype=np.int64, count=len(keys))
        return order[np.argsort(ranks, kind="stable")]

    def _error(self, plan: EpochPlan, expected: int, read: int, detail: str) -> EpochRowCountError:
        s = self.snapshot
        message = (
            f"{s.table} version {s.version}, rank {self.rank}/{self.world_size}, "
            f"epoch {plan.epoch}: expected {expected} rows, read {read}: {detail}"
        )
        return EpochRowCountError(
            message,
            table=s.table,
            version=s.version,
            rank=self.rank,
            epoch=plan.epoch,
            expected=expected,
            read=read,
        )

    def _stream(
        self, plan: EpochPlan, chunks: Iterator[FileChunk]
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Windows of chunks -> shuffled rows -> batches,
        checking every file's row count on arrival.

        The last batch is held back until the whole plan has been read and
        counted, so a short or long epoch raises before training sees its last
        step, however the caller iterates.
        """
        file_rows = [self.snapshot.file_rows[i] for i in plan.files]
        expected = sum(file_rows)
        read = 0
        emitted = 0
        held: dict[str, torch.Tensor] | None = None
        carry: list[Columns] = []  # rows of the stream not yet in a batch (fewer than batch_size)
        position = 0  # next index in plan.files
        for w, n_files in enumerate(plan.windows):
            parts: list[Columns] = []
            for _ in range(n_files):
                chunk = next(chunks, None)
                uri = self.snapshot.files[plan.files[position]]
                if chunk is None or chunk.index != position:
                    ended = " (the reader ended)" if chunk is None else ""
                    raise self._error(
                        plan,
                        expected,
                        read,
                        f"the reader returned nothing for file {uri}, "
                        f"{file_rows[position]} rows expected{ended}",
                    )
                if chunk.rows != file_rows[position]:
                    raise self._error(
                        plan,
                        expected,
                        read + chunk.rows,
                        f"file {uri} has {chunk.rows} rows, the snapshot records "
                        f"{file_rows[position]}",
                    )
                read += chunk.rows
                position += 1
                parts.append(chunk.columns)
            if held is not None:
                continue  # every batch is out: the rest of the epoch is only read and counted
            window = _Window(parts)
            order = self._window_order(plan, w, parts, window.rows)
            if w == 0:
                order = order[plan.skip_rows :]
            for batch in self._cut(window, order, carry):
                if emitted + 1 < plan.batches:
                    emitted += 1
                    yield _to_tensors(batch)
                else:
                    held = _to_tensors(batch)
                    break

        extra = next(chunks, None)
        if extra is not None:
            raise self._error(
                plan, expected, read + extra.rows, "the reader returned more files than planned"
            )
        if read != expected:
            raise self._error(plan, expected, read, "row counts differ")
        if held is None:
            raise self._error(
                plan, expected, read, f"only {emitted} of {plan.batches} batches could be filled"
            )
        in_batches = (emitted + 1) * self.batch_size
        stats = EpochStats(
            epoch=plan.epoch,
            rank=self.rank,
            files=len(plan.files),
            rows_expected=expected,
            rows_read=read,
            rows_skipped=plan.skip_rows,
            rows_in_batches=in_batches,
            rows_left_over=read - plan.skip_rows - in_batches,
            batches=emitted + 1,
        )
        self.last_epoch_stats = stats
        log.info(
            "epoch %d rank %d: read %d rows from %d files (as recorded), %d batches, %d rows left "
            "over%s",
            plan.epoch,
            self.rank,
            read,
            len(plan.files),
            stats.batches,
            stats.rows_left_over,
            f", resumed after {plan.skipped_batches} batches" if plan.skipped_batches else "",
        )
        yield held
