"""The DAGs under a real Airflow (its own venv, .venv-airflow): they load, and the nightly one runs.

Airflow cannot share the project's venv (its pins fight pyarrow 14 and pyspark 4.0), so
these tests drive it as a separate program, as a deployment would.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from pyspark.sql import DataFrame, functions as F, types as T

from courier.config import PROJECT_ROOT, CourierConfig
from courier.schedule import (
    NIGHTLY_STEPS,
    PRODUCTION_MODEL,
    REFIT_STEPS,
    RETRAINING_STEPS,
    SKIP_EXIT_CODE,
    Deployment,
    Step,
    asset_uri,
    python_command,
)
from jobs.cli import build_parser
from tests.schedule.conftest import (
    PackedEnvironment,
    StandaloneCluster,
    application_name,
    probe_records,
    run_checked,
    task_executors,
    write_launcher_archive,
)

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
        "scheduled_on": [a.uri for a in getattr(getattr(dag.timetable, "asset_condition", None),
                                                "objects", [])],
        "params": {k: dag.params[k] for k in dag.params},
        "tasks": {t.task_id: {"type": type(t).__name__, "upstream": sorted(t.upstream_task_ids),
                              "outlets": [a.uri for a in t.outlets], "retries": t.retries,
                              "application": getattr(t, "application", None),
                              "skip_on_exit_code": sorted(getattr(t, "skip_on_exit_code", None)
                                                          or [])}
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
    out = subprocess.run(
        [str(_airflow_python()), "-W", "ignore", "-c", DAGBAG_PROBE, str(DAGS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("DAGBAG"))
    return json.loads(line[len("DAGBAG") :])


def test_the_dag_folder_loads_in_airflow_without_import_errors(dagbag):
    assert dagbag["import_errors"] == {}
    assert set(dagbag["dags"]) == {"courier_nightly", "courier_retraining", "courier_refit"}


@pytest.mark.parametrize(
    ("dag_id", "steps"),
    [
        ("courier_nightly", NIGHTLY_STEPS),
        ("courier_retraining", RETRAINING_STEPS),
        ("courier_refit", REFIT_STEPS),
    ],
)
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


@pytest.mark.parametrize(
    "step", [*NIGHTLY_STEPS, *RETRAINING_STEPS, *REFIT_STEPS], ids=lambda s: s.task_id
)
def test_every_step_is_a_job_whose_arguments_the_cli_accepts(step: Step):
    assert (PROJECT_ROOT / "jobs" / f"{step.job}.py").is_file()
    rendered = [
        a.replace("{{ params.profile }}", "local")
        .replace("{{ data_interval_start | ds }}", "2026-01-04")
        .replace("{{ macros.ds_add(data_interval_end | ds, -1) }}", "2026-01-04")
        .replace("{{ ts_nodash }}", "20260104T020000")
        for a in step.cli_args()
    ]
    assert not any("{{" in a for a in rendered), rendered
    args = build_parser().parse_args([step.command, *rendered])
    assert args.command == step.command


def test_a_python_step_passes_templated_values_as_environment_not_as_shell_text():
    promote = next(s for s in RETRAINING_STEPS if s.task_id == "promote")
    command, env = python_command(promote)
    assert "{{" not in command  # nothing Airflow renders lands in the shell text
    assert env["COURIER_PYTHON"] == "{{ params.python }}"
    assert "{{ params.profile }}" in env.values()
    hostile = "/tmp/x.yaml'; rm -rf / #"
    rendered_env = {
        k: v.replace("{{ params.profile }}", hostile).replace("{{ params.python }}", sys.executable)
        for k, v in env.items()
    }
    out = subprocess.run(
        ["bash", "-c", command.replace("-m jobs.cli", "-c 'import sys; print(sys.argv[1:])'")],
        env={**os.environ, **rendered_env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert hostile in out.stdout  # one argument, quotes and all: never executed


def test_the_deployment_defaults_come_from_the_environment(tmp_path):
    (tmp_path / ".jars").mkdir()
    (tmp_path / ".jars" / "delta-spark_2.13-4.0.1.jar").touch()
    (tmp_path / ".jars" / "derbyclient-10.16.1.1.jar").touch()
    local = Deployment.from_env({"COURIER_HOME": str(tmp_path)})
    assert local.jars.split(",")[0].endswith("delta-spark_2.13-4.0.1.jar") and local.packages == ""
    # The embedded catalog's JDBC client goes on the driver JVM's own class path.
    assert local.params()["driver_class_path"] == str(
        tmp_path / ".jars" / "derbyclient-10.16.1.1.jar"
    )
    assert local.archives is None and local.params()["executor_python"] == local.python
    # An environment installed at one path on every node runs the executors' Python workers.
    installed = Deployment.from_env(
        {"COURIER_HOME": str(tmp_path), "COURIER_EXECUTOR_PYTHON": "/opt/env/bin/python"}
    )
    assert installed.params()["executor_python"] == "/opt/env/bin/python"
    assert installed.params()["python"] == f"{tmp_path}/.venv/bin/python"
    packed = Deployment.from_env(
        {
            "COURIER_HOME": "/opt/courier",
            "COURIER_ENV_ARCHIVE": "/opt/courier-env.tar.gz",
            "COURIER_JARS": "",
        }
    )
    assert packed.archives == "/opt/courier-env.tar.gz#environment"
    assert packed.params()["executor_python"] == "./environment/bin/python"
    assert packed.packages.startswith("io.delta:delta-spark_2.13:")
    for unpackable in ("/opt/courier-env.whl", "/opt/courier-env.tar.gz#env"):
        with pytest.raises(ValueError, match="COURIER_ENV_ARCHIVE=/opt/courier-env"):
            Deployment.from_env({"COURIER_ENV_ARCHIVE": unpackable})
    # Spark unpacks a plain .tar without the files' modes: bin/python would not run.
    with pytest.raises(ValueError, match=r"courier-env\.tar: .*SPARK-38632"):
        Deployment.from_env({"COURIER_ENV_ARCHIVE": "/opt/courier-env.tar"})


# ---------------------------------------------------------------- the three DAGs, end to end
# One warehouse and one Airflow home for the module, run as a first deployment would run them, each
# DAG once (`airflow dags test`, three to six spark-submit jobs): courier_retraining trains and
# promotes the first production model, courier_refit (scheduled on that promotion) embeds, clusters
# and assigns every item with it, then courier_nightly takes in a day whose new items only its own
# run can embed and assign. Each test asserts that nothing of its DAG's effect was there before the
# run and that all of it is there after.

DAY = dt.date(2026, 1, 4)  # the nightly run's day: its data interval
RETRAINING_AT = "2026-01-04T04:00:00+00:00"  # a Sunday, the weekly schedule's time
REFIT_AT = "2026-01-04T05:00:00+00:00"  # after the promotion it is scheduled on
NIGHTLY_AT = (
    "2026-01-05T02:00:00+00:00"  # the run after DAY closes: interval [01-04 02:00, 01-05 02:00)
)
# Items listed on DAY after the refit: copies (new ids, same image) of the first catalogue items,
# so each must get its source's embedding and Cluster-ID. Six:
# a handful of rows, no extra Spark job.
NEW_ITEMS, NEW_ID_OFFSET = 6, 1_000_000
NEW_ITEMS_LISTED_AT = dt.datetime(2026, 1, 4, 12, 0)
# Whichever of the three tests runs first sets up every DAG run it follows, and alone the test
# shop and its encoder too: the shop and all three runs took 16 min 56 s and 26 min 4 s with the
# 2-core machine loaded 6- to 16-fold (2026-12-06), where the suite's 900 s would cut them off.
DAG_TEST_TIMEOUT = 2700
DAG_STEPS = {
    "courier_retraining": RETRAINING_STEPS,
    "courier_refit": REFIT_STEPS,
    "courier_nightly": NIGHTLY_STEPS,
}


@dataclass(frozen=True)
class DeployedCourier:
    """The module's warehouse (``cfg``, the DAGs' profile)
    and the Airflow that runs the DAGs on it."""

    cfg: CourierConfig
    env: dict[str, str]
    home: Path
    cluster: StandaloneCluster
    environment: PackedEnvironment
    # Each DAG run's applications on the cluster (event logs), by DAG id.
    applications: dict[str, dict[str, list[dict]]] = field(default_factory=dict)

    def table(self, spark, name: str):
        """The warehouse table ``name`` (a courier.tables name), as the DAG's jobs left it."""
        return spark.table(self.cfg.tables.qualified(name))

    def exists(self, spark, name: str) -> bool:
        """Whether the warehouse holds the table ``name`` yet."""
        return spark.catalog.tableExists(self.cfg.tables.qualified(name))

    def dags_test(self, dag_id: str, logical_date: str) -> dict[str, str]:
        """`airflow dags test` of one run;
        the run must succeed. Returns its tasks' states by task id.

        The states come from Airflow's metadata database (SQLite): one query, where each
        `airflow` CLI call would cost seconds of imports on 2 cores.
        """
        seen = set(self.cluster.applications())
        out = run_checked(
            [str(AIRFLOW_BIN / "airflow"), "dags", "test", dag_id, logical_date],
            f"airflow dags test {dag_id}",
            env=self.env,
            cwd=self.home,
            timeout=900,
        )
        self.applications[dag_id] = {
            app: events for app, events in self.cluster.applications().items() if app not in seen
        }
        with sqlite3.connect(self.home / "airflow.db") as db:
            runs = db.execute(
                "SELECT run_id, state, logical_date FROM dag_run WHERE dag_id = ?", (dag_id,)
            ).fetchall()
            assert [(state, str(day)[:10]) for _, state, day in runs] == [
                ("success", logical_date[:10])
            ], (runs, (out.stdout + out.stderr)[-4000:])
            states = dict(
                db.execute(
                    "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
                    (dag_id, runs[0][0]),
                ).fetchall()
            )
        # spark-submit ran this checkout's jobs (the mutants runner tests a copy of the checkout).
        for step in DAG_STEPS[dag_id]:
            application = PROJECT_ROOT / "jobs" / f"{step.job}.py"
            assert not step.spark or str(application) in out.stdout + out.stderr, application
        return states


@pytest.fixture(scope="module")
def deployed(
    spark,
    feature_db,
    encoder_config,
    tmp_path_factory,
    standalone_cluster: StandaloneCluster,
    packed_environment: PackedEnvironment,
) -> DeployedCourier:
    """A copy of the test shop with its training rows
    before DAY and no model, embeddings or clusters
    yet; its profile as the DAGs read it (COURIER_PROFILE), and a migrated Airflow home whose
    Spark connection is the standalone cluster (tests/schedule/conftest.py).

    Every spark-submit of the DAGs runs on that cluster: the drivers on this machine (Airflow's
    worker, with this checkout and its venv), the executors in the cluster's workers. Their Python
    comes with each application (COURIER_ENV_ARCHIVE, shipped with --archives and unpacked by
    every executor as ./environment): a launcher archive, whose bin/python runs the packed
    environment installed on the "nodes" (tests/schedule/conftest.py says why not the 8 GB
    archive itself). Training runs TorchDistributor with local_mode=False: its two processes are
    tasks on the two executors.
    """
    from courier.tables import replace_where

    cfg = feature_db(DATABASE).replace(
        [
            f"mlflow.registered_model={AIRFLOW_MODEL}",
            "mlflow.experiment=courier-airflow-test",
            f"embed.model_uri=models:/{AIRFLOW_MODEL}@production",
            "cluster.k=8",
            "promote.max_rows=256",
        ]
    )
    # One file per day: the last day's file is the retraining's hold-out,
    # a whole day (batches of 64 to score).
    rows = (
        spark.table(f"{encoder_config.tables.database}.courier_training_rows")
        .where(F.col("dt") < F.lit(DAY))
        .repartition(1)
    )
    replace_where(
        rows,
        cfg.tables.qualified("courier_training_rows"),
        f"dt < DATE'{DAY}'",
        partition_by=["dt"],
    )

    home = tmp_path_factory.mktemp("airflow")
    archive = write_launcher_archive(packed_environment, home / "courier-env-launcher.tar.gz")
    profile = home / "profile.yaml"
    # spark-submit gives the master and the JARs (--jars); the profile leaves both to it.
    submitted = cfg.replace(
        [
            "spark.master=null",
            "spark.jars_dir=null",
            "spark.driver_memory=2g",
            "train.local_mode=false",
            "train.num_processes=2",
        ]
    ).to_dict()
    submitted["spark"]["conf"].update(standalone_cluster.spark_conf())
    profile.write_text(yaml.safe_dump(submitted, sort_keys=False))
    host, port = standalone_cluster.master_url.rsplit(":", 1)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps(
            {"conn_type": "spark", "host": host, "port": int(port)}
        ),
        "COURIER_PROFILE": str(profile),
        "COURIER_PYTHON": sys.executable,
        "COURIER_ENV_ARCHIVE": str(archive),
        "COURIER_RETRIES": "0",
        # spark-submit comes from the project's venv (pyspark); Airflow's venv has none.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    run_checked(
        [str(AIRFLOW_BIN / "airflow"), "db", "migrate"],
        "airflow db migrate",
        env=env,
        cwd=home,
        timeout=300,
    )
    return DeployedCourier(cfg, env, home, standalone_cluster, packed_environment)


def _registry(cfg: CourierConfig):
    from courier.tracking import client, resolve_tracking_uri

    return client(resolve_tracking_uri(cfg.mlflow.tracking_uri))


def _runs_after(spark, deployed: DeployedCourier, after: dt.datetime | None) -> dict[str, dict]:
    """pipeline_runs rows started after ``after`` (all when None), by stage."""
    if not deployed.exists(spark, "pipeline_runs"):
        return {}
    runs = deployed.table(spark, "pipeline_runs")
    if after is not None:
        runs = runs.where(F.col("started_at") > F.lit(after))
    return {r["stage"]: r.asDict() for r in runs.collect()}


def _last_run_end(spark, deployed: DeployedCourier) -> dt.datetime | None:
    if not deployed.exists(spark, "pipeline_runs"):
        return None
    return deployed.table(spark, "pipeline_runs").agg(F.max("finished_at")).first()[0]


def _assert_ran_on_the_cluster(deployed: DeployedCourier, dag_id: str, tasks: list[str]) -> None:
    """The DAG's run started one Spark application on the standalone cluster per task of
    ``tasks`` (its spark-submit steps that open a Spark session: evaluate reads MLflow only),
    named by the operator, and every task of each ran in one of the cluster's executors, none on
    the driver."""
    apps = deployed.applications[dag_id]
    names = sorted(application_name(events) for events in apps.values())
    assert names == sorted(f"courier-{task}" for task in tasks), (dag_id, names)
    for app, events in apps.items():
        name = f"{application_name(events)} ({app})"
        properties = next(e for e in events if e["Event"] == "SparkListenerEnvironmentUpdate")
        assert properties["Spark Properties"]["spark.master"] == deployed.cluster.master_url, name
        added = {e["Executor ID"] for e in events if e["Event"] == "SparkListenerExecutorAdded"}
        ran = task_executors(events)
        assert ran and set(ran) <= added and "driver" not in added, (name, ran, added)


def _python_from_the_environment(deployed: DeployedCourier, marker: str) -> list[dict]:
    """The processes started from the packed environment in the cluster's workers whose command
    line holds ``marker``; each ran that environment's Python, through the archive that an
    executor unpacked in its own folder: <work dir>/<worker>/<app id>/<executor id>/environment."""
    found = [
        p
        for p in probe_records(deployed.cluster.probe_log)
        if any(marker in arg for arg in p["argv"])
    ]
    for process in found:
        assert Path(process["prefix"]) == deployed.environment.environment, process
        launcher = Path(process["launcher"] or "").relative_to(deployed.cluster.work_dir.resolve())
        _worker, app, executor, *unpacked = launcher.parts
        assert app.startswith("app-") and executor.isdigit(), process
        assert unpacked == ["environment", "bin", "python"], process
    return found


# Each DAG's fixture records what its run left before the next DAG runs, so the tests pass in any
# order (the mutants runner orders them by its list).


@pytest.fixture(scope="module")
def retraining(spark, deployed: DeployedCourier) -> dict:
    """courier_retraining's run on a registry without the model: its tasks' states, the rows it
    could train on, then the registry's versions of the model and the MLflow run behind them."""
    from mlflow.exceptions import MlflowException

    registry = _registry(deployed.cfg)
    with pytest.raises(MlflowException):
        registry.get_registered_model(AIRFLOW_MODEL)
    rows = deployed.table(spark, "courier_training_rows").count()
    states = deployed.dags_test("courier_retraining", RETRAINING_AT)
    versions = registry.search_model_versions(f"name='{AIRFLOW_MODEL}'")
    aliases = {
        alias: registry.get_model_version_by_alias(AIRFLOW_MODEL, alias).version
        for alias in ("candidate", "production")
    }
    return {
        "states": states,
        "training_rows": rows,
        "versions": versions,
        "aliases": aliases,
        "run": registry.get_run(versions[0].run_id) if versions else None,
    }


@pytest.mark.slow
@pytest.mark.timeout(DAG_TEST_TIMEOUT)
def test_the_retraining_dag_registers_evaluates_and_promotes_a_model(deployed, retraining):
    from courier import tracking
    from courier.train.promotion import TAG_EVAL_PRODUCTION, TAG_PROMOTED_AT

    assert retraining["states"] == {"train": "success", "evaluate": "success", "promote": "success"}
    (version,) = retraining["versions"]
    assert retraining["aliases"] == {"candidate": version.version, "production": version.version}
    # Evaluated with no production model to beat, then promoted.
    assert version.tags[TAG_EVAL_PRODUCTION] == "" and TAG_PROMOTED_AT in version.tags
    assert 0.0 <= float(version.tags["courier.eval.row_auc"]) <= 1.0
    # Trained by this Airflow run
    # (its name is the run's timestamp) on the warehouse's training rows.
    run = retraining["run"]
    assert run.info.run_name == "retrain-20260104T040000"
    assert run.data.tags[tracking.TAG_TABLE] == deployed.cfg.tables.qualified(
        "courier_training_rows"
    )
    assert int(run.data.tags[tracking.TAG_ROWS]) == retraining["training_rows"]
    # TorchDistributor(local_mode=False) ran its two training processes as tasks of both
    # executors, each started from the packed environment.
    _assert_ran_on_the_cluster(deployed, "courier_retraining", ["train"])
    training = [
        ran
        for events in deployed.applications["courier_retraining"].values()
        if (ran := task_executors(events, stage_from="courier/train/backends.py"))
    ]
    assert [len(ran) for ran in training] == [2] and len(set(training[0])) == 2, training
    assert len(_python_from_the_environment(deployed, "torch_run_process_wrapper")) >= 2


HOROVOD_MODEL = "courier-airflow-horovod-encoder"


@pytest.mark.slow
@pytest.mark.timeout(DAG_TEST_TIMEOUT)
def test_horovod_trains_on_the_cluster_and_registers_its_model(deployed):
    """`courier train` with train.backend=horovod, spark-submitted to the standalone cluster with
    the DAGs' settings: horovod.spark.run starts its two processes from tasks on both executors,
    with the executors' Python (not the driver's path), and the model is registered as usual."""
    deployment = Deployment.from_env(deployed.env)
    params = deployment.params()
    seen = set(deployed.cluster.applications())
    before = len(_python_from_the_environment(deployed, "horovod.spark"))
    submit = [
        *(str(Path(sys.executable).parent / "spark-submit"), "--master"),
        *(deployed.cluster.master_url, "--name", "courier-train-horovod"),
        *("--jars", params["jars"], "--driver-class-path", params["driver_class_path"]),
        *("--archives", str(deployment.archives)),
        *("--conf", f"spark.pyspark.driver.python={params['python']}"),
        *("--conf", f"spark.pyspark.python={params['executor_python']}"),
        *(str(PROJECT_ROOT / "jobs" / "train.py"), "--profile", params["profile"]),
        *("--run-name", "horovod-on-the-cluster", "--set", "train.backend=horovod"),
        *("--set", "train.max_steps=10", "--set", f"mlflow.registered_model={HOROVOD_MODEL}"),
    ]
    run_checked(
        submit,
        "spark-submit jobs/train.py (horovod)",
        env=deployed.env,
        cwd=deployed.home,
        timeout=900,
    )

    version = _registry(deployed.cfg).get_model_version_by_alias(HOROVOD_MODEL, "candidate")
    run = _registry(deployed.cfg).get_run(version.run_id)
    assert run.info.run_name == "horovod-on-the-cluster" and run.info.status == "FINISHED"
    assert run.data.params["train.backend"] == "horovod", run.data.params
    (events,) = [e for app, e in deployed.cluster.applications().items() if app not in seen]
    assert application_name(events) == "courier-train-horovod"
    ran = task_executors(events)
    assert len(set(ran)) == 2 and "driver" not in ran, ran
    # Both processes ran the environment's Python, started by Horovod's tasks on the executors.
    assert len(_python_from_the_environment(deployed, "horovod.spark")) - before >= 2


def _production_version(cfg: CourierConfig) -> str:
    return str(_registry(cfg).get_model_version_by_alias(AIRFLOW_MODEL, "production").version)


def _features(spark, deployed: DeployedCourier) -> dict:
    """Every item, its embeddings, its current Cluster-IDs
    (by item id), the centroids, the production version."""

    def table(name: str) -> DataFrame:
        return deployed.table(spark, name)

    return {
        "items": {r["item_id"] for r in table("item_images").select("item_id").collect()},
        "embeddings": [r.asDict() for r in table("item_embeddings").collect()],
        "current": {
            r["item_id"]: r.asDict()
            for r in table("item_image_features").where("valid_to IS NULL").collect()
        },
        "centroids": [r.asDict() for r in table("cluster_centroids").drop("centroid").collect()],
        "production": _production_version(deployed.cfg),
    }


@pytest.fixture(scope="module")
def refit(spark, deployed: DeployedCourier, retraining) -> dict:
    """courier_refit's run after the promotion, on a warehouse with no features yet: its tasks'
    states, its pipeline_runs rows, then the features it left."""
    for name in ("item_embeddings", "cluster_centroids", "item_image_features"):
        assert not deployed.exists(spark, name), name
    runs_end = _last_run_end(spark, deployed)
    states = deployed.dags_test("courier_refit", REFIT_AT)
    return {
        "states": states,
        "runs": _runs_after(spark, deployed, runs_end),
        **_features(spark, deployed),
    }


@pytest.mark.slow
@pytest.mark.timeout(DAG_TEST_TIMEOUT)
def test_the_refit_dag_embeds_clusters_and_assigns_every_item_with_the_new_model(deployed, refit):
    assert refit["states"] == {"embed": "success", "cluster": "success", "assign": "success"}
    assert set(refit["runs"]) == {"embed", "cluster", "assign"}
    production, items = refit["production"], sorted(refit["items"])
    assert sorted(r["item_id"] for r in refit["embeddings"]) == items
    assert {r["model_version"] for r in refit["embeddings"]} == {production}
    # One new cluster version, fitted on those embeddings and tracked in MLflow.
    centroids = refit["centroids"]
    assert {(r["cluster_version"], r["model_version"]) for r in centroids} == {(1, production)}
    assert sorted(r["cluster_id"] for r in centroids) == list(range(8))
    assert _registry(deployed.cfg).get_run(centroids[0]["mlflow_run_id"]).info.status == "FINISHED"
    # Every item on it.
    current = refit["current"]
    assert sorted(current) == items
    assert {(r["cluster_version"], r["model_version"]) for r in current.values()} == {
        (1, production)
    }
    assert {r["image_cluster_id"] for r in current.values()} <= {r["cluster_id"] for r in centroids}
    _assert_ran_on_the_cluster(deployed, "courier_refit", ["embed", "cluster", "assign"])


def _list_new_items(spark, deployed: DeployedCourier) -> None:
    """NEW_ITEMS rows appended to raw_items, listed on DAY:
    the first items' images under new ids."""
    raw_items = deployed.cfg.tables.qualified("raw_items")
    listed_at = F.lit(NEW_ITEMS_LISTED_AT).cast(
        spark.table(raw_items).schema["updated_at"].dataType
    )
    sources = spark.table(raw_items).orderBy("item_id").limit(NEW_ITEMS)
    (
        sources.withColumn("item_id", F.col("item_id") + NEW_ID_OFFSET)
        .withColumn("updated_at", listed_at)
        .writeTo(raw_items)
        .append()
    )


def _training_rows_by_day(spark, deployed: DeployedCourier) -> dict[dt.date, int]:
    return {
        r["dt"]: r["count"]
        for r in deployed.table(spark, "courier_training_rows").groupBy("dt").count().collect()
    }


@pytest.fixture(scope="module")
def nightly(spark, deployed: DeployedCourier, refit) -> dict:
    """courier_nightly's run for DAY, after NEW_ITEMS items were listed on DAY: the training rows
    before it, its tasks' states, its pipeline_runs rows,
    the samples' days, the features after it."""
    _list_new_items(spark, deployed)
    for name in ("item_images", "item_embeddings", "item_image_features"):
        assert deployed.table(spark, name).where(F.col("item_id") >= NEW_ID_OFFSET).count() == 0, (
            name
        )
    assert not deployed.exists(spark, "courier_samples")
    training_rows, runs_end = _training_rows_by_day(spark, deployed), _last_run_end(spark, deployed)
    twin = _local_twin(spark, deployed)
    states = deployed.dags_test("courier_nightly", NIGHTLY_AT)
    samples = {
        r["dt"] for r in deployed.table(spark, "courier_samples").select("dt").distinct().collect()
    }
    _run_the_chain_in_local_mode(spark, twin)
    return {
        "states": states,
        "runs": _runs_after(spark, deployed, runs_end),
        "samples": samples,
        "training_rows": (training_rows, _training_rows_by_day(spark, deployed)),
        "local_twin": twin,
        **_features(spark, deployed),
    }


# The nightly chain's tables, compared between the cluster's run and the local-mode run; columns
# that say when or by which run a row was written differ by construction and are left out.
CHAIN_TABLES = (
    "item_images",
    "courier_samples",
    "courier_training_rows",
    "item_embeddings",
    "item_image_features",
)
RUN_COLUMNS = frozenset(
    {"run_id", "prepared_at", "computed_at", "published_at", "updated_at", "valid_from", "valid_to"}
)


def _local_twin(spark, deployed: DeployedCourier) -> CourierConfig:
    """A shallow clone of every table of the DAGs' warehouse (views are the assign stage's to
    make), under its own database: where the nightly chain runs a second time, in local mode."""
    twin = deployed.cfg.replace([f"tables.database={DATABASE}_local"])
    spark.sql(f"DROP DATABASE IF EXISTS {twin.tables.database} CASCADE")
    spark.sql(f"CREATE DATABASE {twin.tables.database}")
    for table in spark.catalog.listTables(DATABASE):
        if not table.isTemporary and table.tableType != "VIEW":
            spark.sql(
                f"CREATE TABLE {twin.tables.database}.{table.name} "
                f"SHALLOW CLONE {DATABASE}.{table.name}"
            )
    return twin


def _run_the_chain_in_local_mode(spark, cfg: CourierConfig) -> None:
    """build-samples -> embed -> assign for DAY in this session (local[2,2]), as the DAG's steps
    call them."""
    from courier.features.assign import assign_items
    from courier.features.embed import embed_items
    from courier.samples.build import build_samples

    build_samples(spark, cfg, DAY, DAY)
    embed_items(spark, cfg)
    assign_items(spark, cfg)


def _chain_rows(spark, cfg: CourierConfig, name: str) -> tuple[list[str], list[list]]:
    """A chain table's rows without RUN_COLUMNS, sorted: their exact columns as text, and apart,
    in the same order, their floating-point ones (embeddings, similarities) to compare within
    1e-4: one core per executor against two in local mode may sum in another order."""
    table = spark.table(cfg.tables.qualified(name))
    kept = [f for f in table.schema.fields if f.name not in RUN_COLUMNS]
    floats = [f.name for f in kept if _is_float(f.dataType)]
    exact = [f.name for f in kept if f.name not in floats]
    collected = table.select(*exact, *floats).collect()
    rows = sorted(
        ((str({c: r[c] for c in exact}), [r[c] for c in floats]) for r in collected),
        key=lambda row: row[0],
    )
    return [text for text, _ in rows], [values for _, values in rows]


def _is_float(data_type: T.DataType) -> bool:
    if isinstance(data_type, T.ArrayType):
        return _is_float(data_type.elementType)
    return isinstance(data_type, (T.FloatType, T.DoubleType))


@pytest.mark.slow
@pytest.mark.timeout(DAG_TEST_TIMEOUT)
def test_the_nightly_dag_embeds_and_assigns_the_days_new_items(spark, deployed, nightly):
    assert nightly["states"] == {
        "build_samples": "success",
        "embed": "success",
        "assign": "success",
    }
    # One pipeline_runs row per stage, for the interval's day;
    # the new items only were prepared and embedded.
    runs = nightly["runs"]
    assert set(runs) == {
        "item_images",
        "build_samples",
        "embed",
        "assign",
    }  # build_samples records two
    assert (runs["build_samples"]["start_dt"], runs["build_samples"]["end_dt"]) == (DAY, DAY)
    assert runs["item_images"]["metrics"]["prepared"] == NEW_ITEMS
    assert runs["embed"]["metrics"]["embedded"] == NEW_ITEMS
    assert runs["assign"]["metrics"]["new_items"] == NEW_ITEMS
    assert nightly["samples"] == {DAY}
    before, after = nightly["training_rows"]
    assert after.pop(DAY) > 0 and DAY not in before
    assert after == before  # the other days' training rows untouched

    # Each new item: its source's image, embedded by the production model, on its source's cluster.
    production = nightly["production"]
    embedded = {r["item_id"]: r for r in nightly["embeddings"] if r["model_version"] == production}
    current = nightly["current"]
    new = sorted(i for i in embedded if i >= NEW_ID_OFFSET)
    assert len(new) == NEW_ITEMS
    for item in new:
        assert embedded[item]["content_hash"] == embedded[item - NEW_ID_OFFSET]["content_hash"]
        assert embedded[item]["embedding"] == pytest.approx(
            embedded[item - NEW_ID_OFFSET]["embedding"], abs=1e-4
        )
        assert (current[item]["cluster_version"], current[item]["model_version"]) == (1, production)
        assert (
            current[item]["image_cluster_id"] == current[item - NEW_ID_OFFSET]["image_cluster_id"]
        )
    # Every item is embedded by the production model and carries a current Cluster-ID.
    assert set(embedded) == set(current) == nightly["items"]

    # On the standalone cluster, each step's tasks in its executors, the Python workers from the
    # packed environment; its tables equal, row for row, the same chain's in local mode.
    _assert_ran_on_the_cluster(deployed, "courier_nightly", ["build_samples", "embed", "assign"])
    assert _python_from_the_environment(deployed, "pyspark.daemon")
    differ = {}
    for name in CHAIN_TABLES:
        cluster_rows, cluster_floats = _chain_rows(spark, deployed.cfg, name)
        local_rows, local_floats = _chain_rows(spark, nightly["local_twin"], name)
        if cluster_rows != local_rows:
            only = sorted(set(cluster_rows) ^ set(local_rows))
            differ[name] = (len(cluster_rows), len(local_rows), [r[:300] for r in only[:2]])
            continue
        for row, values, expected in zip(cluster_rows, cluster_floats, local_floats, strict=True):
            for value, local in zip(values, expected, strict=True):
                assert value == pytest.approx(local, abs=1e-4), (name, row[:200])
    assert not differ, differ
