"""One training process: the function TorchDistributor runs under torchrun, horovod.spark.run
runs in a Spark task (``train.backend``), or ``--no-spark`` runs in-process.

Its only argument is a ``TrainJob`` (``courier.train.job``, built by ``courier.train.launch``):
frozen dataclasses that pickle into torchrun subprocesses (or Horovod's) without dragging driver
state along; the process-group plumbing is ``courier.train.backends``.

Rank 0 writes checkpoints, logs metrics to MLflow, evaluates on the held-out
rows at the end and writes ``result.json`` (a ``TrainProcessResult``) into the run directory,
which the driver reads (TorchDistributor's own return value is written by every rank to
one file, so it is not a reliable way to get rank 0's answer back).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from courier.config import CourierConfig
from courier.data.decode import newest_clicks
from courier.model import CourierModel
from courier.model.checkpointing import CheckpointSequential
from courier.progress import Progress
from courier.tracking import MetricLogger
from courier.train.backends import ProcessEnv, TrainingBackend, make_backend
from courier.train.checkpoint import (
    atomic_write_json,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from courier.train.errors import ResumeError, TrainingDataError
from courier.train.job import TrainJob, TrainProcessResult
from courier.train.precision import Precision, resolve_precision
from courier.train.rundir import RESULT

log = logging.getLogger("courier.train")

CHECKPOINT_FORMAT = 1
# LossOutput fields averaged over a logging window (all already global across ranks).
LOGGED_TERMS = (
    "loss",
    "loss_pv",
    "loss_ucs",
    "loss_click_bce",
    "attn_entropy",
    "pv_pos_cos",
    "ucs_pos_cos",
)


def seed_everything(seed: int, rank: int) -> None:
    """Python/NumPy per rank; torch the same on every
    rank so all ranks build the same initial model."""
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed)


def build_model(cfg: CourierConfig, device: torch.device, seed: int) -> CourierModel:
    """The CourierModel at its initial weights for ``seed``
    (also the "init" evaluation baseline)."""
    torch.manual_seed(seed)
    return CourierModel(cfg.model, cfg.loss).to(device)


def unwrap(model: nn.Module) -> CourierModel:
    """The CourierModel inside a DDP wrapper (its state_dict keys carry no ``module.`` prefix)."""
    return model.module if isinstance(model, DistributedDataParallel) else model  # type: ignore[return-value]  # a CourierModel, wrapped or not


def describe_setup(model: CourierModel, precision: Precision, env: ProcessEnv) -> dict[str, Any]:
    """What is actually switched on (logged at start; tests check the config reaches the model)."""
    encoder = model.encoder
    conv = next((m for m in encoder.modules() if isinstance(m, nn.Conv2d)), None)
    checkpointed = [m for m in encoder.modules() if isinstance(m, CheckpointSequential)]
    return {
        "device": str(env.device),
        "world_size": env.world_size,
        "precision": precision.mode,
        "grad_scaler": precision.use_scaler,
        "channels_last": bool(
            conv is not None
            and conv.weight.is_contiguous(memory_format=torch.channels_last)
            and not conv.weight.is_contiguous()
        ),
        "compiled": getattr(encoder, "_compiled_call_impl", None) is not None,
        "gradient_checkpointing": bool(checkpointed) and all(m.checkpointing for m in checkpointed),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _rng_state(device: torch.device) -> dict[str, Any]:
    """Every RNG's state in types a weights-only ``torch.load`` accepts
    (tensors, numbers, tuples)."""
    state = np.random.get_state()
    assert isinstance(state, tuple)  # the legacy form, get_state's default
    name, keys, pos, has_gauss, cached = state
    return {
        "python": random.getstate(),
        "numpy": (
            name,
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(
        (name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached)
    )
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def _count_images(batch: dict[str, torch.Tensor]) -> int:
    """Valid (non-padding) images of a batch: what the backbone actually encodes."""
    return int((batch["pv_labels"] >= 0).sum()) + int(batch["click_mask"].bool().sum())


def _data_batches(source: Any, epoch: int, skip: int) -> Iterator[dict[str, torch.Tensor]]:
    """The loader's batches, with its row-count guard re-raised as a TrainingDataError."""
    from courier.data.epoch import EpochRowCountError

    try:
        with closing(source.batches(epoch, skip=skip)) as batches:
            yield from batches
    except EpochRowCountError as exc:
        # The loader's message already names table, version, rank, epoch and the file.
        raise TrainingDataError(
            f"training stopped, the data is not what was pinned: {exc}"
        ) from exc


def _setup_logging(env: ProcessEnv) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO,
            format=f"%(asctime)s %(levelname)s [rank {env.rank}] %(name)s: %(message)s",
            datefmt="%H:%M:%S",
        )
    # Petastorm reports at INFO on every reader it opens (one per epoch and rank).
    logging.getLogger("petastorm").setLevel(logging.WARNING)
    if not env.is_main:
        # One progress stream is enough; other ranks only speak up on warnings.
        logging.getLogger("courier").setLevel(logging.WARNING)


def train_process(job: TrainJob) -> TrainProcessResult | None:
    """Train on ``job`` (see the module docstring); returns the result on rank 0, else None."""
    train = job.config.train
    backend = make_backend(train.backend, single_process=job.single_process)
    rank = 0
    try:
        env = backend.start(train.use_gpu)
        rank = env.rank
        _setup_logging(env)
        return _Trainer(job, backend).run()
    except BaseException as exc:
        _record_failure(job.run_dir, rank, exc)
        raise
    finally:
        backend.stop()


def failure_path(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / f"failed-rank{rank}.json"


def _record_failure(run_dir: Path, rank: int, exc: BaseException) -> None:
    """Leave the error for the driver: TorchDistributor
    returns only "failed", the text goes to stdout."""
    try:
        atomic_write_json(
            failure_path(run_dir, rank),
            {"rank": rank, "type": type(exc).__name__, "message": str(exc)},
        )
    except OSError:
        log.exception("could not record the failure in %s", run_dir)


class _Trainer:
    """State of one process's training loop (split out of train_process for readability)."""

    def __init__(self, job: TrainJob, backend: TrainingBackend) -> None:
        self.cfg, self.backend = job.config, backend
        self.env = backend.env
        self.tc = job.config.train
        self.run_dir = job.run_dir
        self.snapshot, self.holdout = job.snapshot, job.holdout
        self.metrics = (
            MetricLogger(job.mlflow.tracking_uri, job.mlflow.run_id)
            if self.env.is_main
            else MetricLogger(None, None)
        )
        self.run_id = job.mlflow.run_id

    # ------------------------------------------------------------------ set-up
    def _configure_torch(self) -> None:
        if self.tc.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
        if self.env.device.type == "cuda":
            # Fixed image size: let cuDNN pick the fastest kernels, unless exactness was asked for.
            torch.backends.cudnn.benchmark = not self.tc.deterministic
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def _build(self) -> None:
        env, tc = self.env, self.tc
        seed_everything(tc.seed, env.rank)
        self.precision = resolve_precision(tc.mixed_precision, env.device)
        core = build_model(self.cfg, env.device, tc.seed)
        optimizer = torch.optim.Adam(core.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        self.model, self.optimizer = self.backend.prepare(core, optimizer)
        self.setup = {**describe_setup(core, self.precision, env), "backend": self.backend.name}
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=self.precision.use_scaler)
        from courier.data.source import make_batch_source

        try:
            self.source = make_batch_source(
                self.snapshot,
                rank=env.rank,
                world_size=env.world_size,
                batch_size=tc.batch_size,
                seed=tc.seed,
                workers=tc.loader_workers,
                kind=tc.loader_kind,
                shuffle_window=tc.shuffle_window,
                group_by_query=tc.batch_grouping == "query",
            )
        except ValueError as exc:  # e.g. too few rows for one batch per rank
            raise TrainingDataError(
                f"cannot read {self.snapshot.table} v{self.snapshot.version} for training: {exc}"
            ) from exc
        spe = self.source.steps_per_epoch()
        lo, hi = self.backend.global_min_max(spe)
        if lo != hi:
            raise TrainingDataError(
                f"ranks disagree on steps per epoch ({lo}..{hi}) for {self.snapshot.table} "
                f"v{self.snapshot.version}: the loader must give every rank the same number of "
                "batches"
            )
        if spe <= 0:
            raise TrainingDataError(
                f"{self.snapshot.table} at Delta version {self.snapshot.version} has "
                f"{self.snapshot.total_rows} training rows in {len(self.snapshot.files)} files: "
                f"not one batch of {tc.batch_size} rows for each of {env.world_size} process(es). "
                "Check the date range, or lower train.batch_size."
            )
        self.steps_per_epoch = spe
        total = tc.epochs * spe
        self.total_steps = min(total, tc.max_steps) if tc.max_steps is not None else total

    def _resume(self) -> None:
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.history: list[dict[str, float]] = []
        self.train_seconds, self.images_seen = 0.0, 0.0
        path = latest_checkpoint(self.run_dir)
        if path is not None:
            self._load(path)
        self.backend.sync_state(unwrap(self.model), self.optimizer)

    def _load(self, path: Path) -> None:
        state = load_checkpoint(path, map_location="cpu")
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ResumeError(f"{path}: unknown checkpoint format {state.get('format')}")
        if state["world_size"] != self.env.world_size:
            raise ResumeError(
                f"{path} was written by {state['world_size']} process(es), this run has "
                f"{self.env.world_size}: resume with train.num_processes={state['world_size']} "
                "(the data order depends on it)"
            )
        if state["snapshot_version"] != self.snapshot.version:
            raise ResumeError(
                f"{path} trained on version {state['snapshot_version']}, job has "
                f"{self.snapshot.version}"
            )
        core = unwrap(self.model)
        core.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        _set_rng_state(rng[self.env.rank] if self.env.rank < len(rng) else rng[0], self.env.device)
        self.epoch, self.step_in_epoch, self.global_step = (
            state["epoch"],
            state["step_in_epoch"],
            state["global_step"],
        )
        self.history = list(state.get("history", []))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.images_seen = float(state.get("images_seen", 0.0))
        log.info(
            "resumed from %s: epoch %d, step %d of the epoch, global step %d",
            path.name,
            self.epoch,
            self.step_in_epoch,
            self.global_step,
        )

    # ------------------------------------------------------------------ loop
    def run(self) -> TrainProcessResult | None:
        self._configure_torch()
        self._build()
        self._resume()
        env = self.env
        if env.is_main:
            log.info(
                "training %s v%d: %d rows, %d steps/epoch, %d steps in all; setup %s",
                self.snapshot.table,
                self.snapshot.version,
                self.snapshot.total_rows,
                self.steps_per_epoch,
                self.total_steps,
                self.setup,
            )
        self._loop()
        final = self._checkpoint(finished=True)
        result: TrainProcessResult | None = None
        if env.is_main:
            result = self._finish(final)
        # other ranks wait for rank 0's evaluation before the group goes away
        self.backend.barrier()
        return result

    def _loop(self) -> None:
        env, tc = self.env, self.tc
        self.model.train()
        remaining = self.total_steps - self.global_step
        # A bar on a terminal, else one log line per logging window (spark-submit, Airflow logs).
        self.interactive = env.is_main and sys.stderr.isatty()
        progress = (
            Progress(
                "train",
                remaining,
                unit="step",
                every_seconds=float("inf"),
                interactive=self.interactive,
            )
            if env.is_main
            else None
        )
        window = torch.zeros(len(LOGGED_TERMS), dtype=torch.float64, device=env.device)
        window_steps, window_images, window_start = 0, 0, time.perf_counter()
        loop_start = time.perf_counter()
        while self.global_step < self.total_steps:
            for batch in _data_batches(self.source, self.epoch, self.step_in_epoch):
                batch = newest_clicks(batch, tc.history_clicks)
                window_images += _count_images(batch)
                out = self._step(batch)
                window += torch.stack(
                    [getattr(out, n).detach().to(torch.float64) for n in LOGGED_TERMS]
                )
                window_steps += 1
                self.step_in_epoch += 1
                self.global_step += 1
                if progress is not None:
                    progress.update(1)
                done = self.global_step >= self.total_steps
                if self.global_step % tc.log_every_steps == 0 or done:
                    now = time.perf_counter()
                    images = self.backend.global_sum(float(window_images))
                    self._log_window(
                        window / window_steps, images / max(now - window_start, 1e-9), progress
                    )
                    self.images_seen += images
                    window.zero_()
                    window_steps, window_images, window_start = 0, 0, now
                if done:
                    break
                if self.global_step % tc.checkpoint_every_steps == 0:
                    self.train_seconds += time.perf_counter() - loop_start
                    loop_start = time.perf_counter()
                    self._checkpoint(finished=False)
            if self.global_step >= self.total_steps:
                break
            if self.step_in_epoch < self.steps_per_epoch:
                raise TrainingDataError(
                    f"epoch {self.epoch} of {self.snapshot.table} v{self.snapshot.version} ended "
                    f"after {self.step_in_epoch} of {self.steps_per_epoch} batches "
                    f"(rank {env.rank})"
                )
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.train_seconds += time.perf_counter() - loop_start
        if progress is not None:
            progress.close()

    def _step(self, batch: dict[str, torch.Tensor]) -> Any:
        device = self.env.device
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        # set_to_none, the default; hvd.DistributedOptimizer takes no arguments
        self.optimizer.zero_grad()
        with self.precision.autocast(device.type):
            out = self.model(batch)
        self.scaler.scale(out.loss).backward()
        self.backend.optimizer_step(self.optimizer, self.scaler)
        return out

    def _log_window(
        self, means: torch.Tensor, images_per_s: float, progress: Progress | None
    ) -> None:
        values = dict(zip(LOGGED_TERMS, means.tolist(), strict=True))
        if not np.isfinite(values["loss"]):
            # Every rank holds the same global loss, so every rank stops here together.
            raise FloatingPointError(
                f"non-finite loss {values['loss']} at global step {self.global_step}: {values}"
            )
        if not self.env.is_main:
            return
        values.update({"images_per_s": images_per_s, "epoch": float(self.epoch)})
        self.history.append({"step": float(self.global_step), **values})
        self.metrics.log(values, step=self.global_step)
        if progress is not None:
            extra = (
                f"loss {values['loss']:.4f} (pv {values['loss_pv']:.4f}, ucs "
                f"{values['loss_ucs']:.4f}), {images_per_s:,.0f} images/s, epoch {self.epoch}"
            )
            if self.interactive:
                progress.update(0, extra=extra)  # the bar's postfix
            else:
                log.info(progress.line(extra))

    # ------------------------------------------------------------------ checkpoints, end
    def _checkpoint(self, finished: bool) -> Path | None:
        """All ranks call this (the RNG states are gathered); rank 0 writes."""
        epoch, step_in_epoch = self.epoch, self.step_in_epoch
        # an epoch boundary resumes at the next epoch's start
        if step_in_epoch >= self.steps_per_epoch:
            epoch, step_in_epoch = epoch + 1, 0
        rng = self.backend.gather_objects(_rng_state(self.env.device))
        if not self.env.is_main:
            return None
        state = {
            "format": CHECKPOINT_FORMAT,
            "finished": finished,
            "global_step": self.global_step,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "total_steps": self.total_steps,
            "world_size": self.env.world_size,
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "snapshot_table": self.snapshot.table,
            "snapshot_version": self.snapshot.version,
            "mlflow_run_id": self.run_id,
            "history": self.history,
            "train_seconds": self.train_seconds,
            "images_seen": self.images_seen,
        }
        path = save_checkpoint(state, self.run_dir, keep=self.tc.keep_checkpoints)
        log.info("checkpoint %s (epoch %d, step %d of the epoch)", path, epoch, step_in_epoch)
        return path

    def _finish(self, final: Path | None) -> TrainProcessResult:
        evaluation: dict[str, float] = {}
        if self.holdout is not None:
            evaluation = self._evaluate()
            self.metrics.log(evaluation, step=self.global_step)
        images_per_s = self.images_seen / max(self.train_seconds, 1e-9)
        # Whole-run figures under their own names: "images_per_s" is the per-window curve.
        self.metrics.log(
            {"run/images_per_s": images_per_s, "run/train_seconds": self.train_seconds},
            step=self.global_step,
        )
        assert final is not None  # rank 0 wrote it
        result = TrainProcessResult(
            global_step=self.global_step,
            total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch,
            final_checkpoint=final,
            history=self.history,
            eval=evaluation,
            setup=self.setup,
            images_per_s=images_per_s,
            train_seconds=self.train_seconds,
        )
        atomic_write_json(self.run_dir / RESULT, result.to_dict())
        return result

    def _evaluate(self) -> dict[str, float]:
        from courier.data.source import make_batch_source
        from courier.train.evaluate import EVAL_SHUFFLE_WINDOW, evaluate_reconstruction

        holdout = self.holdout
        assert holdout is not None
        tc, device = self.tc, self.env.device

        def source() -> Any:
            return make_batch_source(
                holdout,
                rank=0,
                world_size=1,
                batch_size=tc.batch_size,
                seed=tc.seed,
                workers=tc.loader_workers,
                kind=tc.loader_kind,
                shuffle_window=EVAL_SHUFFLE_WINDOW,
                group_by_query=False,
            )

        started = time.perf_counter()
        metrics = {
            f"eval/{k}": v
            for k, v in evaluate_reconstruction(
                unwrap(self.model),
                source(),
                device,
                tc.eval_max_rows,
                history_clicks=tc.history_clicks,
            ).items()
        }
        if tc.eval_init_baseline:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                init_cfg = dataclasses.replace(
                    self.cfg, model=dataclasses.replace(self.cfg.model, compile=False)
                )
                init = build_model(init_cfg, device, tc.seed)
            metrics.update(
                {
                    f"eval_init/{k}": v
                    for k, v in evaluate_reconstruction(
                        init,
                        source(),
                        device,
                        tc.eval_max_rows,
                        batch_norm_stats="batch",
                        history_clicks=tc.history_clicks,
                    ).items()
                }
            )
            del init
        log.info(
            "held-out evaluation (%.1f s): %s",
            time.perf_counter() - started,
            ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
        )
        return metrics
