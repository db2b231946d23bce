"""Do Cluster-IDs survive a re-fit? The share of items keeping their id after 5% new items arrive.

    .venv/bin/courier demo                          # (once) a warehouse with trained embeddings
    .venv/bin/python bench/cluster_stability.py     # reads warehouse/ (the demo's), k = cluster.k
    .venv/bin/python bench/cluster_stability.py --warehouse W --database courier --k 192 \\
        --seeds 0 1 2

The embeddings of the newest model version in item_embeddings are read once.
For each seed, 5% of the items are set aside as "new"; a first version is fitted
on the rest, then the re-fit `courier cluster` does: all items, warm-started from
the first version's centroids, new clusters matched to the old ids. Kept share =
old items whose nearest-centroid id is the same under both versions (goal: at
least 0.90). The baseline is a re-fit without warm start or matching.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from pyspark.sql import functions as F

from courier.config import ClusterConfig, load_config
from courier.features.assign import nearest_centroids
from courier.features.kmeans import fit_spherical_kmeans, match_cluster_ids
from courier.spark import build_spark_session


def kept_share(x: np.ndarray, is_new: np.ndarray, k: int, seed: int, warm: bool) -> float:
    old = x[~is_new]
    first = fit_spherical_kmeans(old, ClusterConfig(k=k, seed=seed))
    ids = np.arange(k)
    if warm:
        second = fit_spherical_kmeans(
            x, ClusterConfig(k=k, seed=seed + 1), init_centroids=first.centroids
        )
        second_ids = match_cluster_ids(second.centroids, first.centroids, ids)
    else:
        second = fit_spherical_kmeans(x, ClusterConfig(k=k, seed=seed + 1))
        second_ids = ids
    before, _ = nearest_centroids(old, first.centroids, ids)
    after, _ = nearest_centroids(old, second.centroids, second_ids)
    return float((before == after).mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--warehouse", default="warehouse")
    parser.add_argument("--database", default="courier")
    parser.add_argument(
        "--k", type=int, default=None, help="default: cluster.k of the local profile"
    )
    parser.add_argument("--new-share", type=float, default=0.05)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="bench/out/cluster_stability.json")
    args = parser.parse_args()

    cfg = load_config(
        "local",
        [
            f"spark.warehouse_dir={args.warehouse}",
            f"tables.database={args.database}",
            "spark.ui_enabled=false",
        ],
    )
    k = args.k or cfg.cluster.k
    spark = build_spark_session(cfg.spark)
    from courier.features.cluster import latest_model_version

    table = cfg.tables.qualified("item_embeddings")
    version = latest_model_version(spark, table)
    rows = (
        spark.table(table)
        .where(F.col("model_version") == version)
        .orderBy("item_id")
        .select("embedding")
        .collect()
    )
    x = np.array([r["embedding"] for r in rows], dtype=np.float32)
    spark.stop()
    results = []
    for seed in args.seeds:
        is_new = np.random.default_rng(seed).random(len(x)) < args.new_share
        warm = kept_share(x, is_new, k, seed, warm=True)
        cold = kept_share(x, is_new, k, seed, warm=False)
        results.append(
            {"seed": seed, "warm_matched": warm, "cold": cold, "new_items": int(is_new.sum())}
        )
        print(
            f"seed {seed}: {len(x):,} items ({is_new.sum()} new), k={k}: kept {warm:.3f} with warm "
            f"start + matching, {cold:.3f} without",
            flush=True,
        )
    shares = np.array([r["warm_matched"] for r in results])
    print(
        f"kept share over {len(results)} seeds: {shares.mean():.3f} +- {shares.std():.3f} "
        f"(min {shares.min():.3f}); model version {version}",
        flush=True,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"model_version": version, "k": k, "items": len(x), "runs": results}, indent=2)
    )


if __name__ == "__main__":
    main()
