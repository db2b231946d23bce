"""Every nightly step is a real job file whose arguments the CLI accepts."""
from __future__ import annotations

from pathlib import Path

from courier.config import PROJECT_ROOT
from courier.schedule import NIGHTLY_STEPS, spark_submit_command
from jobs.cli import build_parser


def test_steps_point_at_jobs_the_cli_accepts():
    ids = {s.task_id for s in NIGHTLY_STEPS}
    for step in NIGHTLY_STEPS:
        assert (PROJECT_ROOT / "jobs" / f"{step.job}.py").exists()
        assert set(step.upstream) <= ids
        rendered = [a.replace("{{ ds }}", "2026-01-05").replace("{{ params.profile }}", "local") for a in step.args]
        args = build_parser().parse_args([step.job.replace("_", "-"), *rendered])
        assert args.command == step.job.replace("_", "-")
        assert f"jobs/{step.job}.py" in spark_submit_command(step)


def test_dag_file_uses_the_schedule():
    text = (PROJECT_ROOT / "dags" / "courier_nightly.py").read_text()
    assert "NIGHTLY_STEPS" in text and "spark_submit_command" in text
    assert Path(PROJECT_ROOT / "dags").is_dir()
