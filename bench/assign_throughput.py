"""`courier assign` throughput on local Spark: items/s onto k broadcast centroids.

    .venv/bin/python bench/assign_throughput.py          # 1M items x 256, k = 192 and 4096
    .venv/bin/python bench/assign_throughput.py --items 200000 --k 192

item_embeddings is filled with n synthetic unit vectors (a mixture, written by
Spark; not timed) and one cluster version per k is fitted with `courier cluster`
(3 iterations, not timed). Then `assign_items` runs end to end (timed): the mapInArrow faiss
search, staging the changes, the MERGE of n new rows into item_image_features and
the views. Items/s = n / seconds, for the whole stage and for the search phase.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from courier.config import load_config
from courier.spark import build_spark_session
from shops import session_overrides


def synthetic_embeddings(spark, table: str, n: int, d: int, partitions: int) -> None:
    def generate(batches):
        for batch in batches:
            ids = batch.column(0).to_numpy()
            rng = np.random.default_rng(int(ids[0]) if len(ids) else 0)
            centres = np.random.default_rng(0).standard_normal((512, d)).astype(np.float32)
            x = centres[rng.integers(0, 512, len(ids))] + rng.standard_normal((len(ids), d)).astype(
                np.float32
            )
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            yield pa.RecordBatch.from_arrays(
                [
                    pa.array(ids),
                    pa.array(["1"] * len(ids)),
                    pa.array(["h"] * len(ids)),
                    pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d).cast(
                        pa.list_(pa.float32())
                    ),
                ],
                names=["item_id", "model_version", "content_hash", "embedding"],
            )

    from pyspark.sql import functions as F

    (
        spark.range(n, numPartitions=partitions)
        .mapInArrow(
            generate,
            "item_id BIGINT, model_version STRING, content_hash STRING, embedding ARRAY<FLOAT>",
        )
        .withColumn("computed_at", F.current_timestamp())
        .write.format("delta")
        .mode("overwrite")
        .saveAsTable(table)
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--k", type=int, nargs="+", default=[192, 4096])
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--out", default="bench/out/assign_throughput.json")
    args = parser.parse_args()

    from courier.features.assign import assign_items
    from courier.features.cluster import cluster_embeddings
    from courier.samples.build import ITEM_IMAGES_SCHEMA_DDL

    warehouse = Path(tempfile.mkdtemp(prefix="courier-bench-assign-"))
    results = []
    try:
        for k in args.k:
            database = f"bench_assign_{k}"
            cfg = load_config(
                "local",
                [
                    *session_overrides(warehouse, master=args.master),
                    f"tables.database={database}",
                    f"cluster.k={k}",
                    "cluster.niter=3",
                ],
            )
            spark = build_spark_session(cfg.spark, database=database)
            synthetic_embeddings(
                spark, cfg.tables.qualified("item_embeddings"), args.items, args.d, 8
            )
            # The analyst views refreshed at the end of assign read these; empty here.
            spark.createDataFrame([], ITEM_IMAGES_SCHEMA_DDL).write.format("delta").saveAsTable(
                cfg.tables.qualified("item_images")
            )
            spark.createDataFrame(
                [], "item_id BIGINT, event_ts TIMESTAMP, clicked INT, dt DATE"
            ).write.format("delta").saveAsTable(cfg.tables.qualified("raw_impressions"))
            cluster_embeddings(spark, cfg)
            t0 = time.perf_counter()
            run = assign_items(spark, cfg)
            total = time.perf_counter() - t0
            search = run.record.metrics["ms.assign"] / 1000
            results.append(
                {
                    "items": args.items,
                    "k": k,
                    "assign_s": total,
                    "search_phase_s": search,
                    "items_per_s": args.items / total,
                    "search_items_per_s": args.items / search,
                }
            )
            print(
                f"{args.items:,} items, k={k:,}, {args.master}, load {os.getloadavg()[0]:.1f}: "
                f"assign {total:.1f}s ({args.items / total:,.0f} items/s end to end; search phase "
                f"{search:.1f}s, {args.items / search:,.0f} items/s)",
                flush=True,
            )
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(warehouse, ignore_errors=True)


if __name__ == "__main__":
    main()
