"""Typed, frozen configuration of the feature stages:
embed, cluster, assign, report (courier/features/).

Each section is validated here, where it is defined; the defaults suit the
embedded demo shop (6 categories x 16 hidden styles, 3,000 items) and
``conf/cluster.example.yaml`` shows production values.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from enum import StrEnum

from courier.checks import choices, coerce_choices, require


class Device(StrEnum):
    """``embed.device``: where the embedding UDF runs the model."""

    AUTO = "auto"  # a GPU when the task has one, else the CPU
    CPU = "cpu"
    CUDA = "cuda"


class GpuUse(StrEnum):
    """``cluster.use_gpu``: whether k-means runs on faiss-gpu."""

    AUTO = "auto"  # when faiss-gpu is installed and sees a GPU
    YES = "yes"
    NO = "no"


DEVICES: tuple[str, ...] = choices(Device)


@dataclass(frozen=True)
class EmbedConfig:
    """``courier embed``: batch inference of the registered image encoder in a Spark UDF.

    Attributes:
        model_uri: any MLflow model URI; None =
            ``models:/<mlflow.registered_model>@<mlflow.alias>``. An alias is resolved to a
            concrete version once, on the driver.
        batch_size: images per forward pass inside the UDF.
        arrow_batch_rows: rows per Arrow batch sent to the UDF. Each row carries a JPEG,
            so Spark's default of 10,000 rows is a gigabyte at 224 px.
        device: where the UDF runs the model; ``auto`` takes a GPU when the task has one.
        torch_threads: intra-op threads per Python worker; 0 = torch's default. With
            one worker per core, 1 avoids oversubscribing the executor's cores.
    """

    model_uri: str | None = None
    batch_size: int = 256
    arrow_batch_rows: int = 1024
    device: Device = Device.AUTO
    torch_threads: int = 1

    def __post_init__(self) -> None:
        require(self.batch_size > 0, f"embed.batch_size must be positive, got {self.batch_size}")
        require(
            self.arrow_batch_rows > 0,
            f"embed.arrow_batch_rows must be positive, got {self.arrow_batch_rows}",
        )
        coerce_choices(self, "embed", {"device": Device})
        require(
            self.torch_threads >= 0, f"embed.torch_threads must be >= 0, got {self.torch_threads}"
        )
        require(
            self.model_uri is None or self.model_uri.strip() != "",
            "embed.model_uri must be null or a URI",
        )


@dataclass(frozen=True)
class ClusterConfig:
    """``courier cluster``: spherical faiss k-means over item_embeddings.

    Attributes:
        k: clusters. Of the order of categories x styles or more: 192 is twice the demo shop's
            6 x 16; production uses ~1e5 over ~6e7 items (paper appendix B).
        niter: k-means iterations.
        seed: seeds faiss and the training sample.
        max_points_per_centroid: training points per centroid, as faiss samples them;
            Spark draws the sample so the driver never holds more than k x this.
        min_points_per_centroid: faiss warns below this many points per centroid.
        model_version: the encoder version whose embeddings are clustered; None = the
            newest version present in item_embeddings.
        warm_start: initialise from the newest cluster version and match the new clusters
            to its ids, so ids stay stable across re-fits. When that version clustered another
            model, its clusters are first carried into the new model's space (each one the
            new model's mean embedding of the items holding its id).
        use_gpu: ``auto`` uses faiss-gpu when it is installed and sees a GPU.
    """

    k: int = 192
    niter: int = 20
    seed: int = 1234
    max_points_per_centroid: int = 256
    min_points_per_centroid: int = 5
    model_version: str | None = None
    warm_start: bool = True
    use_gpu: GpuUse = GpuUse.AUTO

    def __post_init__(self) -> None:
        require(self.k >= 2, f"cluster.k must be >= 2, got {self.k}")
        require(self.niter >= 1, f"cluster.niter must be >= 1, got {self.niter}")
        require(self.max_points_per_centroid >= 1, "cluster.max_points_per_centroid must be >= 1")
        require(
            1 <= self.min_points_per_centroid <= self.max_points_per_centroid,
            "cluster.min_points_per_centroid must be in 1..max_points_per_centroid",
        )
        coerce_choices(self, "cluster", {"use_gpu": GpuUse})


@dataclass(frozen=True)
class AssignConfig:
    """``courier assign``: every item onto the nearest centroid of one cluster version.

    Attributes:
        cluster_version: the version to assign to; None = the newest in cluster_centroids.
        first_valid_from: ``valid_from`` of an item's first feature row. There is no
            earlier value to join, so the first value is taken as valid back to this
            instant; later changes are valid from the moment they are published.
    """

    cluster_version: int | None = None
    first_valid_from: str = "1970-01-01T00:00:00"

    def __post_init__(self) -> None:
        require(
            self.cluster_version is None or self.cluster_version >= 1,
            f"assign.cluster_version must be null or >= 1, got {self.cluster_version}",
        )
        try:
            _dt.datetime.fromisoformat(self.first_valid_from)
        except ValueError as exc:
            raise ValueError(f"assign.first_valid_from must be an ISO timestamp: {exc}") from None

    @property
    def first_valid_from_ts(self) -> _dt.datetime:
        return _dt.datetime.fromisoformat(self.first_valid_from)


@dataclass(frozen=True)
class ReportConfig:
    """``courier report``: the pictures of the feature stages.

    Attributes:
        out_dir: folder of the PNGs (project-relative unless absolute).
        grid_clusters: clusters shown in the cluster grid (the largest ones).
        grid_items: item images per cluster row (the most similar to the centroid).
        map_items: items drawn in the 2-D embedding map (a deterministic sample).
    """

    out_dir: str = "warehouse/reports"
    grid_clusters: int = 12
    grid_items: int = 10
    map_items: int = 3000

    def __post_init__(self) -> None:
        for name in ("grid_clusters", "grid_items", "map_items"):
            require(
                getattr(self, name) >= 1, f"report.{name} must be >= 1, got {getattr(self, name)}"
            )
