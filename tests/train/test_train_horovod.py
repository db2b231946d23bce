"""`courier train` on the Horovod backend: 2 processes under horovod.spark.run (Gloo, CPU).

One uninterrupted 2-process Horovod run is shared: it must learn and register its model
like the DDP path, end with the same weights and Adam moments (which see the gradients'
scale) as a 2-process TorchDistributor run of the same config (only the plumbing differs),
and be the reference of the kill -9 / resume test, whose killed and resumed runs are real
`courier train --set train.backend=horovod` processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from courier.catalog import stop_catalog_server
from courier.config import PROJECT_ROOT, CourierConfig
from courier.tracking import resolve_tracking_uri
from courier.train import run_training
from courier.train.checkpoint import list_checkpoints, load_checkpoint

STEPS = 30
EVERY = 10


def _config(shop_config: CourierConfig, backend: str, tmp: Path) -> CourierConfig:
    return shop_config.replace(
        [
            f"train.backend={backend}",
            "train.num_processes=2",
            "train.batch_size=16",
            f"train.max_steps={STEPS}",
            "train.lr=0.001",
            "train.log_every_steps=5",
            f"train.checkpoint_every_steps={EVERY}",
            "train.holdout_fraction=0.0",
            "train.loader_workers=1",
            f"train.checkpoint_dir={tmp}/checkpoints",
            "mlflow.registered_model=courier-horovod-test-encoder",
        ]
    )


@pytest.fixture(scope="module")
def horovod_run(
    spark, shop_config: CourierConfig, snapshot, tmp_path_factory: pytest.TempPathFactory
):
    cfg = _config(shop_config, "horovod", tmp_path_factory.mktemp("horovod"))
    return cfg, run_training(cfg, spark=spark, snapshot=snapshot, run_name="horovod-uninterrupted")


@pytest.mark.slow
def test_a_horovod_run_learns_and_registers_its_model(horovod_run):
    cfg, result = horovod_run
    assert result.result["global_step"] == STEPS
    assert (
        result.result["setup"]["backend"] == "horovod" and result.result["setup"]["world_size"] == 2
    )
    history = result.result["history"]
    assert [h["step"] for h in history] == [float(s) for s in range(5, STEPS + 1, 5)]
    first, last = history[0]["loss"], np.mean([h["loss"] for h in history[-2:]])
    assert last < first - 0.3, [round(h["loss"], 3) for h in history]

    uri = resolve_tracking_uri(cfg.mlflow.tracking_uri)
    client = MlflowClient(uri, registry_uri=uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.backend"] == "horovod"
    # Only rank 0 logs: one value per logging step.
    assert [m.step for m in client.get_metric_history(result.mlflow_run_id, "loss")] == list(
        range(5, STEPS + 1, 5)
    )
    version = client.get_model_version_by_alias(cfg.mlflow.registered_model, cfg.mlflow.alias)
    assert str(version.version) == result.model_version and version.run_id == result.mlflow_run_id


@pytest.mark.slow
def test_horovod_and_ddp_train_to_the_same_weights(
    horovod_run, spark, shop_config, snapshot, tmp_path
):
    _, hvd_result = horovod_run
    cfg = _config(shop_config, "torch_distributor", tmp_path).replace(["mlflow.log_model=false"])
    ddp_result = run_training(cfg, spark=spark, snapshot=snapshot, run_name="ddp-same-config")
    hvd_state = load_checkpoint(hvd_result.final_checkpoint)
    ddp_state = load_checkpoint(ddp_result.final_checkpoint)
    assert hvd_state["model"].keys() == ddp_state["model"].keys()
    for name, tensor in ddp_state["model"].items():
        # float32 sums over ranks in another order: equal to rounding, after 30 Adam steps.
        torch.testing.assert_close(
            hvd_state["model"][name].contiguous(),
            tensor.contiguous(),
            rtol=1e-3,
            atol=1e-5,
            msg=name,
        )
    for a, b in zip(hvd_state["history"], ddp_state["history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    # Adam's step hardly depends on the gradients' scale, so equal weights would not notice
    # gradients summed over the ranks instead of averaged. Adam's moments are the gradients'
    # running mean and mean square, which would be x2 and x4 (2 ranks): they must agree too.
    hvd_moments, ddp_moments = hvd_state["optimizer"]["state"], ddp_state["optimizer"]["state"]
    assert hvd_moments.keys() == ddp_moments.keys() and ddp_moments
    for param, fields in ddp_moments.items():
        for field in ("exp_avg", "exp_avg_sq"):
            want, got = fields[field], hvd_moments[param][field]
            # relative to the whole tensor: equal to rounding
            # (0.0 on 2026-12-06); summed: 1.0 and 3.0
            error = float((got - want).norm() / want.norm())
            assert error < 1e-3, (
                f"optimizer state {param}.{field}: |horovod - ddp| / |ddp| = {error:.3g}"
            )


def _cli(config_path: Path, snapshot_path: Path, warehouse: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobs.cli",
            "train",
            "--profile",
            str(config_path),
            "--snapshot",
            str(snapshot_path),
            "--run-name",
            "horovod-resumable",
            # Its own Spark (and Derby catalog): the test session's JVM holds the shared one.
            "--set",
            f"spark.warehouse_dir={warehouse}",
            "--set",
            "spark.master=local[2]",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # kill -9 takes the whole job: driver, JVM, Spark tasks, Horovod ranks
        start_new_session=True,
    )


@pytest.fixture
def cli_warehouse(tmp_path: Path) -> Iterator[Path]:
    """The CLI runs' own warehouse; the catalog server they start there is stopped afterwards
    (the killed run cannot sign off, so it would wait out spark.catalog_idle_s, 300 s)."""
    warehouse = tmp_path / "warehouse"
    yield warehouse
    stop_catalog_server(warehouse)


@pytest.mark.slow
def test_a_killed_horovod_run_resumes_to_the_same_weights(
    horovod_run, snapshot, tmp_path: Path, cli_warehouse: Path
):
    cfg, reference = horovod_run
    config_path = tmp_path / "config.yaml"
    config_path.write_text(cfg.to_yaml())
    snapshot_path = tmp_path / "snapshot.json"
    snapshot_path.write_text(json.dumps(snapshot.to_dict()))
    run_dir = Path(cfg.train.checkpoint_dir) / "horovod-resumable"

    proc = _cli(config_path, snapshot_path, cli_warehouse)
    deadline = time.monotonic() + 300
    while not list_checkpoints(run_dir):
        if proc.poll() is not None:
            pytest.fail(
                f"training exited ({proc.returncode}) before its first checkpoint:\n"
                f"{proc.stdout.read()}"
            )
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("no checkpoint within 300 s")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = [int(p.stem.split("-")[1]) for p in list_checkpoints(run_dir)]
    assert killed_at and max(killed_at) < STEPS, (
        f"the run was not interrupted: checkpoints {killed_at}"
    )

    proc = _cli(config_path, snapshot_path, cli_warehouse)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-5000:]

    resumed = load_checkpoint(list_checkpoints(run_dir)[-1])
    expected = load_checkpoint(reference.final_checkpoint)
    assert resumed["global_step"] == expected["global_step"] == STEPS
    for name, tensor in expected["model"].items():
        torch.testing.assert_close(resumed["model"][name], tensor, rtol=1e-6, atol=1e-7, msg=name)
    opt_resumed, opt_expected = resumed["optimizer"], expected["optimizer"]
    assert opt_resumed["state"].keys() == opt_expected["state"].keys()
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
    assert [h["step"] for h in resumed["history"]] == [h["step"] for h in expected["history"]]
    client = MlflowClient(resolve_tracking_uri(cfg.mlflow.tracking_uri))
    run = client.get_run(json.loads((run_dir / "run.json").read_text())["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["courier.resumes"] == "1"
