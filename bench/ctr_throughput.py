"""CTR model training throughput (impressions/s) per image usage, as ratios to ``none``.

    .venv/bin/python bench/ctr_throughput.py                # 100k impressions, history 20, 2 epochs
    .venv/bin/python bench/ctr_throughput.py --rows 200000 --history 50
    .venv/bin/python bench/ctr_throughput.py --embedding-dim 8  # the demo's CTR model

The impressions are synthetic (demo-shop sizes: 3,000 items, 2,000 users, 6
categories, 192 clusters, 256-d unit embeddings); each usage trains the same
rows with ``fit_ctr`` (the experiment's own loop, validation AUC every epoch
included), in this one process, so the ratios cancel the machine's noise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np

from courier.config.ctr import CtrConfig
from courier.ctr.data import CtrArrays, ImageVectors, Vocabularies, encode
from courier.ctr.train import fit_ctr


def synthetic(rows: int, history: int, seed: int = 0) -> CtrArrays:
    rng = np.random.default_rng(seed)
    items = rng.integers(0, 3000, rows)
    hist = rng.integers(0, 3000, (rows, history))
    hist[rng.random((rows, history)) < 0.3] = -1  # some padding, as short histories have
    return CtrArrays(
        request_id=(np.arange(rows) // 10).astype(str),
        user_id=rng.integers(0, 2000, rows),
        item_id=items,
        category=(items % 6).astype(str),
        query=(items % 6).astype(str),
        position=np.arange(rows) % 10,
        label=(rng.random(rows) < 0.1).astype(np.float32),
        dt=np.full(rows, np.datetime64("2026-01-01")),
        cluster_id=items % 192,
        history_item=hist,
        history_category=np.where(hist < 0, "", (hist % 6).astype(str)),
        history_cluster=np.where(hist < 0, -1, hist % 192),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--history", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--embedding-dim", type=int, default=CtrConfig().embedding_dim)
    args = parser.parse_args()
    data = synthetic(args.rows, args.history)
    validation = synthetic(args.rows // 10, args.history, seed=1)
    x = np.random.default_rng(2).standard_normal((3000, 256)).astype(np.float32)
    images = ImageVectors.from_arrays(np.arange(3000), x / np.linalg.norm(x, axis=1, keepdims=True))
    results = {}
    for usage in ("none", "cluster_id", "simscore", "vector"):
        cfg = dataclasses.replace(
            CtrConfig(),
            image_usage=usage,
            max_epochs=args.epochs,
            patience=args.epochs,
            embedding_dim=args.embedding_dim,
        )
        vocab = Vocabularies.fit(data, 1, n_clusters=192)
        t0 = time.perf_counter()
        fit = fit_ctr(
            cfg,
            vocab,
            encode(data, vocab, images),
            encode(validation, vocab, images),
            images.matrix,
        )
        seconds = time.perf_counter() - t0
        results[usage] = {"impressions_per_s": fit.impressions_per_second, "seconds": seconds}
    base = results["none"]["impressions_per_s"]
    for usage, r in results.items():
        r["ratio_to_none"] = r["impressions_per_s"] / base
        print(
            f"{usage:<11} {r['impressions_per_s']:>10,.0f} impressions/s  "
            f"({r['ratio_to_none']:.2f}x none)"
        )
    print(
        json.dumps(
            {
                "rows": args.rows,
                "embedding_dim": args.embedding_dim,
                "history": args.history,
                "epochs": args.epochs,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
