"""BatchSource on Petastorm: a worker pool reads the planned files and decodes JPEGs in its workers.

One Petastorm ``Reader`` per epoch (and rank) reads exactly the files of the
EpochPlan, in plan order (``shuffle_row_groups=False``: the plan already holds
the seeded order). The JPEG decoding and normalisation run inside Petastorm's
workers through a ``TransformSpec``; its ``edit_fields`` declare the decoded
shapes so Petastorm reassembles the batch arrays.

Order: a thread pool returns row groups in completion order. Each decoded row
group is stamped with its source file and row group by a small worker subclass,
and the main thread puts results back into plan order before batching, so the
batches are the same for any number of workers. The reorder buffer stays small
because Petastorm ventilates only ``workers + 2`` row groups ahead of what the
main thread has taken.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
from petastorm.arrow_reader_worker import ArrowReaderWorker
from petastorm.fs_utils import get_filesystem_and_path_or_paths
from petastorm.reader import Reader, normalize_dataset_url_or_urls
from petastorm.transform import TransformSpec
from petastorm.workers_pool.thread_pool import ThreadPool

from courier.data.decode import BATCH_KEYS, RowDecoder
from courier.data.plan import EpochPlan
from courier.data.sharded import Columns, FileChunk, ShardedBatchSource
from courier.data.snapshot import LOADER_COLUMNS

SOURCE_FIELD = "source_file"  # "<path>#<row group>" of each decoded row


def _quiet_petastorm() -> None:
    # Petastorm 0.12 drives pyarrow's legacy dataset API, which warns on every call (also in worker threads).
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\..*)?$")
    warnings.filterwarnings("ignore", category=FutureWarning, message=r".*pyarrow\.localfs is deprecated.*")


class DecodeTransform:
    """The TransformSpec function: a row group's frame -> decoded batch columns (one cell per row)."""

    def __init__(self, decoder: RowDecoder) -> None:
        self.decoder = decoder

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        decoded = self.decoder.decode_frame(frame)
        # Petastorm wants multi-dimensional fields as one C-contiguous array per row (it ravels and reshapes).
        out = pd.DataFrame({k: list(v) if v.ndim > 1 else v for k, v in decoded.items()})
        out[SOURCE_FIELD] = ""  # stamped by _TaggingWorker after the transform
        return out

    def spec(self) -> TransformSpec:
        d = self.decoder
        s = d.image_size
        fields = [
            ("pv_images", np.float32, (d.l_pv, 3, s, s), False),
            ("pv_labels", np.int64, (d.l_pv,), False),
            ("click_images", np.float32, (d.l_click, 3, s, s), False),
            ("click_mask", np.bool_, (d.l_click,), False),
            ("pv_item_ids", np.int64, (d.l_pv,), False),
            ("click_item_ids", np.int64, (d.l_click,), False),
            ("request_keys", np.int64, (), False),
            (SOURCE_FIELD, np.str_, (), False),
        ]
        assert {f[0] for f in fields} == {*BATCH_KEYS, SOURCE_FIELD}
        return TransformSpec(self, edit_fields=fields, selected_fields=[f[0] for f in fields])


class _TaggingWorker(ArrowReaderWorker):
    """Petastorm's Arrow worker, stamping each decoded row group with where it came from."""

    def _load_rows(self, pq_file: Any, piece: Any, shuffle_row_drop_range: Any) -> pa.Table:
        table = super()._load_rows(pq_file, piece, shuffle_row_drop_range)
        tag = pa.array([f"{piece.path}#{piece.row_group}"] * table.num_rows, pa.string())
        return table.set_column(table.schema.get_field_index(SOURCE_FIELD), SOURCE_FIELD, tag)


class PetastormBatchSource(ShardedBatchSource):
    """The default loader: Petastorm thread pool, decoding in its workers."""

    kind = "petastorm"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._transform = DecodeTransform(self.decoder)

    def _read(self, plan: EpochPlan) -> Iterator[FileChunk]:
        _quiet_petastorm()
        uris = [self.snapshot.files[i] for i in plan.files]
        filesystem, paths = get_filesystem_and_path_or_paths(normalize_dataset_url_or_urls(uris))
        index_of = {path: i for i, path in enumerate(paths)}
        reader = Reader(
            filesystem, paths,
            schema_fields=[f"^{c}$" for c in LOADER_COLUMNS],
            worker_class=_TaggingWorker,
            reader_pool=ThreadPool(self.workers, results_queue_size=self.workers + 2),
            shuffle_row_groups=False,  # the plan's order, which is already seeded per epoch
            shuffle_rows=False,
            num_epochs=1,
            transform_spec=self._transform.spec(),
            is_batched_reader=True,
        )
        try:
            yield from self._in_plan_order(reader, index_of, [self.snapshot.file_rows[i] for i in plan.files])
        finally:
            reader.stop()
            reader.join()

    @staticmethod
    def _in_plan_order(reader: Reader, index_of: dict[str, int], file_rows: list[int]) -> Iterator[FileChunk]:
        """Reorder row groups from completion order into plan order; a file is out once all its rows are in."""
        pending: dict[int, dict[int, Columns]] = {}  # file index -> row group -> columns
        rows_in: dict[int, int] = {}
        next_index = 0

        def take(index: int) -> FileChunk:
            groups = pending.pop(index)
            rows_in.pop(index, None)
            parts = [groups[rg] for rg in sorted(groups)]
            columns = parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            return FileChunk(index, columns)

        for result in reader:
            columns = result._asdict()
            tag = str(columns.pop(SOURCE_FIELD)[0])
            path, _, row_group = tag.rpartition("#")
            if path not in index_of:
                raise RuntimeError(f"petastorm returned rows of {path}, which is not in this epoch's plan")
            index = index_of[path]
            pending.setdefault(index, {})[int(row_group)] = {k: columns[k] for k in BATCH_KEYS}
            rows_in[index] = rows_in.get(index, 0) + len(columns["request_keys"])
            # A file longer than recorded is handed over at once so the row-count check fails fast.
            while next_index in pending and rows_in[next_index] >= file_rows[next_index]:
                yield take(next_index)
                next_index += 1
        # The reader is done: whatever is left (files short of rows) goes out in order for the check.
        for index in sorted(pending):
            yield take(index)
