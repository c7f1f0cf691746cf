"""The Airflow DAGs: they parse without torch, MLflow or kfp, quickly and without import errors; and a
real Airflow (scheduler, DAG processor, API server, PostgreSQL) runs the pipeline (infra/airflow)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("airflow")

ROOT = Path(__file__).resolve().parents[1]
DAG_FILE = ROOT / "pipelines" / "airflow" / "detcurate_dag.py"
#: Airflow's default ``core.dagbag_import_timeout``.
DAG_IMPORT_TIMEOUT_S = 30.0

_PARSE = f"""
import importlib.util, json, sys, time
import airflow.sdk, airflow.timetables.assets  # what the DAG processor has loaded already
start = time.perf_counter()
spec = importlib.util.spec_from_file_location("detcurate_dag", {str(DAG_FILE)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
seconds = time.perf_counter() - start
heavy = sorted(m for m in ("torch", "torchvision", "mlflow", "kfp", "kubernetes", "dvc") if m in sys.modules)
print(json.dumps({{"seconds": seconds, "heavy": heavy}}))
"""


def _airflow_env(tmp_path: Path) -> dict[str, str]:
    from pipelines.airflow.local_run import airflow_env

    return airflow_env(tmp_path / "airflow_home")


def test_dag_file_imports_no_heavy_module_and_parses_fast(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", _PARSE], capture_output=True, text=True, timeout=300,
                         env=_airflow_env(tmp_path), check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["seconds"] < DAG_IMPORT_TIMEOUT_S / 10, result  # measured 0.02-0.1 s on 2 busy cores


_DAGBAG = """
import json
from airflow.dag_processing.dagbag import DagBag
from pipelines.airflow.local_run import DAG_FOLDER
bag = DagBag(dag_folder=str(DAG_FOLDER))
dag = bag.dags["detcurate_pipeline"]  # get_dag() would ask the metadata database
print(json.dumps({"errors": {k: str(v)[:300] for k, v in bag.import_errors.items()}, "dags": sorted(bag.dag_ids),
                  "tasks": sorted(dag.task_dict), "retries": {t: dag.task_dict[t].retries for t in dag.task_dict},
                  "upstream": {t: sorted(dag.task_dict[t].upstream_task_ids) for t in dag.task_dict},
                  "schedule": type(dag.timetable).__name__, "params": sorted(dag.params.keys())}))
"""


def test_dagbag_imports_the_dags_without_errors(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", _DAGBAG], capture_output=True, text=True, timeout=300,
                         env=_airflow_env(tmp_path), check=True)
    bag = json.loads(out.stdout.strip().splitlines()[-1])
    assert bag["errors"] == {} and bag["dags"] == ["detcurate_data", "detcurate_pipeline"]
    assert bag["schedule"] == "AssetOrTimeSchedule"  # weekly, and on every new data version
    assert {t for t, n in bag["retries"].items() if n == 2} == {"train_teacher", "train_student", "train_student_curated",
                                                                "robustness", "active_learning"}
    assert bag["upstream"]["balance"] == ["train_teacher"] and bag["upstream"]["robustness"] == ["data"]
    assert bag["upstream"]["active_learning"] == ["data"] and bag["upstream"]["label_quality"] == ["train_teacher"]
    assert bag["upstream"]["train_student_curated"] == bag["upstream"]["train_student"] == ["balance"]
    assert bag["upstream"]["report"] == ["active_learning", "evaluate_student", "evaluate_student_curated",
                                         "evaluate_teacher", "label_quality", "robustness"]
    assert bag["upstream"]["promote"] == ["report"] and bag["upstream"]["record_success"] == ["promote", "submit_kfp"]
    assert {"profile", "seed", "data_rev", "mode", "kfp_host", "image"} <= set(bag["params"])


def _postgres_answers() -> str | None:
    if not shutil.which("pg_isready"):
        return "pg_isready is not installed"
    done = subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"], check=False)
    return None if done.returncode == 0 else "PostgreSQL does not answer on 127.0.0.1:5432"


@pytest.mark.slow
def test_a_real_airflow_on_postgresql_runs_the_pipeline(tmp_path: Path) -> None:
    reason = _postgres_answers()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "RUN_HOME": str(tmp_path / "airflow"), "PORT": "8789", "TIMEOUT": "900",
           "AIRFLOW_DB": "detcurate_airflow_test"}
    done = subprocess.run([str(ROOT / "infra" / "airflow" / "run_airflow.sh")], capture_output=True, text=True,
                          timeout=1500, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert ": success after" in done.stdout
    for task in ("data", "train_teacher", "balance", "train_student_curated", "robustness", "active_learning",
                 "label_quality", "report", "promote", "record_success"):
        assert f"  {task}: success" in done.stdout, done.stdout
    assert "  submit_kfp: skipped" in done.stdout and "| teacher |" in done.stdout
