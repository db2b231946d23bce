"""Spherical k-means with faiss, and the matching that keeps cluster ids stable across re-fits.

Pure numpy + faiss (no Spark): ``courier cluster`` calls these on the driver
with a sample it drew in Spark, and the benchmarks call them directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from courier.config.features import ClusterConfig, GpuUse

log = logging.getLogger(__name__)

# Above this many (new x old) pairs the dense optimal matching (O(k^3)) is replaced by a
# sparse one over each centroid's nearest old centroids.
DENSE_MATCHING_MAX_PAIRS = 4096 * 4096
SPARSE_CANDIDATES = 16


@dataclass(frozen=True)
class KMeansFit:
    """One k-means fit.

    Attributes:
        centroids: float32 [k, d], unit norm (spherical k-means).
        sizes: int64 [k], training points nearest to each centroid.
        objective: sum over training points of the cosine to their centroid (faiss's final obj).
        imbalance_factor: k * sum(size^2) / n^2 (1 = perfectly balanced), faiss's definition.
        empty_clusters: centroids no training point is nearest to.
        n_train: training points used (after faiss's own max_points_per_centroid sampling).
        iterations: iterations run.
        used_gpu: whether faiss ran on a GPU.
    """

    centroids: np.ndarray
    sizes: np.ndarray
    objective: float
    imbalance_factor: float
    empty_clusters: int
    n_train: int
    iterations: int
    used_gpu: bool


def gpu_available() -> bool:
    """faiss-gpu installed and at least one GPU visible."""
    import faiss

    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def uses_gpu(c: ClusterConfig) -> bool:
    """Whether k-means runs on faiss-gpu: ``cluster.use_gpu`` yes, or auto and a GPU is there."""
    return c.use_gpu == GpuUse.YES or (c.use_gpu == GpuUse.AUTO and gpu_available())


def fit_spherical_kmeans(
    x: np.ndarray,
    c: ClusterConfig,
    *,
    init_centroids: np.ndarray | None = None,
) -> KMeansFit:
    """Fit ``c.k`` unit centroids to the unit vectors ``x`` [n, d] (cosine = inner product).

    ``c`` (the ``cluster`` section) gives k, niter, seed, the points per centroid and whether
    to use the GPU (``uses_gpu``).
    ``init_centroids`` [k, d] warm-starts the fit (a re-fit from the previous version).
    faiss subsamples to ``k * c.max_points_per_centroid`` points itself, seeded by ``c.seed``.

    Raises:
        ValueError: fewer points than clusters, or shapes that do not match.
    """
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    k, gpu = c.k, uses_gpu(c)
    if n < k:
        raise ValueError(f"k-means with k={k} needs at least k points, got {n}")
    kmeans = faiss.Kmeans(
        d,
        k,
        niter=c.niter,
        seed=c.seed,
        spherical=True,
        gpu=gpu,
        max_points_per_centroid=c.max_points_per_centroid,
        min_points_per_centroid=c.min_points_per_centroid,
        verbose=False,
    )
    init = None
    if init_centroids is not None:
        init = np.ascontiguousarray(init_centroids, dtype=np.float32)
        if init.shape != (k, d):
            raise ValueError(f"init_centroids must be [{k}, {d}], got {list(init.shape)}")
    kmeans.train(x, init_centroids=init)
    assert kmeans.centroids is not None  # set by train
    centroids = kmeans.centroids.astype(np.float32)  # [k, d]
    _, nearest = kmeans.index.search(x, 1)  # [n, 1]
    sizes = np.bincount(nearest[:, 0], minlength=k).astype(np.int64)
    stats = kmeans.iteration_stats
    assert stats is not None  # set by train
    last = stats[-1] if stats else {}
    n_train = min(n, k * c.max_points_per_centroid)
    return KMeansFit(
        centroids=centroids,
        sizes=sizes,
        objective=float(last.get("obj", float("nan"))),
        imbalance_factor=float(last.get("imbalance_factor", float("nan"))),
        empty_clusters=int((sizes == 0).sum()),
        n_train=n_train,
        iterations=len(stats),
        used_gpu=gpu,
    )


def match_cluster_ids(
    new: np.ndarray, old: np.ndarray, old_ids: np.ndarray, first_fresh: int = 0
) -> np.ndarray:
    """Stable ids for ``new`` centroids [k_new, d]: the id of the old centroid each is matched to.

    A one-to-one matching that maximises the total cosine between matched centroids
    (optimal for up to ``DENSE_MATCHING_MAX_PAIRS`` pairs; above, optimal over each new
    centroid's ``SPARSE_CANDIDATES`` nearest old ones, then greedy for the rest).
    New centroids left over when k grew get fresh ids above the largest old id, and at least
    ``first_fresh``: ids that items may still hold though ``old`` lacks them (a cluster of
    another model that could not be carried) are never handed out again.

    Returns:
        int64 [k_new]: the id of each new centroid (row order of ``new``).
    """
    k_new, k_old = len(new), len(old)
    ids = np.full(k_new, -1, dtype=np.int64)
    if k_old:
        rows, cols = _assignment(new.astype(np.float32), old.astype(np.float32))
        ids[rows] = np.asarray(old_ids, dtype=np.int64)[cols]
    fresh = np.flatnonzero(ids < 0)
    start = int(np.max(old_ids)) + 1 if k_old else 0
    start = max(start, first_fresh)
    ids[fresh] = np.arange(start, start + len(fresh))
    return ids


def _assignment(new: np.ndarray, old: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Matched (new row, old row) pairs maximising the summed cosine."""
    from scipy.optimize import linear_sum_assignment

    if len(new) * len(old) <= DENSE_MATCHING_MAX_PAIRS:
        return linear_sum_assignment(new @ old.T, maximize=True)
    return _sparse_assignment(new, old)


def _sparse_assignment(new: np.ndarray, old: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Production-size k (1e5): match over the nearest old centroids, greedily by similarity."""
    import faiss

    index = faiss.IndexFlatIP(old.shape[1])
    index.add(old)
    sims, cand = index.search(new, min(SPARSE_CANDIDATES, len(old)))  # [k_new, m]
    order = np.argsort(-sims, axis=None, kind="stable")
    new_taken = np.zeros(len(new), dtype=bool)
    old_taken = np.zeros(len(old), dtype=bool)
    rows, cols = [], []
    for flat in order:
        r, c = divmod(int(flat), cand.shape[1])
        o = int(cand[r, c])
        if new_taken[r] or old_taken[o]:
            continue
        new_taken[r] = old_taken[o] = True
        rows.append(r)
        cols.append(o)
    # Whoever has no free candidate left takes a free old id (ids stay within the old range).
    free_old = np.flatnonzero(~old_taken)
    for r, o in zip(np.flatnonzero(~new_taken), free_old, strict=False):
        rows.append(int(r))
        cols.append(int(o))
    return np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
