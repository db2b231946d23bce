"""``courier train`` on the driver: pin the snapshot, create (or reopen) the MLflow run,
run the training processes, then log and register the model.

    new run:     pin snapshot (Spark) -> hold out files -> MLflow run -> run.json -> processes
    resume:      run.json (same snapshot, hold-out, MLflow run) -> processes continue from
                 the latest checkpoint
    processes:   TorchDistributor(num_processes, local_mode, use_gpu).run(train_process, job),
                 or horovod.spark.run(train_process, (job,), num_proc) (train.backend=horovod),
                 or train_process(job) in this process (``distributed=False``, ``--no-spark``);
                 ``job`` is a ``TrainJob`` (job.py)
    end:         result.json (``TrainProcessResult``) -> encoder from the final checkpoint
                 -> mlflow.pytorch.log_model -> registered model version -> alias (e.g.
                 "candidate")
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from pathlib import Path
from typing import Any

from courier import tracking
from courier.config import CourierConfig, Objective, config_json
from courier.tables import RunRecord, utc_now
from courier.train.checkpoint import load_checkpoint, read_json
from courier.train.errors import CheckpointError, ResumeError, TrainingDataError
from courier.train.job import MlflowTarget, TrainJob, TrainProcessResult
from courier.train.outputs import TrainResult, embedding_model, register_encoder
from courier.train.rundir import RESULT, RunManifest, frozen_config_differences, new_run_name

STAGE = "train"
log = logging.getLogger("courier.train")


def check_train_config(cfg: CourierConfig) -> None:
    """Fail before pinning or starting anything on values that cannot work together.

    Each section checks its own values where it is defined (``TrainConfig.__post_init__``: the
    closed choices, the positive counts, the checkpoint folder); what is left spans two sections.
    """
    tc = cfg.train
    if tc.history_clicks is not None and not 1 <= tc.history_clicks <= cfg.samples.l_click:
        raise ValueError(
            f"train.history_clicks must be in 1..samples.l_click ({cfg.samples.l_click}) or null, "
            f"got {tc.history_clicks}"
        )


def _resolve_dir(path: str) -> Path:
    from courier.spark import resolve_path

    return Path(resolve_path(path))


def resolve_resume(target: str, checkpoint_root: Path, tracking_uri: str) -> Path:
    """The run directory for ``--resume``: a run folder,
    a run name under the root, or an MLflow run id."""
    as_path = Path(target)
    for candidate in (as_path, checkpoint_root / target):
        if (candidate / "run.json").is_file():
            return candidate.resolve()
    try:
        run = tracking.client(tracking_uri).get_run(target)
    except Exception as exc:  # any lookup failure means "not an MLflow run id"
        raise ResumeError(
            f"--resume {target!r}: neither a run folder (with run.json), nor a run name under "
            f"{checkpoint_root}, nor an MLflow run id in {tracking_uri} ({exc})"
        ) from exc
    run_dir = run.data.tags.get(tracking.TAG_RUN_DIR)
    if not run_dir or not (Path(run_dir) / "run.json").is_file():
        raise ResumeError(
            f"MLflow run {target} has no checkpoint folder (tag {tracking.TAG_RUN_DIR}={run_dir!r})"
        )
    return Path(run_dir)


def existing_run_dir(cfg: CourierConfig, run_name: str | None, resume: str | None) -> Path | None:
    """The folder of the run that ``run_name``/``resume`` would continue, or None for a new run.

    Raises ResumeError when ``resume`` names nothing resumable.
    """
    checkpoint_root = _resolve_dir(cfg.train.checkpoint_dir)
    if resume is not None:
        return resolve_resume(
            resume, checkpoint_root, tracking.resolve_tracking_uri(cfg.mlflow.tracking_uri)
        )
    if run_name is not None and (checkpoint_root / run_name / "run.json").is_file():
        return checkpoint_root / run_name
    return None


def _pin(cfg: CourierConfig, spark: Any, dates: tuple[dt.date, dt.date] | None) -> Any:
    from courier.data.snapshot import pin_training_snapshot

    if spark is None:
        raise ValueError(
            "pinning a snapshot needs Spark: pass a SparkSession, a pinned snapshot, or resume a "
            "run"
        )
    from courier.data.snapshot import SnapshotError

    table = cfg.tables.qualified("courier_training_rows")
    try:
        return pin_training_snapshot(spark, table, version=cfg.train.table_version, dates=dates)
    except SnapshotError as exc:  # no rows for the range, missing table or version, vacuumed files
        raise TrainingDataError(f"cannot pin a training snapshot: {exc}") from exc


def _new_run(
    cfg: CourierConfig,
    run_name: str,
    run_dir: Path,
    tracking_uri: str,
    snapshot: Any,
    dates: tuple[dt.date, dt.date] | None,
) -> RunManifest:
    from courier.train.holdout import split_holdout

    where = f" for dt {dates[0]}..{dates[1]}" if dates else ""
    if snapshot.total_rows == 0 or not snapshot.files:
        raise TrainingDataError(
            f"{snapshot.table} at Delta version {snapshot.version} holds no rows{where}: "
            "nothing to train on (build the samples for that range first)"
        )
    train, holdout = split_holdout(snapshot, cfg.train.holdout_fraction)
    experiment_id = tracking.ensure_experiment(
        tracking_uri, cfg.mlflow.experiment, cfg.mlflow.artifact_location
    )
    tags = {
        tracking.TAG_TABLE: snapshot.table,
        tracking.TAG_VERSION: str(snapshot.version),
        tracking.TAG_ROWS: str(snapshot.total_rows),
        tracking.TAG_TRAIN_ROWS: str(train.total_rows),
        tracking.TAG_HOLDOUT_ROWS: str(holdout.total_rows if holdout else 0),
        tracking.TAG_GIT: (rev := tracking.git_revision()),
        "mlflow.source.git.commit": rev,
        tracking.TAG_RUN_DIR: str(run_dir),
        tracking.TAG_RESUMES: "0",
        "courier.dates": f"{dates[0]}..{dates[1]}" if dates else "all",
    }
    run_id = tracking.create_run(
        tracking_uri, experiment_id, run_name, tracking.flatten(cfg.to_log_dict()), tags
    )
    manifest = RunManifest(
        run_name=run_name,
        mlflow_run_id=run_id,
        snapshot=train.to_dict(),
        holdout=holdout.to_dict() if holdout else None,
        pinned=snapshot.to_dict(),
        config=cfg.to_log_dict(),  # on a shared disk: no secrets
    )
    manifest.save(run_dir)
    mlc = tracking.client(tracking_uri)
    mlc.log_text(run_id, cfg.to_log_yaml(), "config.yaml")
    mlc.log_dict(run_id, manifest.pinned, "snapshot.json")
    log.info(
        "new run %s: %s v%d, %d training rows, %d held out; MLflow run %s",
        run_name,
        snapshot.table,
        snapshot.version,
        train.total_rows,
        holdout.total_rows if holdout else 0,
        run_id,
    )
    return manifest


def _reopen_run(
    cfg: CourierConfig, run_dir: Path, tracking_uri: str, snapshot: Any | None
) -> RunManifest:
    manifest = RunManifest.load(run_dir)
    if snapshot is not None and snapshot.to_dict() != manifest.pinned:
        raise ResumeError(
            f"run {manifest.run_name} trained on {manifest.pinned['table']} "
            f"v{manifest.pinned['version']}; the snapshot given now differs"
        )
    mlc = tracking.client(tracking_uri)
    status = mlc.get_run(manifest.mlflow_run_id).info.status
    if status == "FINISHED":
        raise ResumeError(
            f"run {manifest.run_name} (MLflow run {manifest.mlflow_run_id}) already finished; "
            "choose a new --run-name to train again"
        )
    diffs = frozen_config_differences(manifest.config, cfg.to_log_dict())
    if diffs:
        raise ResumeError(
            f"run {manifest.run_name} cannot resume with a different model/optimiser/data "
            f"configuration: {diffs}. Start a new run (another --run-name) instead."
        )
    manifest.resumes += 1
    manifest.save(run_dir)
    # Params are immutable in MLflow: what this attempt changed (e.g. max_steps) goes into a tag.
    before, now = tracking.flatten(manifest.config), tracking.flatten(cfg.to_log_dict())
    changed = {k: now.get(k) for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)}
    mlc.set_tag(manifest.mlflow_run_id, tracking.TAG_RESUMES, str(manifest.resumes))
    if changed:
        mlc.set_tag(
            manifest.mlflow_run_id,
            f"courier.resume_{manifest.resumes}_changes",
            ", ".join(f"{k}={v}" for k, v in changed.items())[:5000],
        )
    log.info(
        "resuming run %s (MLflow run %s), resume #%d",
        manifest.run_name,
        manifest.mlflow_run_id,
        manifest.resumes,
    )
    return manifest


def _run_processes(job: TrainJob, distributed: bool) -> None:
    from courier.train.loop import train_process

    train = job.config.train
    if not distributed:
        if train.num_processes > 1:
            log.warning(
                "--no-spark runs one process; train.num_processes=%d ignored",
                train.num_processes,
            )
        train_process(dataclasses.replace(job, single_process=True))
        return
    from courier.train.backends import BACKENDS

    try:
        BACKENDS[train.backend].launch(train, job, train_process)
    except Exception as exc:  # both launchers only say "failed"
        # The processes left their errors in the run folder; raise the first as itself.
        failure = _process_failure(job.run_dir, train.num_processes)
        if failure is None:
            raise
        raise failure from exc


def _process_failure(run_dir: Path, world_size: int) -> BaseException | None:
    """The first recorded process error, re-created as its own type when it is one of ours."""
    from courier.train.loop import failure_path

    types = {
        cls.__name__: cls
        for cls in (TrainingDataError, ResumeError, CheckpointError, FloatingPointError)
    }
    for rank in range(world_size):
        path = failure_path(run_dir, rank)
        if path.is_file():
            failure = read_json(path)
            cls = types.get(failure["type"])
            if cls is not None:
                return cls(failure["message"])
            return RuntimeError(
                f"training process rank {rank} failed: {failure['type']}: {failure['message']}"
            )
    return None


def _export_encoder(cfg: CourierConfig, checkpoint: Path, image_size: int) -> Any:
    """The trained encoder with its preprocessing, uncompiled and in eval mode, for logging.

    An EmbeddingModel: uint8 images [N,3,S,S] -> L2-normalised [N,d], normalised with
    the training loader's own mean/std.
    """
    from courier.model import CourierModel

    model_cfg = dataclasses.replace(
        cfg.model, compile=False, gradient_checkpointing=False, pretrained_weights_path=None
    )
    model = CourierModel(model_cfg, cfg.loss)
    model.load_state_dict(load_checkpoint(checkpoint, map_location="cpu")["model"])
    return embedding_model(model.encoder, image_size)


def _record_run(
    spark: Any,
    cfg: CourierConfig,
    manifest: RunManifest,
    result: TrainProcessResult,
    version: str | None,
    started: dt.datetime,
    dates: tuple[dt.date, dt.date] | None,
) -> None:
    """One pipeline_runs row for this (possibly resumed) training process, as every stage writes."""
    holdout = manifest.holdout or {}
    metrics = {
        "table_version": manifest.snapshot["version"],
        "train_rows": sum(manifest.snapshot["file_rows"]),
        "holdout_rows": sum(holdout.get("file_rows", [])),
        "steps": result.global_step,
        "train_seconds": round(result.train_seconds),
        "resumes": manifest.resumes,
    }
    if version is not None and str(version).isdigit():
        metrics["model_version"] = int(version)
    start, end = dates if dates else (None, None)
    RunRecord(manifest.run_name, STAGE, start, end, started, metrics, config_json(cfg)).save(
        spark, cfg.tables.qualified("pipeline_runs")
    )


def _open_run(
    cfg: CourierConfig,
    tracking_uri: str,
    *,
    spark: Any,
    run_name: str | None,
    resume: str | None,
    snapshot: Any,
    dates: tuple[dt.date, dt.date] | None,
) -> tuple[Path, RunManifest]:
    """The run folder and its manifest: the run to resume, or a new one on a pinned snapshot."""
    run_dir = existing_run_dir(cfg, run_name, resume)
    if run_dir is None:
        run_dir = _resolve_dir(cfg.train.checkpoint_dir) / (run_name or new_run_name())
    if (run_dir / "run.json").is_file():
        return run_dir, _reopen_run(cfg, run_dir, tracking_uri, snapshot)
    if snapshot is None:
        snapshot = _pin(cfg, spark, dates)
    return run_dir, _new_run(cfg, run_dir.name, run_dir, tracking_uri, snapshot, dates)


def _train(
    cfg: CourierConfig, manifest: RunManifest, run_dir: Path, tracking_uri: str, distributed: bool
) -> TrainProcessResult:
    """Run the training processes on the manifest's snapshot; rank 0's result."""
    from courier.data.snapshot import TrainingSnapshot

    result_path = run_dir / RESULT
    # Stale results and errors of an earlier attempt must not be read as this one's.
    for stale in [result_path, *run_dir.glob("failed-rank*.json")]:
        stale.unlink(missing_ok=True)
    job = TrainJob(
        config=cfg,
        snapshot=TrainingSnapshot.from_dict(manifest.snapshot),
        holdout=TrainingSnapshot.from_dict(manifest.holdout) if manifest.holdout else None,
        run_dir=run_dir,
        mlflow=MlflowTarget(tracking_uri, manifest.mlflow_run_id),
    )
    tracking.client(tracking_uri).update_run(manifest.mlflow_run_id, status="RUNNING")
    _run_processes(job, distributed)
    if not result_path.is_file():
        raise RuntimeError(f"the training processes ended without writing {result_path}")
    return TrainProcessResult.from_dict(read_json(result_path))


def _register_encoder(
    cfg: CourierConfig, manifest: RunManifest, result: TrainProcessResult, tracking_uri: str
) -> str | None:
    """Log the final checkpoint's encoder to the run and register it (``mlflow.log_model``);
    the registered model version, or None when nothing was registered."""
    if not cfg.mlflow.log_model:
        return None
    run_id = manifest.mlflow_run_id
    exported = _export_encoder(cfg, result.final_checkpoint, manifest.snapshot["image_size"])
    return register_encoder(cfg, tracking_uri, run_id, exported)


def run_training(
    cfg: CourierConfig,
    *,
    spark: Any = None,
    run_name: str | None = None,
    resume: str | None = None,
    snapshot: Any = None,
    dates: tuple[dt.date, dt.date] | None = None,
    distributed: bool = True,
) -> TrainResult:
    """Run ``courier train``: a new run, or the continuation of a killed one.

    Args:
        cfg: the resolved config.
        spark: the driver's SparkSession (pins the snapshot; TorchDistributor needs it).
        run_name: name of the run (checkpoint folder, MLflow run name). When a run of that name
            exists under train.checkpoint_dir, it is resumed. None: a new, generated name.
        resume: a run folder, run name or MLflow run id to resume.
        snapshot: an already pinned TrainingSnapshot (then ``spark`` is not needed to pin).
        dates: (start, end) dt range to pin; None = the whole table.
        distributed: TorchDistributor (True) or one process in this one (False, ``--no-spark``).

    Raises:
        TrainingDataError: the snapshot holds no rows or an epoch read an unexpected row count.
        ResumeError: the run to resume cannot be found or would not continue the same run.
    """
    check_train_config(cfg)
    if cfg.train.objective != Objective.COURIER:
        from courier.train.baselines import train_image_baseline

        return train_image_baseline(cfg, spark, run_name)
    tracking_uri = tracking.resolve_tracking_uri(cfg.mlflow.tracking_uri)
    run_dir, manifest = _open_run(
        cfg,
        tracking_uri,
        spark=spark,
        run_name=run_name,
        resume=resume,
        snapshot=snapshot,
        dates=dates,
    )
    mlc = tracking.client(tracking_uri)
    run_id = manifest.mlflow_run_id
    started = utc_now()
    try:
        result = _train(cfg, manifest, run_dir, tracking_uri, distributed)
        version = _register_encoder(cfg, manifest, result, tracking_uri)
        mlc.set_terminated(run_id, "FINISHED")
        if spark is not None:
            _record_run(spark, cfg, manifest, result, version, started, dates)
    except BaseException:
        # KeyboardInterrupt included: the run is resumable, but MLflow should not show it running.
        mlc.set_terminated(run_id, "FAILED")
        raise
    return TrainResult(
        run_name=manifest.run_name,
        run_dir=run_dir,
        mlflow_run_id=run_id,
        snapshot=manifest.snapshot,
        holdout=manifest.holdout,
        result=result.to_dict(),
        model_version=version,
    )
