"""Prepare a warehouse for the Airflow test, in one process: what the nightly DAG assumes exists.

    python tests/schedule/airflow_shop.py PROFILE.yaml JARS_DIR

Generates a tiny shop, builds its first days, trains a small encoder, evaluates and
promotes it (the first model becomes production), embeds, clusters and assigns: the
state a shop is in after its first retraining. The DAG run then processes the next day.
"""
from __future__ import annotations

import datetime as dt
import sys

from courier.config import load_config
from courier.features.assign import assign_items
from courier.features.cluster import cluster_embeddings
from courier.features.embed import embed_items
from courier.samples.build import build_samples
from courier.spark import build_spark_session
from courier.train.launch import run_training
from courier.train.promotion import evaluate_candidate, promote_candidate
from courier.world_tables import write_world

FIRST_DAY, LAST_BOOTSTRAP_DAY = dt.date(2026, 1, 1), dt.date(2026, 1, 3)


def main(profile: str, jars_dir: str) -> None:
    # The DAG's profile leaves the master to spark-submit; this process starts Spark itself.
    cfg = load_config(profile, ["spark.master=local[2]", f"spark.jars_dir={jars_dir}"])
    spark = build_spark_session(cfg.spark, database=cfg.tables.database)
    write_world(spark, cfg)
    build_samples(spark, cfg, FIRST_DAY, LAST_BOOTSTRAP_DAY)
    run_training(cfg, spark=spark, run_name="bootstrap", distributed=False)
    print(evaluate_candidate(cfg).summary())
    print(promote_candidate(cfg).summary())
    embed_items(spark, cfg)
    cluster_embeddings(spark, cfg)
    assign_items(spark, cfg)
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
