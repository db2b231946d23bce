"""faiss spherical k-means and the id matching, on synthetic unit vectors (no Spark)."""

from __future__ import annotations

import numpy as np
import pytest

from courier.config import ClusterConfig
from courier.features import kmeans
from courier.features.assign import nearest_centroids
from courier.features.kmeans import fit_spherical_kmeans, match_cluster_ids


def mixture(
    n: int, k: int, d: int = 32, spread: float = 0.35, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors around k random unit centres
    (overlapping enough that k-means has choices to make)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, k, n)
    x = centres[labels] + spread * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d) * 3
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def unit_vectors(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_fit_returns_unit_centroids_and_honest_statistics():
    x, _ = mixture(4000, 20)
    fit = fit_spherical_kmeans(x, ClusterConfig(k=20, niter=15, seed=1))
    assert fit.centroids.shape == (20, 32)
    np.testing.assert_allclose(np.linalg.norm(fit.centroids, axis=1), 1.0, atol=1e-5)
    ids, sims = nearest_centroids(x, fit.centroids, np.arange(20))
    np.testing.assert_array_equal(np.bincount(ids, minlength=20), fit.sizes)
    # faiss's objective for spherical k-means is the summed cosine to the nearest centroid.
    assert fit.objective == pytest.approx(float(sims.sum()), rel=1e-4)
    expected_imbalance = 20 * float((fit.sizes.astype(np.float64) ** 2).sum()) / 4000**2
    assert fit.imbalance_factor == pytest.approx(expected_imbalance, rel=1e-6)
    assert fit.empty_clusters == int((fit.sizes == 0).sum())


def test_faiss_samples_at_most_max_points_per_centroid():
    x, _ = mixture(5000, 10)
    fit = fit_spherical_kmeans(x, ClusterConfig(k=10, niter=5, max_points_per_centroid=50))
    assert fit.n_train == 500


def test_too_few_points_is_an_error():
    x, _ = mixture(10, 3)
    with pytest.raises(ValueError, match="k=20 needs at least k points, got 10"):
        fit_spherical_kmeans(x, ClusterConfig(k=20))


def test_matching_recovers_a_permutation_exactly():
    old = unit_vectors(50)
    perm = np.random.default_rng(3).permutation(50)
    old_ids = np.arange(100, 150)
    new = old[perm] + 0.01 * np.random.default_rng(4).standard_normal(old.shape).astype(np.float32)
    ids = match_cluster_ids(new, old, old_ids)
    np.testing.assert_array_equal(ids, old_ids[perm])


def test_sparse_matching_for_production_k_agrees_with_the_dense_one(monkeypatch):
    old = unit_vectors(300, seed=5)
    perm = np.random.default_rng(6).permutation(300)
    new = old[perm] + 0.05 * np.random.default_rng(7).standard_normal(old.shape).astype(np.float32)
    dense = match_cluster_ids(new, old, np.arange(300))
    monkeypatch.setattr(kmeans, "DENSE_MATCHING_MAX_PAIRS", 0)  # force the k = 1e5 code path
    sparse = match_cluster_ids(new, old, np.arange(300))
    np.testing.assert_array_equal(sparse, dense)
    np.testing.assert_array_equal(sparse, perm)


def test_a_grown_k_keeps_old_ids_and_numbers_the_rest_after_them():
    old = unit_vectors(8)
    extra = unit_vectors(4, seed=9)
    ids = match_cluster_ids(np.concatenate([old, extra]), old, np.arange(8))
    np.testing.assert_array_equal(ids[:8], np.arange(8))
    assert sorted(ids[8:]) == [8, 9, 10, 11]


def test_fresh_ids_skip_ids_the_old_centroids_lack_but_items_may_hold():
    # Old ids 0..7 of which 7 (and its centroid) could not be carried: a new cluster must not get 7.
    old = unit_vectors(8)
    extra = unit_vectors(2, seed=9)
    ids = match_cluster_ids(np.concatenate([old[:7], extra]), old[:7], np.arange(7), first_fresh=8)
    np.testing.assert_array_equal(ids[:7], np.arange(7))
    assert sorted(ids[7:]) == [8, 9]


def _kept_share(x_old: np.ndarray, x_all: np.ndarray, k: int, warm: bool) -> float:
    first = fit_spherical_kmeans(x_old, ClusterConfig(k=k, niter=20, seed=1))
    ids_first = np.arange(k)
    if warm:
        second = fit_spherical_kmeans(
            x_all, ClusterConfig(k=k, niter=20, seed=2), init_centroids=first.centroids
        )
        ids_second = match_cluster_ids(second.centroids, first.centroids, ids_first)
    else:  # what a plain re-fit does: a new seed, ids in faiss's order
        second = fit_spherical_kmeans(x_all, ClusterConfig(k=k, niter=20, seed=2))
        ids_second = np.arange(k)
    before, _ = nearest_centroids(x_old, first.centroids, ids_first)
    after, _ = nearest_centroids(x_old, second.centroids, ids_second)
    return float((before == after).mean())


def test_ids_survive_a_refit_with_five_percent_new_items():
    x, _ = mixture(6000, 40, spread=0.45, seed=11)
    old, new = x[:5700], x  # the last 300 (5%) are new items
    warm = _kept_share(old, new, 40, warm=True)
    cold = _kept_share(old, new, 40, warm=False)
    assert warm >= 0.9, warm
    assert cold < 0.5, cold  # without warm start + matching ids are reshuffled: the check can fail
