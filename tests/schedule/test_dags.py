"""The DAGs under a real Airflow (its own venv, .venv-airflow): they load, and the nightly one runs.

Airflow cannot share the project's venv (its pins fight pyarrow 14 and pyspark 4.0), so
these tests drive it as a separate program, as a deployment would.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from courier.config import PROJECT_ROOT
from courier.schedule import (NIGHTLY_STEPS, PRODUCTION_MODEL, REFIT_STEPS, RETRAINING_STEPS, SKIP_EXIT_CODE,
                              Deployment, Step, asset_uri, python_command)
from jobs.cli import build_parser

AIRFLOW_BIN = PROJECT_ROOT / ".venv-airflow" / "bin"
DAGS = PROJECT_ROOT / "dags"
DATABASE = "courier_airflow_test"
AIRFLOW_MODEL = "courier-airflow-test-encoder"

# Run in Airflow's Python: every DAG of the folder, as the scheduler would see it.
DAGBAG_PROBE = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(sys.argv[1])
out = {"import_errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": {}}
for dag in bag.dags.values():
    out["dags"][dag.dag_id] = {
        "schedule": type(dag.timetable).__name__,
        "scheduled_on": [a.uri for a in getattr(getattr(dag.timetable, "asset_condition", None), "objects", [])],
        "params": {k: dag.params[k] for k in dag.params},
        "tasks": {t.task_id: {"type": type(t).__name__, "upstream": sorted(t.upstream_task_ids),
                              "outlets": [a.uri for a in t.outlets], "retries": t.retries,
                              "application": getattr(t, "application", None),
                              "skip_on_exit_code": sorted(getattr(t, "skip_on_exit_code", None) or [])}
                  for t in dag.tasks},
    }
print("DAGBAG" + json.dumps(out))
"""


def _airflow_python() -> Path:
    python = AIRFLOW_BIN / "python"
    if not python.exists():
        pytest.fail(f"{python} not found: `make setup` builds Airflow's venv (build/airflow)")
    return python


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("airflow-home")
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    out = subprocess.run([str(_airflow_python()), "-W", "ignore", "-c", DAGBAG_PROBE, str(DAGS)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(l for l in out.stdout.splitlines() if l.startswith("DAGBAG"))
    return json.loads(line[len("DAGBAG"):])


def test_the_dag_folder_loads_in_airflow_without_import_errors(dagbag):
    assert dagbag["import_errors"] == {}
    assert set(dagbag["dags"]) == {"courier_nightly", "courier_retraining", "courier_refit"}


@pytest.mark.parametrize("dag_id, steps", [("courier_nightly", NIGHTLY_STEPS),
                                           ("courier_retraining", RETRAINING_STEPS),
                                           ("courier_refit", REFIT_STEPS)])
def test_each_dag_holds_its_steps_as_operators(dagbag, dag_id, steps):
    tasks = dagbag["dags"][dag_id]["tasks"]
    home = dagbag["dags"][dag_id]["params"]["courier_home"]
    assert list(tasks) == [s.task_id for s in steps]
    for step in steps:
        task = tasks[step.task_id]
        assert task["upstream"] == sorted(step.upstream)
        assert task["outlets"] == [asset_uri(p) for p in step.publishes]
        assert task["retries"] == 2
        if step.spark:
            assert task["type"] == "SparkSubmitOperator"
            application = task["application"].replace("{{ params.courier_home }}", home)
            assert Path(application).is_file(), application
        else:
            assert task["type"] == "BashOperator"
            assert task["skip_on_exit_code"] == [SKIP_EXIT_CODE]


def test_a_promotion_schedules_the_refit_through_an_asset(dagbag):
    promote = dagbag["dags"]["courier_retraining"]["tasks"]["promote"]
    refit = dagbag["dags"]["courier_refit"]
    assert refit["schedule"] == "AssetTriggeredTimetable"
    assert refit["scheduled_on"] == promote["outlets"] == [asset_uri(PRODUCTION_MODEL)]
    # The nightly run covers its data interval's days, not a zero-length trigger instant.
    assert dagbag["dags"]["courier_nightly"]["schedule"] == "CronDataIntervalTimetable"


@pytest.mark.parametrize("step", [*NIGHTLY_STEPS, *RETRAINING_STEPS, *REFIT_STEPS], ids=lambda s: s.task_id)
def test_every_step_is_a_job_whose_arguments_the_cli_accepts(step: Step):
    assert (PROJECT_ROOT / "jobs" / f"{step.job}.py").is_file()
    rendered = [a.replace("{{ params.profile }}", "local").replace("{{ data_interval_start | ds }}", "2026-01-04")
                .replace("{{ macros.ds_add(data_interval_end | ds, -1) }}", "2026-01-04")
                .replace("{{ ts_nodash }}", "20260104T020000") for a in step.cli_args()]
    assert not any("{{" in a for a in rendered), rendered
    args = build_parser().parse_args([step.command, *rendered])
    assert args.command == step.command


def test_a_python_step_passes_templated_values_as_environment_not_as_shell_text():
    promote = next(s for s in RETRAINING_STEPS if s.task_id == "promote")
    command, env = python_command(promote)
    assert "{{" not in command                      # nothing Airflow renders lands in the shell text
    assert env["COURIER_PYTHON"] == "{{ params.python }}"
    assert "{{ params.profile }}" in env.values()
    hostile = "/tmp/x.yaml'; rm -rf / #"
    rendered_env = {k: v.replace("{{ params.profile }}", hostile).replace("{{ params.python }}", sys.executable)
                    for k, v in env.items()}
    out = subprocess.run(["bash", "-c", command.replace("-m jobs.cli", "-c 'import sys; print(sys.argv[1:])'")],
                         env={**os.environ, **rendered_env}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert hostile in out.stdout                    # one argument, quotes and all: never executed


def test_the_deployment_defaults_come_from_the_environment(tmp_path):
    (tmp_path / ".jars").mkdir()
    (tmp_path / ".jars" / "delta-spark_2.13-4.0.1.jar").touch()
    (tmp_path / ".jars" / "derbyclient-10.16.1.1.jar").touch()
    local = Deployment.from_env({"COURIER_HOME": str(tmp_path)})
    assert local.jars.split(",")[0].endswith("delta-spark_2.13-4.0.1.jar") and local.packages == ""
    # The embedded catalog's JDBC client goes on the driver JVM's own class path.
    assert local.params()["driver_class_path"] == str(tmp_path / ".jars" / "derbyclient-10.16.1.1.jar")
    assert local.archives is None and local.params()["executor_python"] == local.python
    packed = Deployment.from_env({"COURIER_HOME": "/opt/courier", "COURIER_ENV_ARCHIVE": "/opt/courier-env.tar.gz",
                                  "COURIER_JARS": ""})
    assert packed.archives == "/opt/courier-env.tar.gz#environment"
    assert packed.params()["executor_python"] == "./environment/bin/python"
    assert packed.packages.startswith("io.delta:delta-spark_2.13:")
    for unpackable in ("/opt/courier-env.whl", "/opt/courier-env.tar.gz#env"):
        with pytest.raises(ValueError, match="COURIER_ENV_ARCHIVE=/opt/courier-env"):
            Deployment.from_env({"COURIER_ENV_ARCHIVE": unpackable})


# ---------------------------------------------------------------- the nightly DAG, end to end

def _run(cmd: list[str], env: dict, cwd: Path, timeout: int, what: str) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{what} failed ({out.returncode}):\n{(out.stdout + out.stderr)[-4000:]}"
    return out


@pytest.fixture(scope="module")
def nightly_state(spark, feature_db, encoder_config, registered_encoder: str):
    """The state after a first retraining, on a copy of the test shop: a production model, item
    embeddings, a cluster version and the items' Cluster-IDs. The DAG's jobs share the session's
    warehouse through the catalog server, so they read (and write) what this session wrote."""
    import mlflow
    from mlflow import MlflowClient

    from courier.features.assign import assign_items
    from courier.features.cluster import cluster_embeddings
    from courier.features.embed import embed_items
    from courier.train.tracking import resolve_tracking_uri

    cfg = feature_db(DATABASE)
    tracking = resolve_tracking_uri(cfg.mlflow.tracking_uri)
    mlflow.set_tracking_uri(tracking)
    # A registered model of its own (the encoder's weights), so its production alias is this test's.
    version = mlflow.register_model(f"models:/{cfg.mlflow.registered_model}/{registered_encoder}", AIRFLOW_MODEL)
    MlflowClient(tracking).set_registered_model_alias(AIRFLOW_MODEL, "production", version.version)
    cfg = cfg.replace([f"embed.model_uri=models:/{AIRFLOW_MODEL}@production", "cluster.k=8"])
    embed_items(spark, cfg)
    cluster_embeddings(spark, cfg)
    assign_items(spark, cfg)
    return cfg


@pytest.mark.slow
def test_the_nightly_dag_runs_end_to_end_under_airflow(spark, nightly_state, tmp_path):
    """`airflow dags test` of courier_nightly for 2026-01-04: three spark-submit jobs, tables updated."""
    cfg = nightly_state
    # spark-submit gives the master and the JARs (--jars); the profile leaves both to it.
    profile = tmp_path / "profile.yaml"
    profile.write_text(cfg.replace(["spark.master=null", "spark.jars_dir=null", "spark.driver_memory=2g"]).to_yaml())
    table = lambda name: spark.table(cfg.tables.qualified(name))  # noqa: E731
    before = {name: table(name).count() for name in ("item_embeddings", "pipeline_runs")}
    assert not spark.catalog.tableExists(cfg.tables.qualified("courier_samples"))
    bootstrap_end = table("pipeline_runs").agg(F.max("finished_at")).first()[0]

    env = {**os.environ,
           "AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
           "COURIER_PROFILE": str(profile), "COURIER_PYTHON": sys.executable, "COURIER_RETRIES": "0",
           # spark-submit comes from the project's venv (pyspark); Airflow's venv has none.
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    airflow = str(AIRFLOW_BIN / "airflow")
    _run([airflow, "db", "migrate"], env, tmp_path, 300, "airflow db migrate")
    _run([airflow, "dags", "test", "courier_nightly", "2026-01-05T02:00:00+00:00"], env, tmp_path, 900,
         "airflow dags test courier_nightly")
    runs = json.loads(_run([airflow, "dags", "list-runs", "courier_nightly", "-o", "json"], env, tmp_path, 120,
                           "airflow dags list-runs").stdout.strip().splitlines()[-1])
    assert [(r["state"], r["logical_date"][:10]) for r in runs] == [("success", "2026-01-05")]

    # The tables show the run: one pipeline_runs row per stage, after the bootstrap, for the interval's day.
    new_runs = {r["stage"]: r for r in table("pipeline_runs").where(F.col("started_at") > bootstrap_end).collect()}
    assert set(new_runs) == {"item_images", "build_samples", "embed", "assign"}  # build_samples records two
    day = dt.date(2026, 1, 4)
    assert (new_runs["build_samples"]["start_dt"], new_runs["build_samples"]["end_dt"]) == (day, day)
    samples = table("courier_samples")
    assert samples.where(F.col("dt") == day).count() > 0
    assert samples.where(F.col("dt") != day).count() == 0
    # Every item is embedded by the production model and carries a current Cluster-ID.
    embedded = table("item_embeddings").select("item_id").distinct().count()
    assert embedded == table("item_images").count() == before["item_embeddings"]
    current = table("item_image_features").where("valid_to IS NULL")
    assert current.count() == embedded
    assert current.where("image_cluster_id IS NULL").count() == 0
