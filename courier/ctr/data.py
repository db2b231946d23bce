"""ctr_samples -> in-memory tensors for the CTR model, split by date.

The table is read once through Arrow (fixed-length, left-padded history arrays
are made in Spark, so every list column reshapes to ``[N, L]`` without a Python
loop). Vocabularies come from the training days only: an id first seen in the
validation or test days maps to the shared "unknown" row, as it would in
production. Index 0 is padding everywhere, index 1 unknown.

The image feature of a row is what ctr_samples holds (the as-of Cluster-ID),
unless an ``ImageFeatureOverride`` replaces it: the experiment's oracle (the
shop's true style) and the tests' planted features use that.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import torch
from pyspark.sql import Column, DataFrame, SparkSession, functions as F

from courier.features.cluster import vectors

PAD, UNKNOWN = 0, 1
MAX_POSITION = 63  # later positions share one embedding row


class CtrDataError(ValueError):
    """ctr_samples (or a feature table it needs) cannot feed the CTR model; the message says why."""


@dataclass(frozen=True)
class DateSplit:
    """Train / validation / test days of one ctr_samples range: the last days are the test."""

    train: tuple[dt.date, dt.date]
    validation: tuple[dt.date, dt.date]
    test: tuple[dt.date, dt.date]

    @classmethod
    def last_days(
        cls, start: dt.date, end: dt.date, validation_days: int, test_days: int
    ) -> DateSplit:
        """``[start, end]`` split so that the last ``test_days`` are the test,
        the ones before validation."""
        day = dt.timedelta(days=1)
        test_start = end - (test_days - 1) * day
        validation_start = test_start - validation_days * day
        if validation_start <= start:
            raise CtrDataError(
                f"ctr_samples {start}..{end} is too short for {validation_days} validation and "
                f"{test_days} test days plus at least one training day"
            )
        return cls(
            (start, validation_start - day), (validation_start, test_start - day), (test_start, end)
        )


@dataclass(frozen=True)
class ImageFeatureOverride:
    """Item -> Cluster-ID replacing ctr_samples' feature (ids >= 0; unlisted items: unknown)."""

    name: str
    item_ids: np.ndarray  # [n] int64
    cluster_ids: np.ndarray  # [n] int64

    @classmethod
    def from_table(
        cls, spark: SparkSession, table: str, column: str, name: str
    ) -> ImageFeatureOverride:
        """``table``'s (item_id, ``column``) as the Cluster-ID,
        e.g. eval_item_styles' true style_id."""
        if not spark.catalog.tableExists(table):
            raise CtrDataError(f"table {table} does not exist")
        arrow = (
            spark.table(table).select("item_id", column).where(F.col(column).isNotNull()).toArrow()
        )
        return cls(
            name,
            arrow.column("item_id").to_numpy().astype(np.int64),
            arrow.column(column).to_numpy().astype(np.int64),
        )

    def lookup(self, items: np.ndarray) -> np.ndarray:
        """Cluster id of each of ``items`` (any shape), -1 where the item is unlisted."""
        order = np.argsort(self.item_ids)
        keys, values = self.item_ids[order], self.cluster_ids[order]
        pos = np.clip(np.searchsorted(keys, items), 0, max(len(keys) - 1, 0))
        found = (keys[pos] == items) if len(keys) else np.zeros(items.shape, dtype=bool)
        return np.where(found, values[pos], -1)


@dataclass
class CtrArrays:
    """Raw ids of one ctr_samples read, aligned by row; history left-padded with item -1."""

    request_id: np.ndarray  # [N] str
    user_id: np.ndarray  # [N] int64
    item_id: np.ndarray  # [N] int64
    category: np.ndarray  # [N] str
    query: np.ndarray  # [N] str
    position: np.ndarray  # [N] int64
    label: np.ndarray  # [N] float32 (0/1)
    dt: np.ndarray  # [N] datetime64[D]
    cluster_id: np.ndarray  # [N] int64, -1 = no feature
    history_item: np.ndarray  # [N, L] int64, -1 = padding
    history_category: np.ndarray  # [N, L] str, "" = padding
    history_cluster: np.ndarray  # [N, L] int64, -1 = padding or no feature
    model_versions: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.label)

    def rows(self, mask: np.ndarray) -> CtrArrays:
        """The rows where ``mask`` is true."""
        values = {name: getattr(self, name)[mask] for name in _ROW_FIELDS}
        return CtrArrays(**values, model_versions=self.model_versions)

    def with_override(self, override: ImageFeatureOverride) -> CtrArrays:
        """A copy whose candidate and history Cluster-IDs come from ``override``."""
        hist = np.where(self.history_item >= 0, override.lookup(self.history_item), -1)
        values = {name: getattr(self, name) for name in _ROW_FIELDS}
        values.update(cluster_id=override.lookup(self.item_id), history_cluster=hist)
        return CtrArrays(**values, model_versions=(override.name,))


_ROW_FIELDS = (
    "request_id",
    "user_id",
    "item_id",
    "category",
    "query",
    "position",
    "label",
    "dt",
    "cluster_id",
    "history_item",
    "history_category",
    "history_cluster",
)


def read_ctr_samples(
    spark: SparkSession, table: str, start: dt.date, end: dt.date, history_length: int
) -> CtrArrays:
    """Rows of ``table`` (ctr_samples) with ``start <= dt <= end``,
    history padded to ``history_length``."""
    if not spark.catalog.tableExists(table):
        raise CtrDataError(f"table {table} does not exist: run `courier ctr-samples` first")
    df = spark.table(table).where(F.col("dt").between(start, end))
    versions = tuple(
        sorted(r[0] for r in df.select("feature_model_version").distinct().collect() if r[0])
    )
    arrow = _padded(df, history_length).toArrow()
    if arrow.num_rows == 0:
        raise CtrDataError(f"table {table} has no rows for {start}..{end}")
    col = {name: arrow.column(name).combine_chunks() for name in arrow.column_names}

    def matrix(name: str) -> np.ndarray:
        return (
            col[name]
            .flatten()
            .to_numpy(zero_copy_only=False)
            .reshape(arrow.num_rows, history_length)
        )

    return CtrArrays(
        request_id=col["request_id"].to_numpy(zero_copy_only=False).astype(str),
        user_id=col["user_id"].to_numpy().astype(np.int64),
        item_id=col["item_id"].to_numpy().astype(np.int64),
        category=col["category"].to_numpy(zero_copy_only=False).astype(str),
        query=col["query"].fill_null("").to_numpy(zero_copy_only=False).astype(str),
        position=col["position"].to_numpy().astype(np.int64),
        label=col["label"].to_numpy().astype(np.float32),
        dt=col["dt"].to_numpy(zero_copy_only=False).astype("datetime64[D]"),
        cluster_id=col["cluster_id"].to_numpy().astype(np.int64),
        history_item=matrix("history_item").astype(np.int64),
        history_category=matrix("history_category").astype(str),
        history_cluster=matrix("history_cluster").astype(np.int64),
        model_versions=versions,
    )


def _padded(df: DataFrame, length: int) -> DataFrame:
    """The columns the model reads, the history arrays
    cut to the newest ``length`` and left-padded."""

    def pad(column: str, filler: str) -> Column:
        newest = F.slice(
            F.col(column), F.greatest(F.size(column) - length + 1, F.lit(1)), F.lit(length)
        )
        return F.concat(F.array_repeat(F.expr(filler), F.lit(length) - F.size(newest)), newest)

    clean = df.selectExpr(
        "request_id",
        "user_id",
        "item_id",
        "category",
        "query",
        "position",
        "label",
        "dt",
        "CAST(coalesce(image_cluster_id, -1) AS BIGINT) AS cluster_id",
        "history_item_ids",
        "history_categories",
        # a history item without a feature at the impression's time: -1, as padding
        "transform(history_cluster_ids, c -> CAST(coalesce(c, -1) AS BIGINT)) AS history_clusters",
    )
    return clean.orderBy("dt", "request_id", "position").select(
        "request_id",
        "user_id",
        "item_id",
        "category",
        "query",
        "position",
        "label",
        "dt",
        "cluster_id",
        pad("history_item_ids", "CAST(-1 AS BIGINT)").alias("history_item"),
        pad("history_categories", "''").alias("history_category"),
        pad("history_clusters", "CAST(-1 AS BIGINT)").alias("history_cluster"),
    )


@dataclass(frozen=True)
class Vocabulary:
    """Sorted known values -> index (>= 2); anything else -> UNKNOWN; padding stays PAD."""

    values: np.ndarray  # [n] sorted

    @classmethod
    def fit(cls, values: np.ndarray, min_count: int = 1, ignore: object = None) -> Vocabulary:
        """The values seen at least ``min_count`` times
        (``ignore``: the padding value, never a word)."""
        flat = values.reshape(-1)
        if ignore is not None:
            flat = flat[flat != ignore]
        unique, counts = np.unique(flat, return_counts=True)
        return cls(unique[counts >= min_count])

    def __len__(self) -> int:
        """Rows of an embedding table over this vocabulary (with PAD and UNKNOWN)."""
        return len(self.values) + 2

    def encode(self, values: np.ndarray, pad: object = None) -> np.ndarray:
        """int64 indices of ``values`` (any shape); ``pad`` entries -> PAD."""
        if len(self.values) == 0:
            out = np.full(values.shape, UNKNOWN, dtype=np.int64)
        else:
            pos = np.clip(np.searchsorted(self.values, values), 0, len(self.values) - 1)
            out = np.where(self.values[pos] == values, pos + 2, UNKNOWN).astype(np.int64)
        if pad is not None:
            out[values == pad] = PAD
        return out


@dataclass(frozen=True)
class Vocabularies:
    """The id vocabularies of one CTR model, fitted on its training rows."""

    items: Vocabulary
    users: Vocabulary
    categories: Vocabulary  # item categories and queries share it: a query is a category here
    n_clusters: int  # Cluster-ID rows: 0..max id, + PAD and UNKNOWN

    @classmethod
    def fit(
        cls, train: CtrArrays, min_item_count: int, n_clusters: int | None = None
    ) -> Vocabularies:
        """Vocabularies of ``train``; ``n_clusters`` defaults to the largest Cluster-ID seen + 1."""
        items = Vocabulary.fit(
            np.concatenate([train.item_id, train.history_item.reshape(-1)]),
            min_item_count,
            ignore=-1,
        )
        cats = Vocabulary.fit(
            np.concatenate([train.category, train.query, train.history_category.reshape(-1)]),
            ignore="",
        )
        seen = max(
            int(train.cluster_id.max(initial=-1)), int(train.history_cluster.max(initial=-1))
        )
        return cls(items, Vocabulary.fit(train.user_id), cats, (n_clusters or seen + 1) + 2)

    def cluster_index(self, ids: np.ndarray, padding: np.ndarray | None = None) -> np.ndarray:
        """Cluster-ID -> row (id + 2);
        -1 or an id outside the table -> UNKNOWN; ``padding`` -> PAD."""
        out = np.where((ids >= 0) & (ids < self.n_clusters - 2), ids + 2, UNKNOWN).astype(np.int64)
        if padding is not None:
            out[padding] = PAD
        return out


@dataclass(frozen=True)
class ImageVectors:
    """The embedding of each item for the ``vector`` and ``simscore`` usages; row 0 = no vector."""

    item_ids: np.ndarray  # [n] sorted int64
    matrix: np.ndarray  # [n + 1, d] float32, row 0 zeros

    @classmethod
    def from_table(cls, spark: SparkSession, table: str, model_version: str) -> ImageVectors:
        """The item_embeddings rows of ``model_version``."""
        df = spark.table(table).where(F.col("model_version") == model_version)
        ids, x = vectors(df.orderBy("item_id"), "item_id", "embedding")
        if len(ids) == 0:
            raise CtrDataError(
                f"table {table} holds no embeddings of model version {model_version}"
            )
        return cls.from_arrays(ids.astype(np.int64), x)

    @classmethod
    def from_arrays(cls, item_ids: np.ndarray, x: np.ndarray) -> ImageVectors:
        order = np.argsort(item_ids)
        matrix = np.zeros((len(item_ids) + 1, x.shape[1]), dtype=np.float32)
        matrix[1:] = x[order]
        return cls(item_ids[order], matrix)

    def rows(self, items: np.ndarray) -> np.ndarray:
        """Row of each of ``items`` (any shape) in ``matrix``; 0 when the item has no vector."""
        pos = np.clip(np.searchsorted(self.item_ids, items), 0, len(self.item_ids) - 1)
        return np.where(self.item_ids[pos] == items, pos + 1, 0).astype(np.int64)


@dataclass
class CtrTensors:
    """Model inputs of N impressions (indices into the vocabularies), history length L."""

    user: torch.Tensor  # [N]
    item: torch.Tensor  # [N]
    category: torch.Tensor  # [N]
    query: torch.Tensor  # [N]
    position: torch.Tensor  # [N]
    cluster: torch.Tensor  # [N]
    image_row: torch.Tensor  # [N]   row of ImageVectors.matrix, 0 = none
    history_item: torch.Tensor  # [N, L]
    history_category: torch.Tensor  # [N, L]
    history_cluster: torch.Tensor  # [N, L]
    history_image_row: torch.Tensor  # [N, L]
    history_mask: torch.Tensor  # [N, L] bool, True = a real click
    label: torch.Tensor  # [N] float32

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def take(self, index: torch.Tensor) -> CtrTensors:
        """The rows ``index`` (a batch)."""
        return CtrTensors(**{name: getattr(self, name)[index] for name in _TENSOR_FIELDS})


_TENSOR_FIELDS = (
    "user",
    "item",
    "category",
    "query",
    "position",
    "cluster",
    "image_row",
    "history_item",
    "history_category",
    "history_cluster",
    "history_image_row",
    "history_mask",
    "label",
)


def encode(
    arrays: CtrArrays, vocab: Vocabularies, images: ImageVectors | None = None
) -> CtrTensors:
    """CtrArrays -> CtrTensors through ``vocab`` (and ``images`` for the vector usages)."""
    padding = arrays.history_item < 0

    def t(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x))

    no_image = np.zeros(arrays.item_id.shape, dtype=np.int64)
    return CtrTensors(
        user=t(vocab.users.encode(arrays.user_id)),
        item=t(vocab.items.encode(arrays.item_id)),
        category=t(vocab.categories.encode(arrays.category)),
        query=t(vocab.categories.encode(arrays.query)),
        position=t(np.clip(arrays.position, 0, MAX_POSITION).astype(np.int64)),
        cluster=t(vocab.cluster_index(arrays.cluster_id)),
        image_row=t(images.rows(arrays.item_id) if images else no_image),
        history_item=t(vocab.items.encode(arrays.history_item, pad=-1)),
        history_category=t(
            np.where(padding, PAD, vocab.categories.encode(arrays.history_category))
        ),
        history_cluster=t(vocab.cluster_index(arrays.history_cluster, padding=padding)),
        history_image_row=t(
            np.where(padding, 0, images.rows(arrays.history_item))
            if images
            else np.zeros(padding.shape, dtype=np.int64)
        ),
        history_mask=t(~padding),
        label=t(arrays.label.astype(np.float32)),
    )
