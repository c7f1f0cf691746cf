"""One entry point, several runners: the smoke profile end to end with kfp.local and with Airflow's
``dag.test()``, the same metrics from both, the run status and the registered models in MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("kfp")
pytest.importorskip("airflow")
pytest.importorskip("mlflow")

DETCURATE = [sys.executable, "-c", "from pipelines.cli import main; main()"]
SMOKE_LIMIT_S = 180


def _run(runner: str, root: Path) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    done = subprocess.run([*DETCURATE, "pipeline", "run", "--runner", runner, "--profile", "smoke", "--out",
                           str(root / "run")], capture_output=True, text=True, timeout=1200, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"seconds": time.monotonic() - start, "stdout": done.stdout, "uri": env["MLFLOW_TRACKING_URI"],
            "metrics": root / "run" / "report" / "metrics.json"}


@pytest.fixture(scope="module")
def kfp_run(tmp_path_factory) -> dict:
    return _run("kfp-local", tmp_path_factory.mktemp("kfp_local"))


@pytest.fixture(scope="module")
def airflow_run(tmp_path_factory) -> dict:
    return _run("airflow", tmp_path_factory.mktemp("airflow"))


@pytest.mark.slow
def test_kfp_local_runs_the_whole_graph(kfp_run: dict) -> None:
    from mlflow import MlflowClient

    metrics = json.loads(kfp_run["metrics"].read_text())
    assert set(metrics["models"]) == {"teacher", "student", "student_curated"}
    assert metrics["profile"] == "smoke" and metrics["seed"] == 0
    report = kfp_run["metrics"].parent
    assert (report / "report.md").read_text().count("| student") == 2 and (report / "training_curves.png").is_file()
    client = MlflowClient(tracking_uri=kfp_run["uri"])
    for model, alias in (("teacher", "teacher"), ("student", "champion"), ("student_curated", "champion")):
        version = client.get_model_version_by_alias(f"detcurate-smoke-{model}", alias)
        assert version.tags["detcurate.profile"] == "smoke"
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.`detcurate.pipeline_status` = 'SUCCEEDED'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the exit handler's record
    training = client.search_runs([runs[0].info.experiment_id], filter_string="attributes.run_name = 'detcurate-smoke-teacher'")
    assert training[0].data.tags["detcurate.pipeline_run"] == runs[0].data.tags["detcurate.pipeline_run"]


@pytest.mark.slow
def test_airflow_and_kfp_give_the_same_metrics(kfp_run: dict, airflow_run: dict) -> None:
    assert json.loads(airflow_run["metrics"].read_text()) == json.loads(kfp_run["metrics"].read_text())
    assert airflow_run["metrics"].read_bytes() == kfp_run["metrics"].read_bytes()
    assert airflow_run["seconds"] < SMOKE_LIMIT_S, airflow_run["seconds"]
