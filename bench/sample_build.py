"""Sample-build throughput on local Spark: impressions/s end to end at 1x, 4x, 16x input.

    .venv/bin/python bench/sample_build.py        # 1x = 62,500 page views = 625k impressions
    .venv/bin/python bench/sample_build.py --scales 1 4 16 --base-page-views 62500

For each scale a synthetic shop is generated and written (not timed), then
``build_samples`` runs over its whole date range (timed: item images, checks,
samples, training rows, reconciliation, all Delta writes). Throughput is raw
impressions in the range / build seconds; the scaling exponent b comes from
time ~ size^b fitted over the scales (b = 1 is linear). All scales run in one
process, one SparkSession, so they share the machine's state (see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

from courier.config import load_config
from courier.demo import world_date_range
from courier.samples.build import SORT_AGGREGATE, build_samples
from courier.spark import build_spark_session, session_conf
from courier.world.warehouse import write_world
from shops import session_overrides, shop_overrides


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--base-page-views", type=int, default=62_500)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--shuffle-partitions", type=int, default=8)
    parser.add_argument("--driver-memory", default="8g")
    parser.add_argument("--out", default="bench/out/sample_build.json")
    parser.add_argument(
        "--explain", action="store_true", help="also write the physical plans to bench/out/"
    )
    args = parser.parse_args()

    warehouse = Path(tempfile.mkdtemp(prefix="courier-bench-"))
    base = load_config(
        "local",
        session_overrides(warehouse, args.master, args.shuffle_partitions, args.driver_memory),
    )
    spark = build_spark_session(base.spark, database=base.tables.database)
    results = []
    try:
        # Warm-up (not reported): the first build in a fresh JVM pays for JIT and class loading.
        warm = base.replace(
            [
                "tables.database=bench_warmup",
                "world.n_page_views=2000",
                "world.n_users=300",
                "world.n_items=300",
                "world.days=3",
            ]
        )
        spark.sql("CREATE DATABASE IF NOT EXISTS bench_warmup")
        write_world(spark, warm)
        build_samples(spark, warm, *world_date_range(warm))
        for scale in args.scales:
            pvs = args.base_page_views * scale
            cfg = base.replace(shop_overrides(f"bench_x{scale}", pvs))
            spark.sql(f"CREATE DATABASE IF NOT EXISTS {cfg.tables.database}")
            t0 = time.perf_counter()
            world = write_world(spark, cfg)
            gen_s = time.perf_counter() - t0
            start, end = world_date_range(cfg)
            t0 = time.perf_counter()
            built = build_samples(spark, cfg, start, end)
            build_s = time.perf_counter() - t0
            m = built.samples.metrics
            row = {
                "scale": scale,
                "page_views": pvs,
                "impressions": m["impressions_in"],
                "items": world.metrics["items"],
                "samples": m["page_views_kept"],
                "generate_s": round(gen_s, 1),
                "build_s": round(build_s, 1),
                "impressions_per_s": round(m["impressions_in"] / build_s),
                "phases_s": {
                    **{
                        f"items.{k[3:]}": round(v / 1000, 1)
                        for k, v in built.items.metrics.items()
                        if k.startswith("ms.")
                    },
                    **{k[3:]: round(v / 1000, 1) for k, v in m.items() if k.startswith("ms.")},
                },
            }
            results.append(row)
            print(json.dumps(row), flush=True)
            if args.explain:
                Path("bench/out").mkdir(parents=True, exist_ok=True)
                # the setting the build plans page_views under
                with session_conf(spark, SORT_AGGREGATE):
                    # views of the last build
                    plan = spark.sql("EXPLAIN FORMATTED SELECT * FROM samples_draft")
                Path(f"bench/out/plan_samples_draft_x{scale}.txt").write_text(plan.first()[0])
    finally:
        spark.stop()
        shutil.rmtree(warehouse, ignore_errors=True)

    if len(results) > 1:
        xs = [math.log(r["impressions"]) for r in results]
        ys = [math.log(r["build_s"]) for r in results]
        n = len(xs)
        mx, my = sum(xs) / n, sum(ys) / n
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
            (x - mx) ** 2 for x in xs
        )
        ratio = results[-1]["build_s"] / results[0]["build_s"]
        size_ratio = results[-1]["impressions"] / results[0]["impressions"]
        print(f"scaling exponent b = {slope:.2f}; {size_ratio:.1f}x data took {ratio:.1f}x time")
    print(f"{'scale':>5} {'impressions':>12} {'build s':>8} {'impr/s':>9}  phases (s)")
    for r in results:
        print(
            f"{r['scale']:>5} {r['impressions']:>12,} {r['build_s']:>8.1f} "
            f"{r['impressions_per_s']:>9,}  {r['phases_s']}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
