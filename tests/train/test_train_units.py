"""Pieces of `courier train` that need no Spark: precision policy, hold-out split, checkpoint
files, resume compatibility, the retrieval metric's direction and tie handling, model switches."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from courier.config import load_config
from courier.data.snapshot import TrainingSnapshot
from courier.model import CourierModel, LossConfig, ModelConfig
from courier.train.backends import ProcessEnv
from courier.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from courier.train.evaluate import evaluate_reconstruction
from courier.train.holdout import split_holdout
from courier.train.loop import describe_setup
from courier.train.precision import resolve_precision
from courier.train.rundir import frozen_config_differences

# the GPU is only simulated: no tensor goes there
CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)


def test_precision_policy():
    assert resolve_precision("auto", CPU).mode == "off"
    assert resolve_precision("bf16", CPU).mode == "off"  # CPU always trains in fp32
    bf16 = resolve_precision("auto", GPU, bf16_supported=True)
    assert (bf16.dtype, bf16.use_scaler) == (torch.bfloat16, False)
    fp16 = resolve_precision("auto", GPU, bf16_supported=False)  # e.g. a V100
    assert (fp16.dtype, fp16.use_scaler) == (torch.float16, True)
    assert resolve_precision("fp16", GPU, bf16_supported=True).use_scaler
    assert not resolve_precision("off", GPU, bf16_supported=True).enabled
    with pytest.raises(ValueError, match="no bf16"):
        resolve_precision("bf16", GPU, bf16_supported=False)
    with pytest.raises(ValueError, match="mixed_precision"):
        resolve_precision("fp8", CPU)


def _snapshot(n_files: int) -> TrainingSnapshot:
    files = tuple(f"file:/t/dt=2026-01-0{1 + i % 4}/part-{i:03d}.parquet" for i in range(n_files))
    rows = tuple(50 + i for i in range(n_files))
    return TrainingSnapshot("db.rows", 3, files, rows, sum(rows), 5, 5, 32)


def test_holdout_takes_the_latest_files_and_keeps_counts_consistent():
    snap = _snapshot(8)
    train, held = split_holdout(snap, 0.25)
    assert held is not None and len(held.files) == 2
    assert all("dt=2026-01-04" in f for f in held.files)  # the latest day
    assert set(train.files) | set(held.files) == set(snap.files) and not set(train.files) & set(
        held.files
    )
    assert train.total_rows + held.total_rows == snap.total_rows
    assert (train.version, held.version) == (snap.version, snap.version)
    assert split_holdout(snap, 0.0) == (snap, None)
    assert split_holdout(_snapshot(1), 0.5) == (_snapshot(1), None)
    assert len(split_holdout(_snapshot(2), 0.9)[0].files) == 1  # always something to train on


def test_the_train_job_and_the_result_survive_their_trips(tmp_path):
    import json
    import pickle

    from pyspark import cloudpickle

    from courier.train.job import MlflowTarget, TrainJob, TrainProcessResult

    cfg = load_config("local", ["train.max_steps=7", "model.backbone=resnet18"])
    train, held = split_holdout(_snapshot(5), 0.3)
    job = TrainJob(cfg, train, held, tmp_path / "run", MlflowTarget("file:/m", "abc"))
    # TorchDistributor ships the job with pyspark's cloudpickle, horovod.spark.run with its copy.
    for dumps, loads in ((cloudpickle.dumps, cloudpickle.loads), (pickle.dumps, pickle.loads)):
        back = loads(dumps(job))
        assert back == job and back.config.train.max_steps == 7 and back.holdout == held
        assert back.config.model.backbone is job.config.model.backbone  # members, not strings
    result = TrainProcessResult(
        global_step=7,
        total_steps=7,
        steps_per_epoch=3,
        final_checkpoint=tmp_path / "run" / "step-000000007.pt",
        history=[{"step": 7.0, "loss": 1.5}],
        eval={"eval/hit1": 0.25},
        setup={"world_size": 1, "backend": "single"},
        images_per_s=10.0,
        train_seconds=2.5,
    )
    written = json.loads(json.dumps(result.to_dict()))  # as result.json holds it
    assert written["final_checkpoint"] == str(result.final_checkpoint)
    assert TrainProcessResult.from_dict(written) == result


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    for step in (3, 6, 9):
        save_checkpoint({"global_step": step, "w": torch.full((2,), float(step))}, tmp_path, keep=2)
    files = list_checkpoints(tmp_path)
    assert [p.name for p in files] == ["step-000000006.pt", "step-000000009.pt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left
    assert torch.equal(load_checkpoint(files[-1])["w"], torch.full((2,), 9.0))


def test_resume_refuses_a_different_optimisation_but_not_different_logging():
    base = load_config("local").to_dict()
    changed = load_config(
        "local",
        ["train.lr=0.001", "train.log_every_steps=1", "model.compile=true", "train.max_steps=7"],
    ).to_dict()
    assert frozen_config_differences(base, changed) == ["train.lr: 0.0001 -> 0.001"]
    other_model = load_config("local", ["model.embedding_dim=64"]).to_dict()
    assert frozen_config_differences(base, other_model) == ["model.embedding_dim: 256 -> 64"]


# --- the retrieval metric on a synthetic source ---------------------------------------------

L, S = 5, 8  # slots per row, image side


class _Rows:
    """BatchSource over synthetic rows: item i's image is the constant i / 100 in channel 0."""

    def __init__(self, n_rows: int = 24, batch: int = 8) -> None:
        self.batch = batch
        # Every shown item is unique (ids 0..119): a duplicate would be a legitimate tie in-batch.
        self.pv_ids = torch.arange(n_rows * L).reshape(n_rows, L)
        self.labels = torch.tensor(
            [[1, 0, 0, 0, -1] if r % 2 else [1, 1, 0, 0, 0] for r in range(n_rows)]
        )
        # History: the row's clicked items plus one unrelated click (ids >= 200, never shown).
        clicks = torch.full((n_rows, L), -1)
        for r in range(n_rows):
            pos = self.pv_ids[r][self.labels[r] == 1]
            clicks[r, L - len(pos) - 1 : L - 1] = pos
            clicks[r, L - 1] = 200 + r
        self.click_ids = clicks

    def _images(self, ids: torch.Tensor) -> torch.Tensor:
        img = torch.zeros(*ids.shape, 3, S, S)
        img[..., 0, :, :] = (ids.clamp(min=0).float() / 100.0)[..., None, None]
        return img

    def steps_per_epoch(self) -> int:
        return len(self.labels) // self.batch

    def batches(self, epoch: int, skip: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        for step in range(skip, self.steps_per_epoch()):
            sl = slice(step * self.batch, (step + 1) * self.batch)
            yield {
                "pv_images": self._images(self.pv_ids[sl]),
                "pv_labels": self.labels[sl],
                "click_images": self._images(self.click_ids[sl]),
                "click_mask": self.click_ids[sl] >= 0,
                "pv_item_ids": self.pv_ids[sl],
                "click_item_ids": self.click_ids[sl],
            }


class _ItemOneHot(nn.Module):
    """An 'oracle' encoder: the embedding is the one-hot of the item id read off the image."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        ids = (images[:, 0, 0, 0] * 100).round().long()
        return nn.functional.one_hot(ids, 256).float() * 10.0


class _Constant(nn.Module):
    """A collapsed encoder: every image gets the same embedding."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.ones(images.shape[0], 256)


def _model(encoder: nn.Module) -> CourierModel:
    model = CourierModel(ModelConfig(backbone="small_cnn"), LossConfig())
    model.encoder = encoder
    return model


def test_retrieval_metric_rewards_the_oracle_and_gives_chance_to_a_collapsed_model():
    oracle = evaluate_reconstruction(_model(_ItemOneHot()), _Rows(), CPU, max_rows=1000)
    assert oracle["rows_scored"] == 24
    assert oracle["hit1"] == 1.0 and oracle["row_auc"] == 1.0
    assert oracle["rank_clicked"] < oracle["rank_unclicked"]
    assert oracle["inbatch_top1"] == 1.0 and oracle["inbatch_rank"] == 0.0

    collapsed = evaluate_reconstruction(_model(_Constant()), _Rows(), CPU, max_rows=1000)
    # Positives come first in every row; ties must not turn that order into hits.
    assert collapsed["hit1"] == 0.5 and collapsed["row_auc"] == 0.5
    assert collapsed["rank_clicked"] == collapsed["rank_unclicked"] == 0.5
    assert collapsed["inbatch_rank"] == 0.5
    assert collapsed["embedding_std"] == 0.0
    assert 0.0 < collapsed["hit1_chance"] < 1.0


def test_evaluation_can_use_batch_statistics_without_touching_running_ones():
    model = CourierModel(ModelConfig(backbone="small_cnn", embedding_dim=16), LossConfig())
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    evaluate_reconstruction(model, _Rows(), CPU, max_rows=8, batch_norm_stats="batch")
    assert torch.equal(bn.running_mean, before)
    assert model.training  # mode restored


def test_model_switches_reach_the_model():
    env = ProcessEnv(0, 1, 0, CPU)
    precision = resolve_precision("auto", CPU)
    on = describe_setup(
        CourierModel(ModelConfig(gradient_checkpointing=True, channels_last=True), LossConfig()),
        precision,
        env,
    )
    off = describe_setup(
        CourierModel(ModelConfig(gradient_checkpointing=False, channels_last=False), LossConfig()),
        precision,
        env,
    )
    assert on["gradient_checkpointing"] and on["channels_last"]
    assert not off["gradient_checkpointing"] and not off["channels_last"]
    assert not on["compiled"] and on["precision"] == "off"


def test_compile_switch_compiles_the_encoder():
    # nn.Module.compile is lazy: this checks the switch, the first forward would compile.
    model = CourierModel(ModelConfig(compile=True, embedding_dim=16), LossConfig())
    assert describe_setup(model, resolve_precision("auto", CPU), ProcessEnv(0, 1, 0, CPU))[
        "compiled"
    ]


class _RunsCodeWhenUnpickled:
    """What a tampered checkpoint could carry: unpickling it calls ``Path.touch`` on a marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoints_load_weights_only_and_refuse_code(tmp_path: Path):
    from courier.train.errors import CheckpointError
    from courier.train.loop import _rng_state, _set_rng_state

    # The loop's own state round-trips, RNG states included: the next draws repeat.
    state = {
        "global_step": 3,
        "model": {"w": torch.ones(2)},
        "rng": [_rng_state(CPU)],
        "history": [{"loss": 1.0}],
    }
    path = save_checkpoint(state, tmp_path / "run", keep=2)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    _set_rng_state(load_checkpoint(path)["rng"][0], CPU)
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected

    marker = tmp_path / "payload-ran"
    torch.save(
        {"global_step": 4, "model": {}, "extra": _RunsCodeWhenUnpickled(marker)},
        tmp_path / "run" / "step-000000004.pt",
    )
    with pytest.raises(
        CheckpointError, match=r"step-000000004.pt is not a weights-only checkpoint"
    ):
        load_checkpoint(tmp_path / "run" / "step-000000004.pt")
    assert not marker.exists()
