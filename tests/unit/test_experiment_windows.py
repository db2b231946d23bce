"""No encoder of the CTR comparison learns from the days it is scored on (issue 17, section 1)."""

from __future__ import annotations

import datetime as dt

import pytest

from courier.config import load_config
from courier.ctr.data import DateSplit
from courier.experiment.run import LeakageError, check_no_leakage, encoder_window

D = dt.date


def test_encoders_train_on_the_ctr_training_days_only():
    cfg = load_config("local", ["ctr_samples.validation_days=2", "ctr_samples.test_days=3"])
    assert encoder_window(cfg, D(2026, 1, 1), D(2026, 1, 14)) == (D(2026, 1, 1), D(2026, 1, 9))
    cfg = load_config("local", ["ctr_samples.validation_days=1", "ctr_samples.test_days=2"])
    assert encoder_window(cfg, D(2026, 1, 1), D(2026, 1, 14)) == (D(2026, 1, 1), D(2026, 1, 11))


def test_an_encoder_reaching_the_validation_or_test_days_is_refused():
    # validation 10..11, test 12..14
    split = DateSplit.last_days(D(2026, 1, 1), D(2026, 1, 14), 2, 3)
    fine = {
        "courier": {"train_window": ["2026-01-01", "2026-01-09"]},
        "base": {"ctr_samples": "courier.exp_base_ctr_samples"},
    }
    check_no_leakage(fine, split)
    for last in ("2026-01-10", "2026-01-14"):
        with pytest.raises(LeakageError, match=r"encoder simclr trained on 2026-01-01\.\." + last):
            check_no_leakage({**fine, "simclr": {"train_window": ["2026-01-01", last]}}, split)
    with pytest.raises(
        LeakageError, match="encoder courier_no_ucs: its training days are not recorded"
    ):
        check_no_leakage({**fine, "courier_no_ucs": {"model_version": "3"}}, split)
    # the published model's window is looked up; a model trained on every day has none
    with pytest.raises(LeakageError, match="encoder published"):
        check_no_leakage(
            {**fine, "published": {"ctr_samples": "courier.ctr_samples", "train_window": None}},
            split,
        )


def test_the_published_models_window_is_read_from_its_training_run(tmp_path):
    from mlflow.tracking import MlflowClient

    from courier.experiment.run import published_window

    cfg = load_config(
        "local",
        [
            f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            "mlflow.registered_model=published-window-test",
        ],
    )
    mlc = MlflowClient(cfg.mlflow.tracking_uri, registry_uri=cfg.mlflow.tracking_uri)
    experiment = mlc.create_experiment("windows", artifact_location=str(tmp_path / "artifacts"))
    mlc.create_registered_model("published-window-test")
    versions = {}
    for dates in ("2026-01-01..2026-01-09", "all"):
        run = mlc.create_run(experiment, tags={"courier.dates": dates}).info.run_id
        versions[dates] = mlc.create_model_version(
            "published-window-test", f"runs:/{run}/model", run
        ).version
    assert published_window(cfg, (versions["2026-01-01..2026-01-09"],)) == [
        "2026-01-01",
        "2026-01-09",
    ]
    # trained on every day: refused by the check
    assert published_window(cfg, (versions["all"],)) is None
    assert published_window(cfg, tuple(versions.values())) is None
