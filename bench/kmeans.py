"""faiss spherical k-means (courier cluster's fit)
against sklearn MiniBatchKMeans, and a cost curve.

    .venv/bin/python bench/kmeans.py                        # 1M x 256, k = 4096, then the curve
    .venv/bin/python bench/kmeans.py --n 200000 --k 1024 --curve-n 50000 100000 --curve-k 256 1024

Data: n unit vectors of a mixture (2k random unit centres, Gaussian noise, then
L2-normalised), the shape of item embeddings. Both methods fit the same matrix in
the same process. Quality is measured the same way for both on all n points:
the partition each method's centroids induce (nearest centroid) is scored by
its within-cluster sum of squares around the cluster means (the k-means
objective, which MiniBatchKMeans minimises) and by the mean cosine of each point
to its cluster's normalised mean (what spherical k-means maximises). The curve times faiss fits over
n and k (niter fixed), fits seconds = c * n_train * k (n_train = min(n, k *
max_points_per_centroid)) and extrapolates the fit and
the assignment of every item at the production size.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from courier.config import ClusterConfig
from courier.features.assign import nearest_centroids
from courier.features.kmeans import fit_spherical_kmeans, gpu_available


def mixture(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(2, 2 * int(np.sqrt(n))), d)).astype(np.float32)
    x = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 100_000):  # chunks keep the temporaries small at 1M x 256
        stop = min(n, start + 100_000)
        labels = rng.integers(0, len(centres), stop - start)
        x[start:stop] = centres[labels] + 0.8 * rng.standard_normal((stop - start, d)).astype(
            np.float32
        )
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def quality(x: np.ndarray, centroids: np.ndarray, metric: str) -> dict[str, float]:
    """The partition ``centroids`` induce on ``x``
    (nearest by ``metric``), measured the same way for both methods.

    inertia: within-cluster sum of squares around each cluster's mean, the k-means objective of the
    partition (so unit-norm faiss centroids are not penalised for not being means); mean_cosine: of
    each point to its own cluster's normalised mean (the spherical objective).
    """
    import faiss

    index = (
        faiss.IndexFlatIP(centroids.shape[1])
        if metric == "ip"
        else faiss.IndexFlatL2(centroids.shape[1])
    )
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    _, nearest = index.search(x, 1)
    labels = nearest[:, 0]
    k = len(centroids)
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, x)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    used = counts > 0
    inertia = float(
        (x.astype(np.float64) ** 2).sum() - ((sums[used] ** 2).sum(axis=1) / counts[used]).sum()
    )
    directions = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    cos = (x * directions[labels].astype(np.float32)).sum(axis=1)
    return {"inertia": inertia, "mean_cosine": float(cos.mean()), "empty": int((~used).sum())}


def compare(x: np.ndarray, k: int, niters: list[int], seed: int) -> dict:
    """sklearn once at its defaults (batch 4k),
    faiss at each of ``niters``; the ratio at equal or lower inertia."""
    from sklearn.cluster import MiniBatchKMeans

    # sklearn's guidance: a batch larger than k;
    # everything else at its defaults (early stopping on).
    mbk = MiniBatchKMeans(n_clusters=k, batch_size=4 * k, n_init=1, random_state=seed)
    t0 = time.perf_counter()
    mbk.fit(x)
    sklearn_s = time.perf_counter() - t0
    sk = quality(x, mbk.cluster_centers_.astype(np.float32), "l2")
    print(
        f"sklearn MiniBatchKMeans: {sklearn_s:.1f}s ({int(mbk.n_steps_)} steps of {4 * k}), "
        f"inertia {sk['inertia']:,.0f}, mean cosine {sk['mean_cosine']:.4f}",
        flush=True,
    )
    fits = []
    for niter in niters:
        t0 = time.perf_counter()
        fit = fit_spherical_kmeans(x, ClusterConfig(k=k, niter=niter, seed=seed))
        seconds = time.perf_counter() - t0
        q = quality(x, fit.centroids, "ip")
        fits.append({"niter": niter, "faiss_s": seconds, **q})
        print(
            f"faiss, {niter:>2} iterations: {seconds:.1f}s ({sklearn_s / seconds:.2f}x sklearn's "
            f"time), inertia {q['inertia']:,.0f} ({q['inertia'] / sk['inertia']:.4f} of "
            f"sklearn's), mean cosine {q['mean_cosine']:.4f}",
            flush=True,
        )
    at_least_as_good = [f for f in fits if f["inertia"] <= sk["inertia"]]
    best = min(at_least_as_good, key=lambda f: f["faiss_s"]) if at_least_as_good else None
    return {
        "n": len(x),
        "d": x.shape[1],
        "k": k,
        "sklearn_s": sklearn_s,
        "sklearn": sk,
        "sklearn_steps": int(mbk.n_steps_),
        "faiss": fits,
        "speedup_at_equal_or_lower_inertia": sklearn_s / best["faiss_s"] if best else None,
        "faiss_niter_used": best["niter"] if best else None,
    }


def curve(ns: list[int], ks: list[int], d: int, niter: int, mppc: int) -> list[dict]:
    points = []
    for n in ns:
        x = mixture(n, d, seed=n)
        for k in ks:
            if k * 2 > n:
                continue
            t0 = time.perf_counter()
            fit = fit_spherical_kmeans(
                x, ClusterConfig(k=k, niter=niter, max_points_per_centroid=mppc)
            )
            fit_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            nearest_centroids(x, fit.centroids, np.arange(k))
            assign_s = time.perf_counter() - t0
            points.append(
                {"n": n, "k": k, "n_train": fit.n_train, "fit_s": fit_s, "assign_s": assign_s}
            )
            print(
                f"  n={n:>9,} k={k:>6,} n_train={fit.n_train:>9,}: fit {fit_s:7.2f}s, assign all "
                f"{assign_s:6.2f}s",
                flush=True,
            )
    return points


def extrapolate(
    points: list[dict], n: int, k: int, d_ratio: float, niter_ratio: float, mppc: int
) -> dict:
    """Least-squares c in seconds = c * work, for the fit
    (n_train * k) and the assignment (n * k)."""
    fit_work = np.array([p["n_train"] * p["k"] for p in points], dtype=np.float64)
    fit_c = float(np.dot(fit_work, [p["fit_s"] for p in points]) / np.dot(fit_work, fit_work))
    assign_work = np.array([p["n"] * p["k"] for p in points], dtype=np.float64)
    assign_c = float(
        np.dot(assign_work, [p["assign_s"] for p in points]) / np.dot(assign_work, assign_work)
    )
    n_train = min(n, k * mppc)
    return {
        "n": n,
        "k": k,
        "n_train": n_train,
        "fit_s": fit_c * n_train * k * d_ratio * niter_ratio,
        "assign_s": assign_c * n * k * d_ratio,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument(
        "--niters",
        type=int,
        nargs="+",
        default=[3, 5, 8, 20],
        help="faiss iterations to try (courier cluster's default is 20)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--curve-n", type=int, nargs="*", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--skip-compare", action="store_true")
    parser.add_argument("--curve-k", type=int, nargs="*", default=[256, 1024, 4096])
    parser.add_argument("--curve-niter", type=int, default=10)
    parser.add_argument(
        "--production", type=int, nargs=2, default=[60_000_000, 100_000], metavar=("N", "K")
    )
    parser.add_argument("--out", default="bench/out/kmeans.json")
    args = parser.parse_args()

    import faiss

    print(
        f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, "
        f"GPU: {gpu_available()}, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    result = None
    if not args.skip_compare:
        x = mixture(args.n, args.d, seed=args.seed)
        result = compare(x, args.k, args.niters, args.seed)
        del x
    if result is not None and result["faiss_niter_used"] is None:
        print(
            f"{args.n:,} x {args.d}, k={args.k}: no faiss fit reached sklearn's inertia", flush=True
        )
    elif result is not None:
        print(
            f"{args.n:,} x {args.d}, k={args.k}: faiss is "
            f"{result['speedup_at_equal_or_lower_inertia']:.2f}x faster than sklearn at equal or "
            f"lower inertia ({result['faiss_niter_used']} iterations)",
            flush=True,
        )
    print(
        f"curve (faiss, d={args.d}, {args.curve_niter} iterations; seconds fitted as "
        "c * n_train * k):",
        flush=True,
    )
    points = curve(args.curve_n, args.curve_k, args.d, args.curve_niter, 256)
    n_prod, k_prod = args.production
    prod = extrapolate(points, n_prod, k_prod, 1.0, 20 / args.curve_niter, 256) if points else None
    if prod:
        print(
            f"extrapolated to {n_prod:,} items, k={k_prod:,} (20 iterations, {prod['n_train']:,} "
            f"training points) on this CPU: fit {prod['fit_s'] / 3600:.1f} h, assigning every item "
            f"{prod['assign_s'] / 3600:.1f} h (single machine; assignment splits over Spark "
            "executors)",
            flush=True,
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"compare": result, "curve": points, "production": prod}, indent=2))


if __name__ == "__main__":
    main()
