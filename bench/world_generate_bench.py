"""Time the synthetic shop generator and report its click statistics.

    .venv/bin/python bench/world_generate_bench.py --preset demo
    .venv/bin/python bench/world_generate_bench.py --preset 10m

Items (with images) are generated up front; impressions are streamed batch
by batch and only aggregated, as the Spark writer would consume them.
"""

from __future__ import annotations

import argparse
import resource
import time
from dataclasses import asdict

from courier.world import WorldConfig, generate_world
from courier.world.stats import click_stats

PRESETS: dict[str, dict[str, int]] = {
    "demo": {},
    "10m": {"n_items": 20_000, "n_users": 100_000, "n_page_views": 1_000_000},
}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    args = parser.parse_args()
    cfg = WorldConfig(**PRESETS[args.preset])

    t0 = time.perf_counter()
    world = generate_world(cfg)
    t_items = time.perf_counter() - t0
    print(
        f"items+users: {t_items:.1f}s  raw_items {world.items.nbytes / 1e6:.1f} MB "
        f"({cfg.n_items} items, {cfg.image_size}px PNG)"
    )

    sizes: list[tuple[int, int]] = []

    def timed_batches():
        for batch in world.impression_batches():
            sizes.append((batch.num_rows, batch.nbytes))
            yield batch

    t1 = time.perf_counter()
    stats = click_stats(world.item_styles, world.user_preferences, timed_batches())
    t_imp = time.perf_counter() - t1
    rows = sum(r for r, _ in sizes)
    print(
        f"impressions: {rows} rows in {len(sizes)} batches, {t_imp:.1f}s "
        f"(generation + stats); largest batch {max(r for r, _ in sizes)} rows, "
        f"{max(b for _, b in sizes) / 1e6:.1f} MB Arrow"
    )
    print(f"total: {t_items + t_imp:.1f}s, peak RSS {_peak_rss_mb():.0f} MB")
    for key, value in asdict(stats).items():
        print(f"  {key}: {value}")


if __name__ == "__main__":
    main()
