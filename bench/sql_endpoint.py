"""The analysts' SQL endpoint against a cold `courier sql`: latency of the README's analyst queries.

    .venv/bin/python bench/sql_endpoint.py        # the demo warehouse (after `make demo`)
    .venv/bin/python bench/sql_endpoint.py --runs 2 --cold-runs 1 --cold-query courier_samples \
        --set spark.warehouse_dir=/tmp/wh ...   # a warehouse without features: views fail, reported

In one run, on the warehouse of ``--profile``/``--set``:

1. cold: ``courier sql --no-endpoint`` (a JVM, a Spark session and the catalog per query, what
   analysts had before the endpoint), ``--cold-runs`` times on the cluster_summary query;
2. ``courier sql-server start`` (timed),
unless an endpoint is up already (then it is used and left up);
3. quiet: each README query ``--runs`` times over one open PyHive connection (a BI tool or a
   notebook) and ``--runs`` times as a ``courier sql`` process (a new Python each time, through the
   endpoint);
4. writing: the same while a nightly ``courier build-samples`` for one day (default: the newest
   ``dt`` of courier_samples; idempotent, it rewrites that day) runs, started again if it ends
   before the runs do; each run records whether a build was running.

Median and p95 (nearest rank) per query and mode; JSON in bench/out/sql_endpoint.json. A query
that fails (a view missing in a warehouse without features) is reported with its error.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from courier.config import PROJECT_ROOT, load_config
from courier.sql_server import (
    endpoint_for,
    server_message,
    start_sql_server,
    stop_sql_server,
    warehouse_path,
)

COURIER = [sys.executable, "-m", "jobs.cli"]
OUT = PROJECT_ROOT / "bench" / "out" / "sql_endpoint.json"


def readme_queries(database: str) -> list[str]:
    """The README's `courier sql` examples, on ``database``."""
    queries = re.findall(
        r'^\.venv/bin/courier sql "(.+)"$', (PROJECT_ROOT / "README.md").read_text(), re.M
    )
    return [re.sub(r"\bcourier\.(\w+)", rf"{database}.\1", q) for q in queries]


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]


def summary(times: list[float]) -> dict:
    return {
        "runs": len(times),
        "median_s": round(statistics.median(times), 3),
        "p95_s": round(p95(times), 3),
    }


def courier_sql(query: str, sets: list[str], *extra: str) -> float:
    """Wall time of one `courier sql` process; raises on failure."""
    t0 = time.perf_counter()
    done = subprocess.run(
        [*COURIER, "sql", query, *extra, *sets], capture_output=True, text=True, cwd=PROJECT_ROOT
    )
    if done.returncode:
        raise RuntimeError(
            done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"rc {done.returncode}"
        )
    return time.perf_counter() - t0


class Writer:
    """A nightly `courier build-samples --start D --end D`, restarted whenever it ends."""

    def __init__(self, day: str | None, sets: list[str], log: Path) -> None:
        self.day, self.sets, self.log, self.proc, self.builds = day, sets, log, None, 0

    def running(self) -> bool:
        if self.day is None:
            return False
        if self.proc is None or self.proc.poll() is not None:
            with open(self.log, "ab") as out:
                self.proc = subprocess.Popen(
                    [*COURIER, "build-samples", "--start", self.day, "--end", self.day, *self.sets],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=PROJECT_ROOT,
                )
            self.builds += 1
        return True

    def finish(self) -> None:
        if self.proc is not None:
            self.proc.wait()  # never killed: the warehouse is left as a finished build leaves it


def measure(
    endpoint, queries: list[str], runs: int, sets: list[str], writer: Writer | None
) -> dict:
    """Each query ``runs`` times over one connection and as a `courier sql` process."""
    results = {}
    with endpoint.connect() as connection:
        cursor = connection.cursor()
        for query in queries:
            entry: dict = {}
            try:
                for mode in ("connection", "courier_sql"):
                    times, overlapped = [], 0
                    for _ in range(runs):
                        overlapped += bool(writer and writer.running())
                        t0 = time.perf_counter()
                        if mode == "connection":
                            cursor.execute(query)
                            cursor.fetchall()
                            times.append(time.perf_counter() - t0)
                        else:
                            times.append(courier_sql(query, sets))
                    entry[mode] = {**summary(times), "runs_while_writing": overlapped}
            except Exception as exc:  # noqa: BLE001 - reported per query, the others still run
                entry["error"] = server_message(exc).splitlines()[0][:300]
            results[query] = entry
            print(f"  {query[:90]}: {entry}", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", default="local")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--runs", type=int, default=20, help="runs per query and mode (default 20)")
    parser.add_argument(
        "--cold-runs", type=int, default=3, help="cold `courier sql` runs (default 3)"
    )
    parser.add_argument(
        "--writer-date",
        help="the day build-samples rewrites (default: newest dt of courier_samples)",
    )
    parser.add_argument(
        "--no-writer", action="store_true", help="skip the measurements while a build writes"
    )
    parser.add_argument("--port", type=int, default=10000)
    parser.add_argument(
        "--cold-query",
        default="cluster_summary",
        help="the README query (by a word of it) timed cold (default: the cluster_summary view)",
    )
    args = parser.parse_args()
    cfg = load_config(args.profile, args.set)
    sets = [f"--profile={args.profile}", *(f"--set={s}" for s in args.set)]
    queries = readme_queries(cfg.tables.database)
    cold_query = next(q for q in queries if args.cold_query in q)
    report: dict = {"warehouse": str(warehouse_path(cfg.spark)), "runs": args.runs}

    print(f"cold `courier sql --no-endpoint`, {args.cold_runs} runs: {cold_query}", flush=True)
    report["cold_courier_sql"] = {
        "query": cold_query,
        **summary([courier_sql(cold_query, sets, "--no-endpoint") for _ in range(args.cold_runs)]),
    }
    print(f"  {report['cold_courier_sql']}", flush=True)

    endpoint, started = endpoint_for(cfg.spark), False
    if endpoint is None:
        t0 = time.perf_counter()
        endpoint, started = start_sql_server(cfg.spark, port=args.port), True
        report["server_start_s"] = round(time.perf_counter() - t0, 1)
        print(f"endpoint started in {report['server_start_s']} s", flush=True)
    try:
        print(f"quiet, {args.runs} runs per query and mode:", flush=True)
        report["quiet"] = measure(endpoint, queries, args.runs, sets, None)
        if not args.no_writer:
            day = args.writer_date or _newest_day(endpoint, cfg.tables.qualified("courier_samples"))
            writer = Writer(day, sets, OUT.with_suffix(".writer.log"))
            print(f"while `courier build-samples --start {day} --end {day}` writes:", flush=True)
            report["writing"] = {"day": day, **measure(endpoint, queries, args.runs, sets, writer)}
            writer.finish()
            report["writing"]["builds"] = writer.builds
    finally:
        if started:
            stop_sql_server(endpoint.warehouse)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))
    print(f"wrote {OUT}")
    return 0


def _newest_day(endpoint, table: str) -> str:
    with endpoint.connect() as connection:
        cursor = connection.cursor()
        cursor.execute(f"SELECT dt FROM {table} GROUP BY dt ORDER BY dt DESC LIMIT 1")
        return str(cursor.fetchall()[0][0])


if __name__ == "__main__":
    sys.exit(main())
