"""Shared fixtures: one real local SparkSession (Delta + Derby catalog) for the whole run."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from courier.config import CourierConfig, load_config
from courier.data.snapshot import TrainingSnapshot, pin_training_snapshot

if TYPE_CHECKING:  # pytest-xdist types, for the scheduler hook at the end
    from xdist.remote import Producer
    from xdist.scheduler import Scheduling

# Naive datetimes in tests mean UTC, like the Spark session's time zone.
os.environ["TZ"] = "UTC"
time.tzset()


@pytest.fixture(scope="session")
def warehouse_dir() -> Iterator[Path]:
    from courier.catalog import stop_catalog_server

    path = Path(tempfile.mkdtemp(prefix="courier-test-wh-"))
    yield path
    stop_catalog_server(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def base_config(warehouse_dir: Path) -> CourierConfig:
    """The local profile pointed at a throw-away warehouse, sized for tests."""
    return load_config(
        "local",
        [
            f"spark.warehouse_dir={warehouse_dir}",
            # as the embedded default: a failed task gets a second attempt
            "spark.master=local[2,2]",
            "spark.shuffle_partitions=2",
            "spark.ui_enabled=false",
            "spark.driver_memory=3g",
            f"mlflow.tracking_uri=sqlite:///{warehouse_dir}/mlflow.db",
            f"train.checkpoint_dir={warehouse_dir}/checkpoints",
        ],
    )


# JVMs started by the tests' own processes (`courier` jobs, spark-submit under Airflow, the SQL
# endpoint) live for one small job: they spend their time compiling, not running hot loops. The
# C1 compiler alone starts a Spark job and runs five small queries 1.6x faster (10.7 s against
# 17.0 s, medians, 2 cores). The session's own JVM is left as it is: it runs for the whole suite,
# where C2's code pays back. A value the caller set (even empty) is kept.
SHORT_LIVED_JVM_OPTS = "-XX:TieredStopAtLevel=1"


@pytest.fixture(scope="session")
def spark(base_config: CourierConfig):
    from courier.spark import build_spark_session

    session = build_spark_session(base_config.spark, database=base_config.tables.database)
    # Set once this session's JVM runs: spark-submit reads SPARK_SUBMIT_OPTS at a JVM's start.
    set_here = "SPARK_SUBMIT_OPTS" not in os.environ
    if set_here:
        os.environ["SPARK_SUBMIT_OPTS"] = SHORT_LIVED_JVM_OPTS
    yield session
    if set_here:
        os.environ.pop("SPARK_SUBMIT_OPTS", None)
    session.stop()


def _tiny_shop(
    database: str, *, items: int, users: int, page_views: int, days: int, rows_per_row_group: int
) -> list[str]:
    """Overrides for a small 32 px shop starting 2026-01-01, with nothing rejected as future."""
    return [
        f"tables.database={database}",
        f"world.n_items={items}",
        f"world.n_users={users}",
        f"world.n_page_views={page_views}",
        f"world.days={days}",
        "world.start_date=2026-01-01",
        "world.image_size=32",
        "samples.image_size=32",
        f"samples.rows_per_row_group={rows_per_row_group}",
        "samples.max_event_ts=2026-06-01T00:00:00",
    ]


@pytest.fixture(scope="session")
def tiny_shop_overrides():
    """``tiny_shop_overrides(database, items=, users=,
    page_views=, days=, rows_per_row_group=)``."""
    return _tiny_shop


# The training shop: one small built shop shared by the training and the feature tests.
# About 1,200 training rows over 4 days, written in files of at most 64 rows, so holding
# out 25% of the files holds out (most of) the last day.
TRAIN_DB = "courier_train_test"
TRAIN_START, TRAIN_END = dt.date(2026, 1, 1), dt.date(2026, 1, 4)


@pytest.fixture(scope="session")
def shop_config(
    base_config: CourierConfig, tmp_path_factory: pytest.TempPathFactory, tiny_shop_overrides
) -> CourierConfig:
    """The shop plus training settings sized for a 2-core CPU;
    MLflow and checkpoints in a tmp folder."""
    tmp = tmp_path_factory.mktemp("train")
    shop = tiny_shop_overrides(
        TRAIN_DB, items=240, users=150, page_views=2000, days=4, rows_per_row_group=64
    )
    return base_config.replace(
        [
            *shop,
            f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db",
            "mlflow.experiment=courier-train-test",
            "mlflow.registered_model=courier-train-test-encoder",
            f"train.checkpoint_dir={tmp}/checkpoints",
            "train.batch_size=32",
            "train.epochs=20",
            "train.log_every_steps=5",
            "train.checkpoint_every_steps=20",
            "train.holdout_fraction=0.25",
            "train.eval_max_rows=512",
            "train.loader_workers=2",
        ]
    )


@pytest.fixture(scope="session")
def training_table(spark, shop_config: CourierConfig) -> str:
    """courier_training_rows of the tiny shop (qualified name)."""
    from courier.samples.build import build_samples
    from courier.world.warehouse import write_world

    spark.sql(f"DROP DATABASE IF EXISTS {TRAIN_DB} CASCADE")
    spark.sql(f"CREATE DATABASE {TRAIN_DB}")
    write_world(spark, shop_config)
    build_samples(spark, shop_config, TRAIN_START, TRAIN_END)
    return shop_config.tables.qualified("courier_training_rows")


@pytest.fixture(scope="session")
def snapshot(spark, training_table: str) -> TrainingSnapshot:
    return pin_training_snapshot(spark, training_table)


# One short registered encoder, and feature databases copied from the training shop (used by the
# feature stages' tests and the fault tests). The encoder trains 30 steps on the training shop and
# is registered under its own name. Each test module gets its own database holding copies of the
# shop's raw_items, raw_impressions, item_images and eval_item_styles, so modules that change
# images or re-fit clusters never see each other's state.
ENCODER = "courier-features-test-encoder"
COPIED_TABLES = ("raw_items", "raw_impressions", "item_images", "eval_item_styles")


@pytest.fixture(scope="session")
def encoder_config(shop_config: CourierConfig) -> CourierConfig:
    # lr 1e-3 as in the training tests: 30 steps of 1e-4 leave the embeddings nearly collapsed.
    return shop_config.replace(
        [
            "train.max_steps=30",
            "train.lr=0.001",
            f"mlflow.registered_model={ENCODER}",
            "mlflow.experiment=courier-features-test",
            "cluster.k=16",
        ]
    )


@pytest.fixture(scope="session")
def registered_encoder(spark, encoder_config: CourierConfig, training_table: str) -> str:
    """The registered model version of a 30-step encoder (alias ``candidate``)."""
    from courier.train import run_training

    result = run_training(
        encoder_config, spark=spark, run_name="features-encoder", distributed=False
    )
    assert result.model_version is not None
    return result.model_version


@pytest.fixture(scope="session")
def feature_db(
    spark,
    shop_config: CourierConfig,
    encoder_config: CourierConfig,
    registered_encoder: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[str], CourierConfig]:
    """``feature_db(name)``: a fresh database with copies of the shop's inputs; its config."""

    def make(name: str) -> CourierConfig:
        spark.sql(f"DROP DATABASE IF EXISTS {name} CASCADE")
        spark.sql(f"CREATE DATABASE {name}")
        for table in COPIED_TABLES:
            spark.table(shop_config.tables.qualified(table)).write.format("delta").saveAsTable(
                f"{name}.{table}"
            )
        reports: Path = tmp_path_factory.mktemp(f"{name}-reports")
        return encoder_config.replace([f"tables.database={name}", f"report.out_dir={reports}"])

    return make


# The test encoder's item_embeddings over the training shop's items, embedded once per session.
# Tests of the stages after embed (cluster, assign, their errors and faults) copy it instead of
# each embedding the same 240 images with the same model again (~20-30 s of Python workers
# loading torch per embed on 2 cores). Tests *of* embed run their own.
EMBEDDED_DB = "courier_embedded_test"


@pytest.fixture(scope="session")
def copy_embeddings(
    spark, feature_db: Callable[[str], CourierConfig]
) -> Callable[[CourierConfig], int]:
    """``copy_embeddings(cfg)``: the shared item_embeddings
    written into cfg's database; its row count."""
    from courier.features.embed import embed_items

    source = feature_db(EMBEDDED_DB)
    embed_items(spark, source)
    embedded = source.tables.qualified("item_embeddings")

    def copy(cfg: CourierConfig) -> int:
        table = cfg.tables.qualified("item_embeddings")
        spark.table(embedded).write.format("delta").saveAsTable(table)
        return spark.table(table).count()

    return copy


# `make test` runs two pytest-xdist workers (the machine's 2 cores; one worker leaves a third of
# them idle while JVMs and Python processes start). Each worker has its own SparkSession,
# warehouse, catalog server and MLflow store (the fixtures above are per session, on free ports).
# Work goes out one test file at a time, so that a file's module fixtures are built once, and
# tests/schedule as a whole: its two files share the packed environment (8 GB, ~50 s to build).
# The files are handed out longest first, so that the workers finish together: the DAGs alone
# take ~9 minutes. (`--dist loadgroup` would say this with marks, but its grouping is lost
# with pytest 9's node ids: pytest-dev/pytest-xdist#1386.)
LONGEST_FIRST = ("tests/schedule/", "tests/faults/", "tests/ctr/", "tests/samples/test_fuzz.py")


def _work_unit(nodeid: str) -> str:
    """The unit of work a test belongs to: tests/schedule/, or else its file."""
    path = nodeid.split("::", 1)[0]
    return "tests/schedule/" if path.startswith("tests/schedule/") else path


def _rank(nodeid: str) -> int:
    """Position in LONGEST_FIRST of the test's unit; every other file after them, in file order."""
    ranks = (i for i, prefix in enumerate(LONGEST_FIRST) if nodeid.startswith(prefix))
    return next(ranks, len(LONGEST_FIRST))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: _rank(item.nodeid))  # stable: a file's tests keep their order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Producer) -> Scheduling:
    """Work units by _work_unit, handed out in collection order (longest first)."""
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid)

    # Collection order, not xdist's default of the units with most tests first.
    config.option.loadscopereorder = False
    return ByWorkUnit(config, log)
