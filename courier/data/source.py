"""The loader interface training uses: a BatchSource per rank, built from a pinned snapshot.

Training code depends only on this module (and on ``epoch.py``'s accounting). ``kind`` picks the
reader behind it: ``"petastorm"`` (the default: Petastorm worker pool, JPEG decoding inside its
workers via a TransformSpec) or ``"pyarrow"`` (plain pyarrow reads and a thread
pool; a fallback and a cross-check). Both read the same files in the same
order and yield identical batches for the same (seed, epoch).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from courier.data.sharded import ShardedBatchSource
    from courier.data.snapshot import TrainingSnapshot

from courier.checks import choices, one_of
from courier.config import LoaderKind

KINDS = choices(LoaderKind)


class BatchSource(Protocol):
    """Batches of one rank, epoch by epoch."""

    def steps_per_epoch(self) -> int:
        """Batches every rank yields per epoch (the same on every rank)."""
        ...

    def batches(self, epoch: int, skip: int = 0) -> Generator[dict[str, torch.Tensor], None, None]:
        """The batches of ``epoch`` after the first ``skip``; deterministic for (seed, epoch).

        Raises EpochRowCountError when the rows read differ from the rows
        expected (before the epoch's last batch is handed out), and as soon as
        the reader ends without returning a file it should have.
        """
        ...


def make_batch_source(
    snapshot: TrainingSnapshot,
    rank: int,
    world_size: int,
    batch_size: int,
    seed: int,
    *,
    workers: int,
    kind: str,
    shuffle_window: int,
    group_by_query: bool,
) -> BatchSource:
    """The BatchSource of ``rank`` out of ``world_size`` over ``snapshot``.

    Every reader setting is required (training passes its ``train`` section's: ``loader_workers``,
    ``loader_kind``, ``shuffle_window``, ``batch_grouping``), so no default is written twice.
    ``kind``: one of ``LoaderKind``. ``workers``: reader threads decoding row groups.
    ``shuffle_window``: files (row groups) whose rows are shuffled together; with ``workers`` it
    sets the memory bound (see ``ShardedBatchSource.memory_estimate_bytes``). ``group_by_query``:
    batches drawn one query at a time within each window (hard in-batch negatives).
    """
    cls = LOADERS[one_of(LoaderKind, kind, "train.loader_kind")]()
    return cls(
        snapshot, rank, world_size, batch_size, seed, workers, shuffle_window, group_by_query
    )


def _petastorm() -> type[ShardedBatchSource]:
    from courier.data.petastorm_source import PetastormBatchSource

    return PetastormBatchSource


def _pyarrow() -> type[ShardedBatchSource]:
    from courier.data.arrow_source import PyArrowBatchSource

    return PyArrowBatchSource


# The one registry of train.loader_kind: adding a reader adds its LoaderKind member and an entry
# here (tests/unit/test_registries.py checks they agree). Each entry imports its reader when called,
# so `import courier.data` loads neither petastorm nor the readers' torch.
LOADERS: dict[LoaderKind, Callable[[], type[ShardedBatchSource]]] = {
    LoaderKind.PETASTORM: _petastorm,
    LoaderKind.PYARROW: _pyarrow,
}
