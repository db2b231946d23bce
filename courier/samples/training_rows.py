"""courier_training_rows: each kept sample with the JPEG of every item it names.

``pv_images[j]`` is the image of ``pv_item_ids[j]`` and ``click_images[k]`` of
``click_item_ids[k]``; padding slots (item -1) hold an empty binary. The
training reader then streams rows without lookups.

Why an Arrow lookup and not a SQL join: in SQL, attaching ten images per row
means explode -> join -> regroup, and the regrouping (``collect_list``) falls
back to a sort-based aggregation over the image bytes. At 10M impressions that
spilled 20 GB and took 112 s on local[2]. Here the images of the items the
samples reference are collected once (a few MB: distinct items, not rows),
broadcast, and attached batch by batch in ``mapInArrow`` with a vectorised
``searchsorted`` + ``take``: no shuffle and no sort of image bytes.

Limit: the driver holds, and every executor receives, the JPEGs of the items
named in the date range (~30 MB for the 20,000 items of the 10M-impression
shop at 64 px). A shop with millions of distinct items at 224 px would need
several GB: build such ranges a few days at a time.

The id-only samples are range-partitioned and sorted by (dt, request_id)
before the images are attached, so each task writes one or two dt partitions,
in request order (the same input always gives the same files).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark import Broadcast
from pyspark.sql import DataFrame, functions as F, types as T

SAMPLE_COLUMNS = (
    "request_id",
    "user_id",
    "event_ts",
    "query",
    "pv_item_ids",
    "pv_labels",
    "click_item_ids",
)
IMAGE_COLUMNS = (("pv_item_ids", "pv_images"), ("click_item_ids", "click_images"))
PADDING_ITEM = -1


class MissingImageError(RuntimeError):
    """A sample names an item that has no row in item_images."""


def referenced_images(
    samples: DataFrame, item_images: DataFrame, item_images_name: str
) -> pa.Table:
    """(item_id, jpeg) of every item the samples name, sorted by item_id.

    Raises MissingImageError naming the items when one has no image: the
    impression checks reject such items, so this means item_images changed
    under the build.
    """
    ids = (
        samples.select(F.explode(F.concat("pv_item_ids", "click_item_ids")).alias("item_id"))
        .where(F.col("item_id") != PADDING_ITEM)
        .distinct()
    )
    table = ids.join(item_images.select("item_id", "jpeg"), "item_id", "left").toArrow()
    missing = table.filter(pc.is_null(table.column("jpeg")))
    if missing.num_rows:
        examples = sorted(missing.column("item_id").to_pylist())[:10]
        raise MissingImageError(
            f"{missing.num_rows} items named by the samples have no image in {item_images_name} "
            f"(e.g. item_id {examples}): was it rewritten during the build?"
        )
    return table.sort_by("item_id")


@dataclass(frozen=True)
class ImageIndex:
    """Sorted item ids and their JPEGs, with one empty JPEG after the last for padding slots."""

    keys: np.ndarray  # [n_items] int64, sorted
    jpegs: pa.BinaryArray  # [n_items + 1]; jpegs[n_items] == b""

    @classmethod
    def from_table(cls, table: pa.Table) -> ImageIndex:
        """From (item_id, jpeg) rows sorted by item_id, as ``referenced_images`` returns them."""
        jpegs = pa.concat_arrays([*table.column("jpeg").chunks, pa.array([b""], pa.binary())])
        return cls(table.column("item_id").to_numpy().astype(np.int64, copy=False), jpegs)

    def lookup(self, item_ids: pa.ListArray) -> pa.ListArray:
        """The images of ``item_ids`` (list<int64>,
        [rows][slots]) as list<binary> of the same shape.

        A padding id (-1) gets an empty binary; an id not in the index raises.
        """
        # [rows + 1], from 0 even for a slice
        offsets = pc.subtract(item_ids.offsets, item_ids.offsets[0])
        flat = item_ids.flatten().to_numpy(zero_copy_only=False)  # [rows * slots] int64
        n_items = len(self.keys)
        position = np.minimum(np.searchsorted(self.keys, flat), max(n_items - 1, 0))
        padding = flat == PADDING_ITEM
        found = self.keys[position] == flat if n_items else np.zeros(len(flat), dtype=bool)
        if not np.all(found | padding):
            unknown = sorted(set(flat[~(found | padding)].tolist()))[:10]
            raise MissingImageError(f"no image was collected for item_id {unknown}")
        index = np.where(padding, n_items, position)
        return pa.ListArray.from_arrays(offsets, self.jpegs.take(pa.array(index)))


class ImageAttacher:
    """The ``mapInArrow`` function: batches of samples -> the same rows with their images.

    Holds only the broadcast handle, so it pickles small; each task builds the
    index once.
    """

    def __init__(self, images: Broadcast[pa.Table], output_names: list[str]) -> None:
        self.images = images
        self.output_names = output_names

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        index = ImageIndex.from_table(self.images.value)
        for batch in batches:
            columns = {name: batch.column(name) for name in batch.schema.names}
            for ids_column, images_column in IMAGE_COLUMNS:
                columns[images_column] = index.lookup(columns[ids_column])
            yield pa.RecordBatch.from_arrays(
                [columns[n] for n in self.output_names], names=self.output_names
            )


@dataclass
class TrainingRows:
    """The rows to write, and what writing them needs."""

    rows: DataFrame  # courier_training_rows columns, ordered by (dt, request_id) within each task
    # (item_id, jpeg) table the rows were built from; destroy once written
    images: Broadcast[pa.Table]
    arrow_batch_rows: int  # rows per Arrow batch that keep one batch near ARROW_BATCH_BYTES

    def writer_settings(self, rows_per_row_group: int, n_dates: int) -> dict[str, str]:
        """Spark settings to write ``rows`` (bench/training_rows_write.py varies them).

        Each file holds one row group of at most ``rows_per_row_group`` rows:
        Petastorm shards by row group, so equal, known-size groups let every
        rank read the same number of rows.
        """
        return {
            "spark.sql.files.maxRecordsPerFile": str(rows_per_row_group),
            "parquet.block.size": str(1 << 30),  # never split a file into two row groups
            # JPEGs barely repeat within a file: dictionary pages cost CPU and end up discarded.
            "parquet.enable.dictionary": "false",
            # One open writer per dt instead of a sort of the image rows by dt before writing.
            "spark.sql.maxConcurrentOutputFileWriters": str(max(16, n_dates + 1)),
            "spark.sql.execution.arrow.maxRecordsPerBatch": str(self.arrow_batch_rows),
        }

    def release(self) -> None:
        self.images.destroy()


# Spark's default Arrow batch (10,000 rows) is ~130 MB at 64 px but over 1 GB at 224 px
# (~100 KB a row): size batches by bytes instead. Speed hardly depends on it
# (docs/BENCHMARKS.md, bench/training_rows_write.py).
ARROW_BATCH_BYTES = 128 << 20


def training_rows(
    samples: DataFrame,
    item_images: DataFrame,
    item_images_name: str,
    num_partitions: int,
    images_per_row: int,
) -> TrainingRows:
    """``samples`` (courier_samples rows) with pv_images and click_images, ready to write by dt.

    ``images_per_row`` (l_pv + l_click) only sizes the Arrow batches.
    """
    spark = samples.sparkSession
    images = referenced_images(samples, item_images, item_images_name)
    ordered = (
        samples.select(*SAMPLE_COLUMNS, "dt")
        .repartitionByRange(num_partitions, "dt", "request_id")
        .sortWithinPartitions("dt", "request_id")
    )
    fields = [f for f in ordered.schema.fields if f.name != "dt"]
    fields += [
        T.StructField(name, T.ArrayType(T.BinaryType(), containsNull=False))
        for _, name in IMAGE_COLUMNS
    ]
    fields.append(ordered.schema["dt"])
    schema = T.StructType(fields)
    mean_jpeg = images.column("jpeg").nbytes / max(images.num_rows, 1)
    batch_rows = int(min(10_000, max(64, ARROW_BATCH_BYTES // max(mean_jpeg * images_per_row, 1))))
    handle = spark.sparkContext.broadcast(images)
    return TrainingRows(
        ordered.mapInArrow(ImageAttacher(handle, schema.fieldNames()), schema), handle, batch_rows
    )
