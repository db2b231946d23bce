"""The exported training set (courier export-training-set) and the in-memory recipe trainer.

On the training shop (4 days): 2 CTR training days (the encoder's window), 1 validation day,
1 test day. The file must hold exactly the window's training rows, the CTR rows up to the
validation day and never a test-day row; its item indices must point at the right images.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import torch
from pyspark.sql import functions as F

from courier.ctr.data import read_ctr_samples
from courier.data.decode import decode_jpegs, normalise_images
from courier.experiment.arms import base_config
from courier.experiment.recipe import MemoryBatches, Selection, share_of_oracle, train_recipe
from courier.experiment.trainset import TrainingSet, TrainingSetError, export_training_set

START, END = dt.date(2026, 1, 1), dt.date(2026, 1, 4)
WINDOW = (dt.date(2026, 1, 1), dt.date(2026, 1, 2))


@pytest.fixture(scope="module")
def ts_cfg(shop_config, training_table, tmp_path_factory):
    out = tmp_path_factory.mktemp("trainset")
    return shop_config.replace(
        [
            "ctr_samples.validation_days=1",
            "ctr_samples.test_days=1",
            "ctr_samples.l_click=6",
            "ctr.max_epochs=1",
            "ctr.embedding_dim=4",
            "cluster.k=8",
            f"mlflow.tracking_uri=sqlite:///{out}/mlflow.db",
        ]
    )


@pytest.fixture(scope="module")
def exported(spark, ts_cfg, tmp_path_factory):
    path = tmp_path_factory.mktemp("trainset-file") / "shop.npz"
    export_training_set(spark, ts_cfg, START, END, path)
    return TrainingSet.load(path)


def test_the_file_holds_the_window_rows_and_no_test_day(spark, ts_cfg, exported):
    ts = exported
    samples = spark.table(ts_cfg.tables.qualified("courier_samples"))
    assert len(ts.pv_items) == samples.where(F.col("dt").between(*WINDOW)).count() < samples.count()
    assert ts.meta["encoder_window"] == ["2026-01-01", "2026-01-02"]
    assert ts.meta["split"]["test"] == ["2026-01-04", "2026-01-04"]
    ctr_table = base_config(ts_cfg).tables.qualified("ctr_samples")
    assert (
        len(ts.ctr["label"])
        == spark.table(ctr_table).where(F.col("dt") <= dt.date(2026, 1, 3)).count()
    )
    assert ts.ctr["dt"].max() == np.datetime64("2026-01-03") and ts.ctr[
        "dt"
    ].min() == np.datetime64("2026-01-01")


def test_item_indices_point_at_each_items_own_image_and_history(spark, ts_cfg, exported):
    ts = exported
    rows = (
        spark.table(ts_cfg.tables.qualified("courier_samples"))
        .where(F.col("dt").between(*WINDOW))
        .orderBy("request_id")
        .select("pv_item_ids", "click_item_ids")
        .toPandas()
    )
    pv_ids = np.stack(rows["pv_item_ids"].to_numpy())
    assert np.array_equal(np.where(ts.pv_items >= 0, ts.item_ids[ts.pv_items], -1), pv_ids)
    assert np.array_equal(
        np.where(ts.click_items >= 0, ts.item_ids[ts.click_items], -1),
        np.stack(rows["click_item_ids"].to_numpy()),
    )
    images = spark.table(ts_cfg.tables.qualified("item_images")).where(
        F.col("item_id") == int(ts.item_ids[7])
    )
    assert np.array_equal(ts.images[7], decode_jpegs([bytes(images.first()["jpeg"])], 32)[0])
    # the CTR rows come back as the CTR model reads them from the table
    table = read_ctr_samples(
        spark, base_config(ts_cfg).tables.qualified("ctr_samples"), START, dt.date(2026, 1, 3), 6
    )
    arrays = ts.ctr_arrays()
    assert np.array_equal(arrays.history_item, table.history_item)
    assert np.array_equal(arrays.history_category, table.history_category)
    assert np.array_equal(arrays.item_id, table.item_id) and np.array_equal(
        arrays.label, table.label
    )


def test_a_shorter_history_keeps_the_newest_clicks(exported):
    short = exported.with_history(2)
    assert np.array_equal(short.click_items, exported.click_items[:, -2:])
    with pytest.raises(TrainingSetError, match=r"export it with samples.l_click >= 9"):
        exported.with_history(9)


def test_a_missing_or_foreign_file_is_named(tmp_path):
    with pytest.raises(TrainingSetError, match="does not exist"):
        TrainingSet.load(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, meta=np.frombuffer(b'{"format": 99}', dtype=np.uint8))
    with pytest.raises(TrainingSetError, match="format 99"):
        TrainingSet.load(bad)


def test_memory_batches_gather_each_slots_own_image(exported):
    batches = MemoryBatches(exported, 16, "none", 4, torch.device("cpu"), seed=0)
    rows = np.arange(16)
    batch = batches.batch(rows)
    i, j = map(int, np.argwhere(exported.pv_items[rows] >= 0)[5])
    item = exported.pv_items[rows][i, j]
    assert torch.equal(
        batch["pv_images"][i, j], torch.from_numpy(normalise_images(exported.images[item]))
    )
    assert int(batch["pv_item_ids"][i, j]) == int(exported.item_ids[item])
    pad = np.argwhere(exported.click_items[rows] < 0)
    if len(pad):
        a, b = map(int, pad[0])
        assert not batch["click_mask"][a, b] and torch.all(batch["click_images"][a, b] == 0)


def test_query_grouping_gives_batches_of_fewer_queries(exported):
    def queries_per_batch(grouping: str) -> float:
        it = MemoryBatches(exported, 16, grouping, 64, torch.device("cpu"), seed=0).row_batches()
        return float(np.mean([len(set(exported.group_keys[next(it)])) for _ in range(20)]))

    assert queries_per_batch("query") < 0.5 * queries_per_batch("none")


def test_a_recipe_trains_and_is_scored_on_the_validation_days(exported, ts_cfg, tmp_path):
    cfg = ts_cfg.replace(["train.batch_size=16", "train.lr=0.001", "samples.l_click=3"])
    cache = tmp_path / "baselines.json"
    selection = Selection.from_trainset(exported, cfg, (0,), cache=cache)
    # the selection never sees the test day:
    # it scores the validation day, early-stops on the last training day
    assert selection.data.split.test == (dt.date(2026, 1, 3), dt.date(2026, 1, 3))
    assert selection.data.split.validation == (dt.date(2026, 1, 2), dt.date(2026, 1, 2))
    # too few days for the oracle to lift
    assert 0 < selection.none_auc < 1 and 0 < selection.oracle_auc < 1
    _model, scored = train_recipe(cfg, exported, (2, 4), selection)
    assert [s.step for s in scored] == [2, 4]
    s = scored[-1]
    assert s.share == share_of_oracle(s.validation_auc, selection.none_auc, selection.oracle_auc)
    assert 0 < s.images_encoded <= 4 * 16 * (5 + 3) and 0 <= s.style_knn10 <= 1
    # the cache answers a second selection on the same file and CTR settings
    again = Selection.from_trainset(exported, cfg, (0,), cache=cache)
    assert (again.none_auc, again.oracle_auc) == (selection.none_auc, selection.oracle_auc)


def test_the_share_of_the_oracle():
    assert share_of_oracle(0.58, 0.56, 0.62) == pytest.approx(1 / 3)
    assert share_of_oracle(0.55, 0.56, 0.62) == pytest.approx(-1 / 6)
    assert share_of_oracle(0.58, 0.56, 0.56) is None and share_of_oracle(0.58, 0.56, 0.55) is None


def test_the_gpu_script_trains_for_its_time_and_writes_the_encoder(exported, tmp_path):
    # On this CPU-only machine it runs on the CPU: the same code path but the device.
    import json
    import subprocess
    import sys
    from pathlib import Path

    from courier.config import load_config
    from courier.model import build_image_encoder

    path = tmp_path / "set.npz"
    exported.save(path)
    out = tmp_path / "gpu"
    root = Path(__file__).resolve().parents[2]
    sets = [
        "train.batch_size=16",
        "samples.l_click=3",
        "ctr.max_epochs=1",
        "ctr.embedding_dim=4",
        "cluster.k=8",
    ]
    done = subprocess.run(
        [
            sys.executable,
            str(root / "bench" / "gpu_recipe.py"),
            str(path),
            "--minutes",
            "0.05",
            "--ctr-seeds",
            "0",
            "--out",
            str(out),
            *[a for s in sets for a in ("--set", s)],
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "distinct images/s; validation share of the oracle" in done.stdout
    result = json.loads((out / "result.json").read_text())
    assert result["device"] == "cpu" and result["steps"] >= 1 and result["train_seconds"] >= 3.0
    assert result["trainset"]["encoder_window"] == ["2026-01-01", "2026-01-02"]
    encoder = build_image_encoder(load_config("local").model)
    encoder.load_state_dict(torch.load(out / "encoder.pt", weights_only=True))
