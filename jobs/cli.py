"""The ``courier`` command: one subcommand per stage.

    courier generate-world                      # synthetic shop -> raw_* tables
    courier build-samples --start D --end D     # raw_* -> item_images, courier_samples,
                                                # courier_training_rows
    courier train [--run-name N] [--start D --end D] [--no-spark] [--resume RUN]
                                                # COURIER pre-training on a pinned
                                                # courier_training_rows snapshot
    courier evaluate                            # candidate vs production on the candidate's
                                                # held-out rows
    courier promote [--skip-exit-code N]        # production alias -> candidate if it wins by
                                                # promote.margin
    courier embed [--model URI] [--full]        # item_images -> item_embeddings (new or changed
                                                # images only)
    courier cluster                             # item_embeddings -> a new cluster_version (faiss
                                                # k-means)
    courier assign [--cluster-version V]        # every item -> its nearest centroid:
                                                # item_image_features + views
    courier report [--out DIR]                  # cluster image grid and embedding map (PNGs)
    courier export-features --format mmrec OUT  # image_feat.npy + i_id_mapping.csv for MMRec
    courier ctr-samples --start D --end D       # raw_impressions + as-of item_image_features
                                                # -> ctr_samples
    courier export-training-set FILE            # encoder rows + decoded images + CTR rows before
                                                # the test days
    courier experiment                          # the CTR comparison of experiment.variants:
                                                # RESULTS.md + report
    courier demo                                # everything above on the embedded default, then
                                                # a summary
    courier status                              # latest run per stage, rejects, table versions,
                                                # aliases, clusters
    courier sql "SELECT * FROM courier.courier_samples LIMIT 5"
                                                # through the SQL endpoint when it is up
    courier sql-server start|stop|status        # the analysts' read-only JDBC/ODBC endpoint on
                                                # loopback

Every subcommand takes ``--profile`` (conf/<profile>.yaml or a path) and
repeatable ``--set section.key=value`` overrides, and logs the resolved config.
The same functions run under spark-submit through jobs/<stage>.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from courier.config import CourierConfig, load_config

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger("courier")


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO date (YYYY-MM-DD): {text!r}") from exc


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("py4j", "matplotlib", "PIL", "urllib3", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _config(args: argparse.Namespace, defaults: tuple[str, ...] = ()) -> CourierConfig:
    """The profile, then a command's own ``defaults``, then the user's ``--set`` overrides."""
    cfg = load_config(args.profile, [*defaults, *args.set])
    log.info("resolved config (profile %s):\n%s", args.profile, cfg.to_log_yaml())
    return cfg


def _spark(cfg: CourierConfig) -> SparkSession:
    from courier.spark import build_spark_session

    return build_spark_session(cfg.spark, database=cfg.tables.database)


def cmd_generate_world(args: argparse.Namespace) -> int:
    from courier.world.warehouse import write_world

    cfg = _config(args)
    record = write_world(_spark(cfg), cfg)
    print(record.summary())
    return 0


def cmd_build_samples(args: argparse.Namespace) -> int:
    from courier.samples.build import build_samples

    cfg = _config(args)
    result = build_samples(_spark(cfg), cfg, args.start, args.end)
    print(result.items.summary())
    print(result.samples.summary())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from courier.train import TrainingError
    from courier.train.launch import existing_run_dir, run_training

    cfg = _config(args)
    if (args.start is None) != (args.end is None):
        raise SystemExit("courier train: --start and --end go together")
    dates = (args.start, args.end) if args.start else None
    snapshot = None
    try:
        if args.snapshot:
            from courier.data.snapshot import TrainingSnapshot

            snapshot = TrainingSnapshot.from_dict(json.loads(Path(args.snapshot).read_text()))
        # Spark is needed to pin a new snapshot,
        # and by TorchDistributor; not to resume with --no-spark.
        needs_pin = snapshot is None and existing_run_dir(cfg, args.run_name, args.resume) is None
        spark = _spark(cfg) if (needs_pin or not args.no_spark) else None
        result = run_training(
            cfg,
            spark=spark,
            run_name=args.run_name,
            resume=args.resume,
            snapshot=snapshot,
            dates=dates,
            distributed=not args.no_spark,
        )
    except TrainingError as exc:
        log.error("%s", exc)
        print(f"courier train: error: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from courier.train.promotion import evaluate_candidate

    print(evaluate_candidate(_config(args)).summary())
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from courier.train.promotion import promote_candidate

    decision = promote_candidate(_config(args))
    print(decision.summary())
    # A scheduler's "skipped" (Airflow: skip_on_exit_code): the steps after promotion do not run.
    return 0 if decision.promoted or args.skip_exit_code is None else args.skip_exit_code


def cmd_embed(args: argparse.Namespace) -> int:
    from courier.features.embed import embed_items

    cfg = _config(args)
    print(embed_items(_spark(cfg), cfg, model_uri=args.model, full=args.full).summary())
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from courier.features.cluster import cluster_embeddings

    cfg = _config(args)
    print(cluster_embeddings(_spark(cfg), cfg).summary())
    return 0


def cmd_assign(args: argparse.Namespace) -> int:
    from courier.features.assign import assign_items

    cfg = _config(args)
    print(assign_items(_spark(cfg), cfg, cluster_version=args.cluster_version).summary())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from courier.features.report import write_report

    cfg = _config(args)
    print(write_report(_spark(cfg), cfg, args.out).summary())
    return 0


def cmd_export_features(args: argparse.Namespace) -> int:
    from courier.features.export import export_mmrec

    cfg = _config(args)
    print(export_mmrec(_spark(cfg), cfg, args.out_dir, model_version=args.model_version).summary())
    return 0


def cmd_ctr_samples(args: argparse.Namespace) -> int:
    from courier.ctr.samples import build_ctr_samples

    cfg = _config(args)
    print(build_ctr_samples(_spark(cfg), cfg, args.start, args.end).summary())
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from courier.experiment.run import run_experiment

    cfg = _config(args)
    summary = run_experiment(_spark(cfg), cfg)
    print(summary.table())
    print(f"\nreport: {summary.files['report']}\nresults: {summary.files['results_md']}")
    return 0


def cmd_export_training_set(args: argparse.Namespace) -> int:
    from courier.experiment.run import date_range
    from courier.experiment.trainset import export_training_set

    cfg = _config(args)
    spark = _spark(cfg)
    start, end = date_range(spark, cfg)
    ts = export_training_set(spark, cfg, start, end, Path(args.out))
    size = Path(args.out).stat().st_size / 1e6
    print(
        f"{args.out}: {len(ts.item_ids):,} items at {ts.meta['image_size']} px, "
        f"{len(ts.pv_items):,} training rows of "
        f"{ts.meta['encoder_window'][0]}..{ts.meta['encoder_window'][1]} "
        f"(history {ts.meta['l_click']}), {len(ts.ctr['label']):,} CTR rows up to the last "
        f"validation day {ts.meta['split']['validation'][1]}; {size:.1f} MB"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from courier.demo import DEMO_DEFAULTS, run_demo

    cfg = _config(args, DEMO_DEFAULTS)
    print(run_demo(_spark(cfg), cfg))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from courier.status import status_report

    cfg = _config(args)
    print(status_report(_spark(cfg), cfg))
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    from courier.sql_server import endpoint_for, run_statements, warehouse_path

    cfg = _config(args)
    statements = (
        [args.query] if args.query else [s for s in sys.stdin.read().split(";") if s.strip()]
    )
    endpoint = None if args.no_endpoint else endpoint_for(cfg.spark)
    if endpoint is not None:  # no JVM here: the running endpoint answers (courier sql-server)
        run_statements(endpoint, statements, args.limit, args.truncate)
        return 0
    if not args.no_endpoint:
        print(
            f"courier sql: no SQL endpoint is up for {warehouse_path(cfg.spark)} (`courier "
            "sql-server start`); starting a Spark session of its own",
            file=sys.stderr,
        )
    spark = _spark(cfg)
    for statement in statements:
        spark.sql(statement).show(args.limit, truncate=args.truncate)
    return 0


def cmd_sql_server(args: argparse.Namespace) -> int:
    from courier.sql_server import server_status, start_sql_server, stop_sql_server, warehouse_path

    cfg = _config(args)
    warehouse = warehouse_path(cfg.spark)
    if args.action == "start":
        start_sql_server(cfg.spark, port=args.port)
    elif args.action == "stop":
        print(
            "stopped"
            if stop_sql_server(warehouse)
            else f"no SQL endpoint was running for {warehouse}"
        )
        return 0
    print(server_status(warehouse))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="courier", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--profile", default="local", help="conf/<profile>.yaml, or a path to a YAML file"
    )
    common.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set samples.l_pv=10 (repeatable)",
    )
    common.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    add("generate-world", cmd_generate_world, "generate the synthetic shop into the raw_* tables")
    p = add(
        "build-samples",
        cmd_build_samples,
        "build item_images, courier_samples and courier_training_rows",
    )
    p.add_argument("--start", type=_date, required=True, help="first dt (YYYY-MM-DD)")
    p.add_argument("--end", type=_date, required=True, help="last dt (YYYY-MM-DD), inclusive")
    p = add(
        "train",
        cmd_train,
        "train the COURIER image encoder (TorchDistributor + DDP), log and register it in MLflow",
    )
    p.add_argument(
        "--run-name",
        help="checkpoint folder / MLflow run name; an existing run of that name is resumed",
    )
    p.add_argument(
        "--resume", metavar="RUN", help="resume a run: its folder, its name or its MLflow run id"
    )
    p.add_argument(
        "--start", type=_date, help="first dt of courier_training_rows to train on (default: all)"
    )
    p.add_argument("--end", type=_date, help="last dt, inclusive")
    p.add_argument(
        "--snapshot",
        metavar="JSON",
        help="a pinned TrainingSnapshot (to_dict() as JSON) instead of pinning",
    )
    p.add_argument(
        "--no-spark",
        action="store_true",
        help="train in this process without TorchDistributor (Spark only to pin a new snapshot)",
    )
    add(
        "evaluate",
        cmd_evaluate,
        "score the candidate and the production model on the candidate's held-out rows",
    )
    p = add(
        "promote",
        cmd_promote,
        "move the production alias to the candidate if its evaluation beats production",
    )
    p.add_argument(
        "--skip-exit-code",
        type=int,
        metavar="N",
        help="exit with N (not 0) when the candidate is not promoted, e.g. 99 for Airflow's skip",
    )
    p = add(
        "embed",
        cmd_embed,
        "embed new or changed item images with the registered encoder (Spark UDF)",
    )
    p.add_argument(
        "--model",
        metavar="URI",
        help="MLflow model URI (default: models:/<mlflow.registered_model>@<mlflow.alias>)",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="re-embed every item, not only new images or a new model",
    )
    add(
        "cluster",
        cmd_cluster,
        "fit a new cluster version over the item embeddings (faiss spherical k-means)",
    )
    p = add(
        "assign",
        cmd_assign,
        "assign every item to its nearest centroid and publish item_image_features",
    )
    p.add_argument(
        "--cluster-version",
        type=int,
        help="the cluster version (default: assign.cluster_version or newest)",
    )
    p = add("report", cmd_report, "write the cluster image grid and the embedding map (PNGs)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: report.out_dir)")
    p = add(
        "export-features", cmd_export_features, "export the item embeddings for another toolbox"
    )
    p.add_argument("--format", choices=("mmrec",), required=True)
    p.add_argument("--model-version", help="model version to export (default: the newest embedded)")
    p.add_argument("out_dir", metavar="OUT")
    p = add(
        "ctr-samples",
        cmd_ctr_samples,
        "build ctr_samples: impressions, point-in-time history, as-of image features",
    )
    p.add_argument("--start", type=_date, required=True, help="first dt (YYYY-MM-DD)")
    p.add_argument("--end", type=_date, required=True, help="last dt (YYYY-MM-DD), inclusive")
    add(
        "experiment",
        cmd_experiment,
        "run the CTR comparison (experiment.variants x seeds), resumable; "
        "write RESULTS.md and the HTML report",
    )
    p = add(
        "export-training-set",
        cmd_export_training_set,
        "write the encoder's training rows, decoded item images and the CTR rows before the test "
        "days to one file (for bench/gpu_recipe.py and the recipe search)",
    )
    p.add_argument("out", metavar="FILE", help="the .npz to write")
    add("demo", cmd_demo, "run every stage on the embedded default and summarise the tables")
    add(
        "status",
        cmd_status,
        "the latest run of each stage, table versions and counts, model aliases, clusters",
    )
    p = add(
        "sql", cmd_sql, "run Spark SQL against the warehouse (statements on stdin when no query)"
    )
    p.add_argument("query", nargs="?")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--truncate", type=int, default=60)
    p.add_argument(
        "--no-endpoint",
        action="store_true",
        help="run in a Spark session of its own even when the SQL endpoint is up",
    )
    p = add(
        "sql-server",
        cmd_sql_server,
        "the analysts' read-only SQL endpoint (Thrift JDBC/ODBC on loopback) over the warehouse",
    )
    p.add_argument("action", choices=("start", "stop", "status"))
    p.add_argument(
        "--port", type=int, default=10000, help="TCP port on 127.0.0.1 (start; default 10000)"
    )
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that name what is wrong (a table, column,
    key, model): printed as one line, no trace."""
    from courier.catalog import CatalogUnavailableError
    from courier.config import ConfigError
    from courier.ctr.data import CtrDataError
    from courier.experiment.run import LeakageError
    from courier.experiment.trainset import TrainingSetError
    from courier.features.cluster import ClusteringError
    from courier.sql_server import SqlServerError
    from courier.tables import ConcurrentRunError, ReconciliationError, SchemaError
    from courier.tracking.models import ModelResolutionError
    from courier.train.errors import PromotionError

    return (
        ConfigError,
        SchemaError,
        ReconciliationError,
        ModelResolutionError,
        ClusteringError,
        CtrDataError,
        PromotionError,
        CatalogUnavailableError,
        ConcurrentRunError,
        LeakageError,
        TrainingSetError,
        SqlServerError,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.func(args)
    except _user_errors() as exc:
        log.error("%s", exc)
        print(f"courier {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
