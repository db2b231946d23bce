"""A run SIGKILLed after a checkpoint and resumed ends with the weights of an uninterrupted run.

The killed and the resumed run are real `courier train --no-spark` processes
(the resumed one finds the run by its name); the uninterrupted reference runs
in this process. The snapshot is cut to a few files so the run crosses an
epoch boundary (resume inside an epoch, then the next epoch's order).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from courier.config import PROJECT_ROOT, CourierConfig
from courier.data.snapshot import TrainingSnapshot
from courier.data.source import make_batch_source
from courier.tracking import resolve_tracking_uri
from courier.train import run_training
from courier.train.checkpoint import list_checkpoints, load_checkpoint

BATCH = 16
EVERY = 3


def _small_snapshot(snapshot: TrainingSnapshot, n_files: int = 3) -> TrainingSnapshot:
    files, rows = snapshot.files[:n_files], snapshot.file_rows[:n_files]
    return dataclasses.replace(snapshot, files=files, file_rows=rows, total_rows=sum(rows))


def _cli(config_path: Path, snapshot_path: Path, run_name: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobs.cli",
            "train",
            "--profile",
            str(config_path),
            "--no-spark",
            "--snapshot",
            str(snapshot_path),
            "--run-name",
            run_name,
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_killed_run_resumes_to_the_same_weights(
    shop_config: CourierConfig, snapshot, tmp_path: Path
):
    snap = _small_snapshot(snapshot)
    steps_per_epoch = make_batch_source(
        snap,
        0,
        1,
        BATCH,
        seed=0,
        workers=1,
        kind="petastorm",
        shuffle_window=4,
        group_by_query=False,
    ).steps_per_epoch()
    total = steps_per_epoch + 2 * EVERY  # into the second epoch
    cfg = shop_config.replace(
        [
            f"train.batch_size={BATCH}",
            f"train.max_steps={total}",
            f"train.checkpoint_every_steps={EVERY}",
            "train.log_every_steps=1",
            "train.holdout_fraction=0.0",
            "mlflow.log_model=false",
            f"train.checkpoint_dir={tmp_path}/checkpoints",
        ]
    )
    config_path = tmp_path / "config.yaml"
    config_path.write_text(cfg.to_yaml())
    snapshot_path = tmp_path / "snapshot.json"
    snapshot_path.write_text(json.dumps(snap.to_dict()))

    # 1. Start, SIGKILL as soon as the first checkpoint is on disk.
    run_dir = tmp_path / "checkpoints" / "resumable"
    proc = _cli(config_path, snapshot_path, "resumable")
    deadline = time.monotonic() + 240
    while not list_checkpoints(run_dir):
        if proc.poll() is not None:
            pytest.fail(
                f"training exited ({proc.returncode}) before its first checkpoint:\n"
                f"{proc.stdout.read()}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint within 240 s")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = [int(p.stem.split("-")[1]) for p in list_checkpoints(run_dir)]
    assert killed_at and max(killed_at) < total, (
        f"the run was not interrupted: checkpoints {killed_at}"
    )

    # 2. The same command again: the run is found by name and continues.
    proc = _cli(config_path, snapshot_path, "resumable")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert f"resumed from step-{max(killed_at):09d}.pt" in out, out

    # 3. The uninterrupted reference, in this process.
    reference = run_training(cfg, snapshot=snap, run_name="uninterrupted", distributed=False)

    resumed = load_checkpoint(list_checkpoints(run_dir)[-1])
    expected = load_checkpoint(reference.final_checkpoint)
    assert resumed["global_step"] == expected["global_step"] == total
    assert resumed["epoch"] == expected["epoch"] == 1
    assert resumed["model"].keys() == expected["model"].keys()
    for name, tensor in expected["model"].items():
        torch.testing.assert_close(resumed["model"][name], tensor, rtol=1e-6, atol=1e-7, msg=name)
    # Every optimizer state field of every parameter
    # (Adam: step, exp_avg, exp_avg_sq), and the groups.
    opt_resumed, opt_expected = resumed["optimizer"], expected["optimizer"]
    assert opt_resumed["state"].keys() == opt_expected["state"].keys()
    assert len(opt_expected["state"]) == len(expected["model"]) - sum(
        1
        for k in expected["model"]
        if k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    for param, fields in opt_expected["state"].items():
        assert (
            opt_resumed["state"][param].keys() == fields.keys() == {"step", "exp_avg", "exp_avg_sq"}
        )
        for field, value in fields.items():
            torch.testing.assert_close(
                opt_resumed["state"][param][field],
                value,
                rtol=1e-6,
                atol=1e-9,
                msg=f"optimizer state {param}.{field}",
            )
    assert opt_resumed["param_groups"] == opt_expected["param_groups"]
    # The loss curve of the resumed run (carried in its checkpoints) matches step by step.
    assert [h["step"] for h in resumed["history"]] == [h["step"] for h in expected["history"]]
    for a, b in zip(resumed["history"], expected["history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)

    client = MlflowClient(resolve_tracking_uri(cfg.mlflow.tracking_uri))
    manifest = json.loads((run_dir / "run.json").read_text())
    run = client.get_run(manifest["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["courier.resumes"] == "1"
