"""``courier experiment``: the whole comparison table, resumable, tracked in MLflow.

    per encoder variant and seed (experiment.encoder_seeds; else once per variant):
        courier train -> embed -> cluster -> assign -> ctr-samples
        (its own exp_<variant>_s<seed>_* tables; extra k values re-cluster the same embeddings)
    per arm and seed: the DIN CTR model on the same train / validation / test days
    -> lifts against ``none`` (paired, per seed and bootstrapped) -> RESULTS.md + report.html

State lives in ``experiment.out_dir``: ``state.json`` (the encoders built, by ``encoder_key``, the
MLflow parent run) and ``results/<arm>__seed<s>.json|.npy`` per finished CTR model, so a
re-run recomputes nothing that finished and a killed run continues where it stopped.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import SparkSession

from courier import tracking
from courier.config import CourierConfig
from courier.config.experiment import encoder_builds, encoder_key, encoder_seed
from courier.ctr.data import CtrDataError, DateSplit, ImageFeatureOverride, ImageVectors
from courier.ctr.evaluate import CtrDataset, evaluate_variant, with_usage
from courier.experiment.arms import Arm, arms, base_config, variant_config
from courier.experiment.report import ExperimentSummary, summarise, write_report
from courier.experiment.state import ArmResult, ExperimentState
from courier.spark import resolve_path
from courier.tables import one_row

log = logging.getLogger(__name__)
MLFLOW_EXPERIMENT_SUFFIX = "-ctr-experiment"


def date_range(spark: SparkSession, cfg: CourierConfig) -> tuple[dt.date, dt.date]:
    """experiment.start/end, or the dt range of raw_impressions."""
    e = cfg.experiment
    if e.start and e.end:
        return dt.date.fromisoformat(e.start), dt.date.fromisoformat(e.end)
    row = one_row(
        spark.table(cfg.tables.qualified("raw_impressions")).selectExpr(
            "min(dt) AS lo", "max(dt) AS hi"
        )
    )
    if row["lo"] is None:
        raise CtrDataError(f"table {cfg.tables.qualified('raw_impressions')} is empty")
    return (
        dt.date.fromisoformat(e.start) if e.start else row["lo"],
        dt.date.fromisoformat(e.end) if e.end else row["hi"],
    )


class LeakageError(ValueError):
    """An encoder's training days reach into the CTR validation or test days it is scored on."""


def encoder_window(cfg: CourierConfig, start: dt.date, end: dt.date) -> tuple[dt.date, dt.date]:
    """The days an encoder of this experiment trains on: the CTR training days only.

    Strictly before the validation and test days, so no click those days score can shape the
    embeddings whose Cluster-IDs are scored on them (the CTR model trains on the same days).
    """
    s = cfg.ctr_samples
    return DateSplit.last_days(start, end, s.validation_days, s.test_days).train


def check_no_leakage(encoders: dict[str, dict[str, Any]], split: DateSplit) -> None:
    """Refuse encoders whose training window is unknown or reaches the validation or test days."""
    for variant, record in encoders.items():
        if "ctr_samples" in record and "train_window" not in record:
            continue  # the feature-less tables of none / oracle: no encoder
        window = record.get("train_window")
        if window is None:
            raise LeakageError(
                f"encoder {variant}: its training days are not recorded (built by an older "
                "courier, or on every day): start the experiment in a new experiment.out_dir"
            )
        last = dt.date.fromisoformat(window[1])
        if last >= split.validation[0]:
            raise LeakageError(
                f"encoder {variant} trained on {window[0]}..{window[1]}, which reaches the CTR "
                f"validation days {split.validation[0]}..{split.validation[1]} (test "
                f"{split.test[0]}..{split.test[1]}): its features would be scored on days it "
                "learned from. Train it on days before the validation days only"
            )


def published_window(cfg: CourierConfig, model_versions: tuple[str, ...]) -> list[str] | None:
    """The training days (``courier.dates`` tag) of the
    registered model behind the published features.

    None when the model trained on every day of its table ("all") or its run records no dates.
    """
    uri = tracking.resolve_tracking_uri(cfg.mlflow.tracking_uri)
    mlc = tracking.client(uri)
    windows = set()
    for version in model_versions:
        run_id = mlc.get_model_version(cfg.mlflow.registered_model, version).run_id
        if run_id is None:
            raise CtrDataError(
                f"model version {version} of {cfg.mlflow.registered_model} was registered without "
                "a training run: its training days are unknown"
            )
        dates = mlc.get_run(run_id).data.tags.get("courier.dates", "all")
        if dates == "all":
            return None
        windows.add(tuple(dates.split("..")))
    if len(windows) != 1:
        return None
    return list(windows.pop())


def build_encoder_features(
    spark: SparkSession,
    cfg: CourierConfig,
    variant: str,
    start: dt.date,
    end: dt.date,
    k_values: tuple[int, ...] = (),
    seed: int | None = None,
) -> dict[str, Any]:
    """train (on the CTR training days only) -> embed
    -> cluster -> assign -> ctr-samples for one encoder
    variant (and each extra k); ``seed``: that seed's encoder (``variant_config``)."""
    from courier.ctr.samples import build_ctr_samples
    from courier.features.assign import assign_items
    from courier.features.cluster import cluster_embeddings
    from courier.features.embed import embed_items
    from courier.train.launch import run_training

    vcfg = variant_config(cfg, variant, seed=seed)
    window = encoder_window(cfg, start, end)
    trained = run_training(
        vcfg,
        spark=spark,
        run_name=f"experiment-{encoder_key(variant, seed)}",
        dates=window,
        distributed=False,
    )
    model_uri = f"models:/{vcfg.mlflow.registered_model}/{trained.model_version}"
    embed_items(spark, vcfg, model_uri=model_uri, full=True)
    for k in (None, *k_values):
        kcfg = variant_config(cfg, variant, k, seed)
        cluster_embeddings(spark, kcfg)
        assign_items(spark, kcfg)
        build_ctr_samples(spark, kcfg, start, end)
    # The image-only baselines read item_images
    # (no behaviour, no day); COURIER reads the window's rows.
    return {
        "model_version": trained.model_version,
        "mlflow_run_id": trained.mlflow_run_id,
        "train_steps": trained.result.get("global_step", 0),
        "train_window": [window[0].isoformat(), window[1].isoformat()],
    }


def run_experiment(spark: SparkSession, cfg: CourierConfig) -> ExperimentSummary:
    """Run (or continue) the comparison of ``cfg.experiment``; write RESULTS.md and the report."""
    from courier.ctr.samples import build_ctr_samples

    e = cfg.experiment
    out_dir = Path(resolve_path(e.out_dir))
    state = ExperimentState.load(out_dir)
    if e.generate_world:
        _generate_shop(spark, cfg)
    start, end = date_range(spark, cfg)
    split = DateSplit.last_days(
        start, end, cfg.ctr_samples.validation_days, cfg.ctr_samples.test_days
    )
    # a state.json of an earlier run may hold leaky encoders
    check_no_leakage(state.encoders, split)
    parent = _parent_run(cfg, state)
    for variant, seed in encoder_builds(e):
        key = encoder_key(variant, seed)
        if key not in state.encoders:
            log.info("experiment: building the features of encoder %s", key)
            state.encoders[key] = build_encoder_features(
                spark, cfg, variant, start, end, e.k_values if variant == "courier" else (), seed
            )
            state.save()
    # none and oracle ignore or replace the image features: they share a ctr_samples table,
    # the published one when it is an arm, else one built without features.
    shared_cfg = cfg if "published" in e.variants else base_config(cfg)
    shared = "published" if "published" in e.variants else "base"
    if shared not in state.encoders:
        build_ctr_samples(spark, shared_cfg, start, end)
        state.encoders[shared] = {"ctr_samples": shared_cfg.tables.qualified("ctr_samples")}
        state.save()

    results: dict[str, list[ArmResult]] = {}
    datasets: dict[str, CtrDataset] = {}
    # the test labels every arm is scored on
    reference = _dataset(spark, shared_cfg, start, end, datasets)
    if shared == "published":
        state.encoders[shared]["train_window"] = published_window(cfg, reference.model_versions)
        check_no_leakage(state.encoders, split)
    for arm in arms(e):
        results[arm.name] = [
            _arm_result(spark, cfg, arm, seed, start, end, shared_cfg, datasets, out_dir, parent)
            for seed in e.seeds
        ]
    summary = summarise(cfg, results, reference, state)
    write_report(spark, cfg, summary, out_dir)
    tracking.client(tracking.resolve_tracking_uri(cfg.mlflow.tracking_uri)).set_terminated(
        parent, "FINISHED"
    )
    return summary


def _arm_result(
    spark: SparkSession,
    cfg: CourierConfig,
    arm: Arm,
    seed: int,
    start: dt.date,
    end: dt.date,
    shared_cfg: CourierConfig,
    datasets: dict[str, CtrDataset],
    out_dir: Path,
    parent: str,
) -> ArmResult:
    """The finished result of (arm, seed) from disk, or trained now and saved."""
    stem = out_dir / "results" / f"{arm.key}__seed{seed}"
    if stem.with_suffix(".json").is_file() and stem.with_suffix(".npy").is_file():
        return ArmResult(
            arm.name,
            seed,
            json.loads(stem.with_suffix(".json").read_text())["metrics"],
            np.load(stem.with_suffix(".npy")),
        )
    acfg = (
        shared_cfg
        if arm.variant in ("none", "oracle")
        else variant_config(cfg, arm.variant, arm.k, encoder_seed(cfg.experiment, seed))
    )
    data = _dataset(spark, acfg, start, end, datasets)
    images = None
    if arm.variant == "oracle":
        data = data.with_override(
            ImageFeatureOverride.from_table(
                spark, cfg.tables.qualified("eval_item_styles"), "style_id", "oracle"
            )
        )
    if arm.usage in ("vector", "simscore"):
        (version,) = data.model_versions or (None,)
        if version is None:
            raise CtrDataError(
                f"{acfg.tables.qualified('ctr_samples')} holds no model version for {arm.name}"
            )
        images = ImageVectors.from_table(spark, acfg.tables.qualified("item_embeddings"), version)
    log.info("experiment: CTR model %s, seed %d", arm.name, seed)
    result = evaluate_variant(data, with_usage(cfg.ctr, arm.usage, seed), arm.name, images=images)
    metrics = result.metrics()
    _log_child(cfg, parent, arm, seed, metrics)
    stem.parent.mkdir(parents=True, exist_ok=True)
    np.save(stem.with_suffix(".npy"), result.scores)
    stem.with_suffix(".json").write_text(
        json.dumps({"arm": arm.name, "seed": seed, "metrics": metrics}, indent=2)
    )
    return ArmResult(arm.name, seed, metrics, result.scores)


def _dataset(
    spark: SparkSession,
    cfg: CourierConfig,
    start: dt.date,
    end: dt.date,
    cache: dict[str, CtrDataset],
) -> CtrDataset:
    """ctr_samples of ``cfg``, read once per table;
    every table must hold the same impressions, in order.

    The cache keeps the first table read (the reference every arm is scored on) and the last one:
    with an encoder per seed there are 3 tables an arm, ~24 in all, which need not stay in memory.
    """
    table = cfg.tables.qualified("ctr_samples")
    if table not in cache:
        for stale in list(cache)[1:]:
            del cache[stale]
        data = CtrDataset.load(spark, cfg, start, end)
        for other_table, other in cache.items():
            if not (
                np.array_equal(other.test.request_id, data.test.request_id)
                and np.array_equal(other.test.item_id, data.test.item_id)
            ):
                raise CtrDataError(
                    f"{table} and {other_table} do not hold the same test impressions: "
                    "rebuild them for the same range (courier ctr-samples)"
                )
        cache[table] = data
    return cache[table]


def _parent_run(cfg: CourierConfig, state: ExperimentState) -> str:
    """The MLflow parent run of this experiment (re-opened on resume)."""
    uri = tracking.resolve_tracking_uri(cfg.mlflow.tracking_uri)
    mlc = tracking.client(uri)
    if state.parent_run_id:
        mlc.update_run(state.parent_run_id, status="RUNNING")
        return state.parent_run_id
    experiment_id = tracking.ensure_experiment(
        uri, cfg.mlflow.experiment + MLFLOW_EXPERIMENT_SUFFIX, cfg.mlflow.artifact_location
    )
    logged = cfg.to_log_dict()
    params = tracking.flatten({"experiment": logged["experiment"], "ctr": logged["ctr"]})
    state.parent_run_id = tracking.create_run(
        uri, experiment_id, "ctr-experiment", params, {tracking.TAG_GIT: tracking.git_revision()}
    )
    state.save()
    return state.parent_run_id


def _log_child(
    cfg: CourierConfig, parent: str, arm: Arm, seed: int, metrics: dict[str, float]
) -> None:
    """One child run per (arm, seed) under the parent,
    with the arm's parameters and test metrics."""
    from mlflow.entities import Metric

    uri = tracking.resolve_tracking_uri(cfg.mlflow.tracking_uri)
    mlc = tracking.client(uri)
    experiment_id = mlc.get_run(parent).info.experiment_id
    run_id = tracking.create_run(
        uri,
        experiment_id,
        f"{arm.name} seed {seed}",
        {
            "variant": arm.variant,
            "image_usage": arm.usage,
            "k": str(arm.k or cfg.cluster.k),
            "seed": str(seed),
        },
        {"mlflow.parentRunId": parent},
    )
    now = int(time.time() * 1000)
    mlc.log_batch(
        run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if np.isfinite(v)]
    )
    mlc.set_terminated(run_id, "FINISHED")


def _generate_shop(spark: SparkSession, cfg: CourierConfig) -> None:
    """The synthetic shop and its samples, for an experiment from nothing."""
    from courier.samples.build import build_samples
    from courier.world.warehouse import write_world

    write_world(spark, cfg)
    first = cfg.world.start.date()
    build_samples(spark, cfg, first, first + dt.timedelta(days=cfg.world.days - 1))
