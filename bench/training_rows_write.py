"""Writing courier_training_rows: the build's writer
settings against the alternatives, in one process.

    .venv/bin/python bench/training_rows_write.py --page-views 250000   # 2.5M impressions

Builds one synthetic shop (not timed), then writes its training rows for the
whole range once per variant, alternating the variants over --repeats rounds
(the machine is shared: compare within a round). Every variant attaches the
images the same way (courier/samples/training_rows.py) and changes one writer
setting from what build_samples uses:

- as built: no dictionary, one concurrent writer per dt, Arrow batches of ~128 MB;
- sort by dt: Spark's default of sorting the image rows by dt before writing;
- dictionary: Parquet dictionary encoding on (the Parquet default);
- 512-row batches: small Arrow batches.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from courier.config import load_config
from courier.demo import world_date_range
from courier.samples.build import build_samples
from courier.samples.training_rows import training_rows
from courier.spark import build_spark_session, session_conf
from courier.tables import date_range_predicate
from courier.world.warehouse import write_world
from shops import session_overrides, shop_overrides

VARIANTS = {
    "as built": {},
    "sort by dt": {"spark.sql.maxConcurrentOutputFileWriters": "0"},
    "dictionary": {"parquet.enable.dictionary": "true"},
    "512-row batches": {"spark.sql.execution.arrow.maxRecordsPerBatch": "512"},
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--page-views", type=int, default=250_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="bench/out/training_rows_write.json")
    args = parser.parse_args()

    warehouse = Path(tempfile.mkdtemp(prefix="courier-bench-"))
    cfg = load_config(
        "local", session_overrides(warehouse) + shop_overrides("bench_rows", args.page_views)
    )
    spark = build_spark_session(cfg.spark, database=cfg.tables.database)
    results: dict[str, list[float]] = {name: [] for name in VARIANTS}
    try:
        write_world(spark, cfg)
        start, end = world_date_range(cfg)
        built = build_samples(spark, cfg, start, end)  # also the warm-up
        samples = spark.table(cfg.tables.qualified("courier_samples")).where(
            date_range_predicate(start, end)
        )
        n_rows = built.samples.metrics["page_views_kept"]
        for round_ in range(args.repeats):
            for name, change in VARIANTS.items():
                rows = training_rows(
                    samples,
                    spark.table(cfg.tables.qualified("item_images")),
                    cfg.tables.qualified("item_images"),
                    cfg.spark.shuffle_partitions,
                    cfg.samples.l_pv + cfg.samples.l_click,
                )
                settings = {
                    **rows.writer_settings(cfg.samples.rows_per_row_group, (end - start).days + 1),
                    **change,
                }
                target = warehouse / "variant"
                t0 = time.perf_counter()
                with session_conf(spark, settings):
                    rows.rows.write.format("delta").mode("overwrite").partitionBy("dt").save(
                        str(target)
                    )
                seconds = time.perf_counter() - t0
                rows.release()
                written_gb = sum(f.stat().st_size for f in target.rglob("*.parquet")) / 1e9
                # an overwrite keeps the old files: 5 GB a variant at 10M impressions
                shutil.rmtree(target)
                results[name].append(round(seconds, 1))
                print(
                    f"round {round_ + 1} {name:<16} {seconds:6.1f} s  {n_rows / seconds:8,.0f} "
                    f"rows/s  {written_gb:.2f} GB of Parquet",
                    flush=True,
                )
    finally:
        spark.stop()
        shutil.rmtree(warehouse, ignore_errors=True)
    base = min(results["as built"])
    print(f"{n_rows:,} training rows ({cfg.samples.l_pv + cfg.samples.l_click} images each)")
    for name, seconds in results.items():
        print(
            f"{name:<16} best {min(seconds):6.1f} s  ratio to as built {min(seconds) / base:4.2f}  "
            f"all {seconds}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": n_rows, "seconds": results}, indent=2))


if __name__ == "__main__":
    main()
