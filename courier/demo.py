"""The end-to-end demo on the embedded default: every stage that exists, then a summary."""

from __future__ import annotations

import datetime as dt

from pyspark.sql import SparkSession, functions as F

from courier.config import CourierConfig
from courier.experiment.report import ExperimentSummary
from courier.experiment.run import encoder_window, run_experiment
from courier.features.assign import assign_items
from courier.features.cluster import cluster_embeddings
from courier.features.embed import embed_items
from courier.features.report import write_report
from courier.features.views import FEATURE_VIEWS
from courier.samples.build import build_samples
from courier.status import describe_tables
from courier.train.launch import run_training
from courier.world.warehouse import write_world

# What `courier demo` changes under the user's --set (which wins): it trains the small CNN's
# recipe (conf/local.yaml: 400 steps; fewer stay at random init's share, docs/CTR.md section 7)
# at 32 px, a few minutes on CPU (64 px is 2.4x slower per step), and skips the held-out
# evaluation of the initial weights (27 s; the final model's stays).
DEMO_DEFAULTS = ("samples.image_size=32", "train.eval_init_baseline=false")
# The short CTR comparison of the demo: no feature, the oracle and the COURIER model the
# demo just published, one seed, three epochs of a CTR model with 8-wide embeddings (faster
# than the default 16: docs/BENCHMARKS.md; `courier experiment` runs the whole table).
DEMO_EXPERIMENT = (
    "experiment.variants=[none,oracle,published]",
    "experiment.seeds=[0]",
    "experiment.usages=[]",
    "experiment.out_dir=warehouse/demo-experiment",
    "experiment.results_md=warehouse/demo-experiment/RESULTS.md",
    "ctr.max_epochs=3",
    "ctr.embedding_dim=8",
)


def world_date_range(cfg: CourierConfig) -> tuple[dt.date, dt.date]:
    start = dt.date.fromisoformat(cfg.world.start_date)
    return start, start + dt.timedelta(days=cfg.world.days - 1)


def describe_views(spark: SparkSession, cfg: CourierConfig) -> str:
    """Each analyst view with its row count, and a peek at the cluster summary."""
    lines = [f"{'view':<36} {'rows':>10}"]
    for view in FEATURE_VIEWS:
        name = cfg.tables.qualified(view)
        lines.append(f"{name:<36} {spark.table(name).count():>10,}")
    summary = (
        spark.table(cfg.tables.qualified("cluster_summary"))
        .orderBy(F.col("items").desc())
        .limit(5)
        .select(
            "image_cluster_id", "items", "top_category", "top_category_share", "mean_similarity"
        )
        .collect()
    )
    lines.append(
        "largest clusters (id: items, top category and its share, mean cosine to the centroid):"
    )
    lines += [
        f"  {r['image_cluster_id']:>5}: {r['items']:>5} items, {r['top_category']} "
        f"{r['top_category_share']:.0%}, {r['mean_similarity']:.3f}"
        for r in summary
    ]
    return "\n".join(lines)


def _short_experiment(spark: SparkSession, cfg: CourierConfig) -> ExperimentSummary:
    """DEMO_EXPERIMENT from scratch: the demo rebuilt the shop, so earlier results are stale."""
    import shutil

    from courier.spark import resolve_path

    exp_cfg = cfg.replace(list(DEMO_EXPERIMENT))
    shutil.rmtree(resolve_path(exp_cfg.experiment.out_dir), ignore_errors=True)
    return run_experiment(spark, exp_cfg)


def run_demo(spark: SparkSession, cfg: CourierConfig) -> str:
    """Generate the shop, build its samples, train briefly,
    embed -> cluster -> assign, report, summarise."""
    world = write_world(spark, cfg)
    start, end = world_date_range(cfg)
    built = build_samples(spark, cfg, start, end)
    # The published model is scored by the short experiment:
    # it learns from the CTR training days only.
    trained = run_training(cfg, spark=spark, dates=encoder_window(cfg, start, end))
    embedded = embed_items(spark, cfg)
    clustered = cluster_embeddings(spark, cfg)
    assigned = assign_items(spark, cfg)
    report = write_report(spark, cfg)
    experiment = _short_experiment(spark, cfg)
    example = (
        spark.table(cfg.tables.qualified("courier_samples"))
        .orderBy("event_ts", "request_id")
        .select("request_id", "user_id", "event_ts", "pv_item_ids", "pv_labels", "click_item_ids")
        .first()
    )
    q = cfg.tables.qualified
    parts = [
        world.summary(),
        built.items.summary(),
        built.samples.summary(),
        trained.summary(),
        embedded.summary(),
        clustered.summary(),
        assigned.summary(),
        "tables:\n" + describe_tables(spark, cfg),
        "views:\n" + describe_views(spark, cfg),
        report.summary(),
        "CTR lift of the published Cluster-IDs (short experiment; the full table: courier "
        "experiment):\n" + experiment.table() + f"\n  report: {experiment.files['report']}",
        f"example sample: {example.asDict() if example else None}",
        "query them:\n"
        f'  .venv/bin/courier sql "SELECT * FROM {q("courier_samples")} LIMIT 5"\n'
        f'  .venv/bin/courier sql "SELECT * FROM {q("cluster_summary")} ORDER BY items DESC"\n'
        f'  .venv/bin/courier sql "SELECT * FROM {q("category_clusters")} '
        "WHERE category = 'bags'\"",
    ]
    return "\n\n".join(parts)
