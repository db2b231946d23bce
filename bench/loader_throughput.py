"""Training-loader throughput: decoded images/s of one rank's BatchSource over a built shop.

    .venv/bin/python bench/loader_throughput.py           # demo-size shop, workers 1 and 2
    .venv/bin/python bench/loader_throughput.py --page-views 10000 --image-size 32 --workers 1 2 4

The shop (synthetic world + build_samples) is built once into
``--warehouse`` (kept between runs; ``--rebuild`` to redo it) and not timed.
Then, for each loader kind and worker count, whole epochs are read as training
reads them (world_size 1, so every file of the pinned snapshot), without a
model: the numbers are the ceiling the loader puts on a training step.

images/s counts the real (non-padding) images decoded; rows/s the page views.
"first batch s" is the latency from ``batches()`` to the first batch (reader
start-up + the first shuffle window).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from courier.config import TrainConfig, load_config
from courier.data import make_batch_source, pin_training_snapshot
from courier.demo import world_date_range
from courier.samples.build import build_samples
from courier.spark import build_spark_session
from courier.world.warehouse import write_world

DB = "courier_bench_loader"


def _build_if_needed(args: argparse.Namespace):
    cfg = load_config(
        "local",
        [
            f"spark.warehouse_dir={args.warehouse}",
            f"spark.master={args.master}",
            "spark.ui_enabled=false",
            f"spark.driver_memory={args.driver_memory}",
            f"tables.database={DB}",
            f"world.n_page_views={args.page_views}",
            f"world.n_items={args.items}",
            f"world.n_users={args.users}",
            f"world.days={args.days}",
            f"world.image_size={args.image_size}",
            f"samples.image_size={args.image_size}",
            f"samples.rows_per_row_group={args.rows_per_row_group}",
            "samples.max_event_ts=2030-01-01T00:00:00",
        ],
    )
    spark = build_spark_session(cfg.spark, database=DB)
    table = cfg.tables.qualified("courier_training_rows")
    marker = Path(args.warehouse) / f"{DB}.built.json"
    wanted = {
        k: getattr(args, k)
        for k in ("page_views", "items", "users", "days", "image_size", "rows_per_row_group")
    }
    if (
        args.rebuild
        or not marker.exists()
        or json.loads(marker.read_text()) != wanted
        or not spark.catalog.tableExists(table)
    ):
        spark.sql(f"DROP DATABASE IF EXISTS {DB} CASCADE")
        spark.sql(f"CREATE DATABASE {DB}")
        t0 = time.perf_counter()
        write_world(spark, cfg)
        build_samples(spark, cfg, *world_date_range(cfg))
        print(f"built the shop in {time.perf_counter() - t0:.0f}s", flush=True)
        marker.write_text(json.dumps(wanted))
    snapshot = pin_training_snapshot(spark, table)
    spark.stop()
    return snapshot


def _measure(snapshot, kind: str, workers: int, batch_size: int, epochs: int) -> dict:
    source = make_batch_source(
        snapshot,
        rank=0,
        world_size=1,
        batch_size=batch_size,
        seed=0,
        workers=workers,
        kind=kind,
        shuffle_window=TrainConfig().shuffle_window,
        group_by_query=False,
    )
    images = rows = 0
    first_batch = []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        start = time.perf_counter()
        for i, batch in enumerate(source.batches(epoch)):
            if i == 0:
                first_batch.append(time.perf_counter() - start)
            images += int((batch["pv_labels"] >= 0).sum()) + int(batch["click_mask"].sum())
            rows += len(batch["request_keys"])
    seconds = time.perf_counter() - t0
    return {
        "kind": kind,
        "workers": workers,
        "epochs": epochs,
        "rows": rows,
        "images": images,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "images_per_s": round(images / seconds),
        "first_batch_s": round(sum(first_batch) / len(first_batch), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--warehouse", default="bench/out/loader-warehouse")
    parser.add_argument(
        "--rebuild", action="store_true", help="rebuild the shop even if one of this size exists"
    )
    parser.add_argument("--page-views", type=int, default=40_000, help="world size (demo: 40000)")
    parser.add_argument("--items", type=int, default=3_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--rows-per-row-group", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--kinds", nargs="+", default=["petastorm", "pyarrow"])
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="4g")
    parser.add_argument("--out", default="bench/out/loader_throughput.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    snapshot = _build_if_needed(args)
    print(
        f"snapshot {snapshot.table} v{snapshot.version}: {snapshot.total_rows:,} rows in "
        f"{len(snapshot.files)} files, l_pv={snapshot.l_pv} l_click={snapshot.l_click} image "
        f"{snapshot.image_size}px, batch {args.batch_size}",
        flush=True,
    )
    # One untimed epoch first: the OS page cache then holds the files for every measured run alike.
    _measure(snapshot, args.kinds[0], 1, args.batch_size, 1)
    results = []
    for kind in args.kinds:
        for workers in args.workers:
            row = _measure(snapshot, kind, workers, args.batch_size, args.epochs)
            results.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'kind':<10} {'workers':>7} {'rows/s':>8} {'images/s':>9} {'first batch s':>13}")
    for r in results:
        print(
            f"{r['kind']:<10} {r['workers']:>7} {r['rows_per_s']:>8,} {r['images_per_s']:>9,} "
            f"{r['first_batch_s']:>13.2f}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {"snapshot": snapshot.summary(), "args": vars(args), "results": results}, indent=2
        )
    )


if __name__ == "__main__":
    main()
