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
from collections.abc import Generator, Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from petastorm.arrow_reader_worker import ArrowReaderWorker
from petastorm.fs_utils import get_filesystem_and_path_or_paths
from petastorm.reader import Reader, normalize_dataset_url_or_urls
from petastorm.transform import TransformSpec
from petastorm.workers_pool.thread_pool import ThreadPool

from courier.data.decode import DECODED_KEYS, RowDecoder
from courier.data.plan import EpochPlan
from courier.data.sharded import Columns, FileChunk, ShardedBatchSource
from courier.data.snapshot import LOADER_COLUMNS

SOURCE_FIELD = "source_file"  # "<path>#<row group>" of each decoded row


def _quiet_petastorm() -> None:
    # Petastorm 0.12 drives pyarrow's legacy dataset API,
    # which warns on every call (also in worker threads).
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\..*)?$")
    warnings.filterwarnings(
        "ignore", category=FutureWarning, message=r".*pyarrow\.localfs is deprecated.*"
    )


def _list_column(values: np.ndarray) -> pd.arrays.ArrowExtensionArray:
    """[n, ...] array -> an Arrow-backed column of n flat lists, built without copying per cell."""
    n = len(values)
    width = int(np.prod(values.shape[1:]))
    offsets = pa.array(
        np.arange(0, (n + 1) * width, width, dtype=np.int32) if n else np.zeros(1, np.int32)
    )
    return pd.arrays.ArrowExtensionArray(
        pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1)))
    )


class DecodeTransform:
    """The TransformSpec function: a row group's frame
    -> decoded batch columns (one flat list per row).

    Multi-dimensional fields travel flattened and Arrow-backed: Petastorm would
    otherwise ravel every cell and convert the frame back to Arrow element by
    element (slower than decoding the JPEGs). ``row_shapes`` restores them.
    """

    def __init__(self, decoder: RowDecoder) -> None:
        self.decoder = decoder
        d, s = decoder, decoder.image_size
        self.row_shapes: dict[str, tuple[int, ...]] = {
            "pv_images": (d.l_pv, 3, s, s),
            "pv_labels": (d.l_pv,),
            "click_images": (d.l_click, 3, s, s),
            "click_mask": (d.l_click,),
            "pv_item_ids": (d.l_pv,),
            "click_item_ids": (d.l_click,),
            "request_keys": (),
            "group_keys": (),
            "pv_image_keys": (d.l_pv,),
            "click_image_keys": (d.l_click,),
        }
        assert set(self.row_shapes) == set(DECODED_KEYS)

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        decoded = self.decoder.decode_frame(frame)
        out = pd.DataFrame({k: _list_column(v) if v.ndim > 1 else v for k, v in decoded.items()})
        out[SOURCE_FIELD] = ""  # stamped by _TaggingWorker after the transform
        return out

    def spec(self) -> TransformSpec:
        """edit_fields: each decoded field with its dtype and (flattened) per-row shape."""
        dtypes = {"pv_images": np.float32, "click_images": np.float32, "click_mask": np.bool_}
        fields = [
            (k, dtypes.get(k, np.int64), (int(np.prod(shape)),) if shape else (), False)
            for k, shape in self.row_shapes.items()
        ]
        fields.append((SOURCE_FIELD, np.str_, (), False))
        return TransformSpec(self, edit_fields=fields, selected_fields=[f[0] for f in fields])


class _TaggingWorker(ArrowReaderWorker):  # type: ignore[misc]  # petastorm has no types
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

    def _read(self, plan: EpochPlan) -> Generator[FileChunk, None, None]:
        _quiet_petastorm()
        uris = [self.snapshot.files[i] for i in plan.files]
        filesystem, paths = get_filesystem_and_path_or_paths(normalize_dataset_url_or_urls(uris))
        index_of = {path: i for i, path in enumerate(paths)}
        reader = Reader(
            filesystem,
            paths,
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
            yield from self._in_plan_order(
                reader,
                index_of,
                [self.snapshot.file_rows[i] for i in plan.files],
                self._transform.row_shapes,
            )
        finally:
            reader.stop()
            reader.join()

    @staticmethod
    def _in_plan_order(
        reader: Reader,
        index_of: dict[str, int],
        file_rows: list[int],
        row_shapes: dict[str, tuple[int, ...]],
    ) -> Iterator[FileChunk]:
        """Reorder row groups from completion order into plan order;
        a file is out once all its rows are in."""
        pending: dict[int, dict[int, Columns]] = {}  # file index -> row group -> columns
        rows_in: dict[int, int] = {}
        next_index = 0

        def take(index: int) -> FileChunk:
            groups = pending.pop(index)
            rows_in.pop(index, None)
            parts = [groups[rg] for rg in sorted(groups)]
            columns = (
                parts[0]
                if len(parts) == 1
                else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            )
            return FileChunk(index, columns)

        for result in reader:
            columns = result._asdict()
            tag = str(columns.pop(SOURCE_FIELD)[0])
            path, _, row_group = tag.rpartition("#")
            if path not in index_of:
                raise RuntimeError(
                    f"petastorm returned rows of {path}, which is not in this epoch's plan"
                )
            index = index_of[path]
            n = len(columns["request_keys"])
            shaped = {k: columns[k].reshape(n, *row_shapes[k]) for k in DECODED_KEYS}
            pending.setdefault(index, {})[int(row_group)] = shaped
            rows_in[index] = rows_in.get(index, 0) + n
            # A file longer than recorded is handed over at once so the row-count check fails fast.
            while next_index in pending and rows_in[next_index] >= file_rows[next_index]:
                yield take(next_index)
                next_index += 1
        # The reader is done: whatever is left
        # (files short of rows) goes out in order for the check.
        for index in sorted(pending):
            yield take(index)
