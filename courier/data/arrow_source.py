"""BatchSource on plain pyarrow: a thread pool reads and decodes the planned files, in plan order.

The second implementation behind the BatchSource interface: no Petastorm, the
same plan, decoder and batching, so it yields exactly the batches the
Petastorm loader yields. Useful as a fallback and to cross-check Petastorm.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator
from concurrent.futures import Future, ThreadPoolExecutor

import pyarrow.parquet as pq

from courier.data.fs import filesystem_and_path
from courier.data.plan import EpochPlan
from courier.data.sharded import FileChunk, ShardedBatchSource
from courier.data.snapshot import LOADER_COLUMNS


class PyArrowBatchSource(ShardedBatchSource):
    """Reads whole files with pyarrow and decodes them on ``workers`` threads."""

    kind = "pyarrow"

    def _load(self, index: int, uri: str) -> FileChunk:
        fs, path = filesystem_and_path(uri)
        with fs.open_input_file(path) as handle:
            table = pq.ParquetFile(handle).read(columns=list(LOADER_COLUMNS))
        return FileChunk(index, self.decoder.decode_table(table))

    def _read(self, plan: EpochPlan) -> Generator[FileChunk, None, None]:
        uris = [self.snapshot.files[i] for i in plan.files]
        with ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="courier-loader"
        ) as pool:
            futures: deque[Future[FileChunk]] = deque()
            todo = iter(enumerate(uris))

            def submit_next() -> None:
                for index, uri in todo:
                    futures.append(pool.submit(self._load, index, uri))
                    return

            try:
                for _ in range(self.in_flight_files()):
                    submit_next()
                while futures:
                    chunk = futures.popleft().result()  # plan order, whatever finished first
                    submit_next()
                    yield chunk
            finally:
                for future in futures:
                    future.cancel()
