"""``courier experiment`` end to end on the CTR test shop, and its resume.

Three arms, one seed: none, the oracle and a random-init encoder of seed 0 (registered by
``train.objective=random_init``, then embedded, clustered, assigned and joined
by the real feature stages into its own exp_random_init_s0_* tables).
"""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from courier.experiment.run import run_experiment
from courier.experiment.state import ExperimentState
from courier.tracking import resolve_tracking_uri


@pytest.fixture(scope="module")
def exp_cfg(ctr_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("experiment")
    return ctr_cfg.replace(
        [
            "experiment.variants=[none,oracle,random_init]",
            "experiment.seeds=[0]",
            "experiment.usages=[]",
            f"experiment.out_dir={out}",
            f"experiment.results_md={out}/RESULTS.md",
            "experiment.bootstrap_resamples=20",
            "ctr.max_epochs=2",
            "cluster.k=16",
            "mlflow.experiment=courier-experiment-test",
            "mlflow.registered_model=courier-experiment-test-encoder",
        ]
    )


@pytest.fixture(scope="module")
def first_run(spark, exp_cfg):
    return run_experiment(spark, exp_cfg)


def children(cfg, parent: str):
    mlc = MlflowClient(resolve_tracking_uri(cfg.mlflow.tracking_uri))
    experiment_id = mlc.get_run(parent).info.experiment_id
    return mlc.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent}'")


def test_the_table_has_every_arm_and_the_oracle_is_the_ceiling(first_run):
    assert [r.arm for r in first_run.rows] == ["none", "oracle", "random_init"]
    oracle, random_init = first_run.row("oracle"), first_run.row("random_init")
    assert oracle.lift_mean > 1.0 and oracle.bootstrap.low > 0
    assert random_init.share_of_oracle == pytest.approx(
        random_init.lift_mean / oracle.lift_mean, rel=1e-12
    )
    assert first_run.encoders["random_init@seed0"]["train_steps"] == 0
    # 6 days: 4 CTR training days, 1 validation day,
    # 1 test day; encoders learn from the first 4 only
    assert first_run.encoders["random_init@seed0"]["train_window"] == ["2026-01-01", "2026-01-04"]
    assert set(first_run.style["random_init"]) == {"style_knn10", "style_nmi", "category_nmi"}


def test_results_md_report_and_pictures_are_written(first_run, exp_cfg):
    md = first_run.files["results_md"].read_text()
    assert "| oracle | 1 |" in md and "style 10-NN" in md
    assert "CTR validation days 2026-01-05..2026-01-05, test days 2026-01-06..2026-01-06" in md
    assert "- 2026-01-01..2026-01-04: random_init@seed0" in md
    html = first_run.files["report"].read_text()
    for key in (
        "lift_bars",
        "lift_by_category",
        "random_init/embedding_map",
        "random_init/cluster_grid",
    ):
        assert first_run.files[key].stat().st_size > 1000
        assert first_run.files[key].name in html


def test_mlflow_has_one_parent_with_a_child_per_arm_and_seed(first_run, exp_cfg):
    state = ExperimentState.load(first_run.files["report"].parent)
    runs = children(exp_cfg, state.parent_run_id)
    assert sorted(r.data.params["variant"] for r in runs) == ["none", "oracle", "random_init"]
    assert all("test_auc" in r.data.metrics and "test_gauc" in r.data.metrics for r in runs)


def test_resume_recomputes_only_what_is_missing(spark, first_run, exp_cfg):
    out = first_run.files["report"].parent
    results = out / "results"
    kept = {
        p.name: p.stat().st_mtime_ns
        for p in results.iterdir()
        if not p.name.startswith("random_init")
    }
    for p in results.glob("random_init__seed0.*"):
        p.unlink()
    state_before = json.loads((out / "state.json").read_text())
    mlc = MlflowClient(resolve_tracking_uri(exp_cfg.mlflow.tracking_uri))
    versions_before = len(
        mlc.search_model_versions(f"name = '{exp_cfg.mlflow.registered_model}-exp-random_init-s0'")
    )

    again = run_experiment(spark, exp_cfg)
    assert {p.name: p.stat().st_mtime_ns for p in results.iterdir() if p.name in kept} == kept
    assert (results / "random_init__seed0.npy").is_file()
    assert json.loads((out / "state.json").read_text()) == state_before  # no encoder rebuilt
    assert (
        len(
            mlc.search_model_versions(
                f"name = '{exp_cfg.mlflow.registered_model}-exp-random_init-s0'"
            )
        )
        == versions_before
    )
    # the one recomputed arm added a child
    assert len(children(exp_cfg, state_before["parent_run_id"])) == 4
    assert again.row("oracle").lift_mean == first_run.row("oracle").lift_mean
