"""Training refuses data it cannot trust, with an error that says what and where."""

from __future__ import annotations

import dataclasses

import pytest

from courier.config import CourierConfig
from courier.train import TrainingDataError, run_training
from jobs.cli import main


def test_empty_date_range_is_a_clear_error_from_courier_train(
    spark, shop_config: CourierConfig, training_table, tmp_path, capsys
):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(shop_config.to_yaml())
    rc = main(
        [
            "train",
            "--profile",
            str(config_path),
            "--no-spark",
            "--start",
            "2030-01-01",
            "--end",
            "2030-01-07",
            "--run-name",
            "empty-range",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "courier train: error:" in err
    assert training_table in err and "2030-01-01" in err, err
    assert "Traceback" not in err


def test_tampered_row_count_stops_training_with_the_table_and_version(
    shop_config: CourierConfig, snapshot
):
    # The snapshot promises one row more per file than the files hold: the loader's guard fires
    # on the first file it reads, before a step trains on a short epoch.
    rows = tuple(n + 1 for n in snapshot.file_rows)
    tampered = dataclasses.replace(snapshot, file_rows=rows, total_rows=sum(rows))
    cfg = shop_config.replace(
        ["train.max_steps=2", "train.holdout_fraction=0.0", "mlflow.log_model=false"]
    )
    with pytest.raises(TrainingDataError) as info:
        run_training(cfg, snapshot=tampered, run_name="tampered", distributed=False)
    message = str(info.value)
    assert snapshot.table in message and f"version {snapshot.version}" in message
    assert "rows" in message
