"""One entry point, several runners: the smoke profile end to end with kfp.local and with Airflow's
``dag.test()``, the same metrics from both (models, balancing, robustness cells, the active-learning curve,
the label-quality counts), the HTML report, the run status, the registered models and the promotion
decisions in MLflow."""

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
            "metrics": root / "run" / "report" / "metrics.json", "root": root / "run"}


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
    cells = metrics["robustness"]["cells"]  # 2 modes x 2 losses x 1 seed
    assert sorted((c["mode"], c["loss"]) for c in cells) == [("hard", "brl"), ("hard", "focal"), ("normal", "brl"),
                                                             ("normal", "focal")]
    assert all(0 <= c["AP"] <= 1 for c in cells) and metrics["robustness"]["dropped_fraction"]["normal"] == 0
    assert 0 < metrics["robustness"]["dropped_fraction"]["hard"] < 1
    assert metrics["balance"]["images"] == 96 and metrics["balance"]["expected_images_per_epoch"] > 96  # repeats
    rounds = metrics["active_learning"]["rounds"]  # round 0, then 2 rounds of 10 boxes
    assert [r["round"] for r in rounds] == [0, 1, 2] and rounds[-1]["boxes"] == rounds[0]["boxes"] + 20
    assert metrics["active_learning"]["final"] == rounds[-1] and all(0 <= r["AP"] <= 1 for r in rounds)
    quality = metrics["label_quality"]  # the teacher's predictions of its own training set
    assert (quality["protocol"], quality["out_of_sample"], quality["images"]) == ("in-sample", False, 96)
    page = (report / "html" / "report.html").read_text()
    for heading in ("Pipeline run", "Missing-label robustness", "Balance", "Active learning", "Label quality"):
        assert f"<h2>{heading}</h2>" in page, heading
    assert page.count('src="data:image/png;base64,') == 4  # curves, robustness, two balance figures
    client = MlflowClient(tracking_uri=kfp_run["uri"])
    teacher = client.get_model_version_by_alias("detcurate-smoke-teacher", "teacher")
    assert teacher.tags["detcurate.profile"] == "smoke"
    # both students are versions of one registered model; champion went to the first, then only if better
    promotion = json.loads((kfp_run["root"] / "promotion" / "promotion.json").read_text())
    first, second = promotion["decisions"]
    assert (first["model"], first["promoted"], first["champion_version"]) == ("student", True, None)
    assert second["model"] == "student_curated" and second["champion_version"] == first["candidate_version"]
    assert second["promoted"] == (second["candidate_value"] > first["candidate_value"])
    champion = client.get_model_version_by_alias("detcurate-smoke-student", "champion")
    assert str(champion.version) == (second if second["promoted"] else first)["candidate_version"]
    assert promotion["champion"]["uri"] == "models:/detcurate-smoke-student@champion"
    for decision in (first, second):
        tags = client.get_model_version("detcurate-smoke-student", decision["candidate_version"]).tags
        assert tags["detcurate.model"] == decision["model"]
        assert tags["promotion.decision"] == ("promoted" if decision["promoted"] else "kept")
        assert float(tags["promotion.candidate_value"]) == decision["candidate_value"]
    assert "champion: models:/detcurate-smoke-student@champion" in kfp_run["stdout"]
    assert "MLflow UI: " in kfp_run["stdout"] and "report.html" in kfp_run["stdout"]
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.`detcurate.pipeline_status` = 'SUCCEEDED'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the exit handler's record
    training = client.search_runs([runs[0].info.experiment_id], filter_string="attributes.run_name = 'detcurate-smoke-teacher'")
    assert training[0].data.tags["detcurate.pipeline_run"] == runs[0].data.tags["detcurate.pipeline_run"]
    for name in ("balance", "robustness", "active_learning", "report"):  # each step's MLflow run
        found = client.search_runs([runs[0].info.experiment_id],
                                   filter_string=f"attributes.run_name = 'detcurate-smoke-{name}'")
        assert len(found) == 1 and found[0].info.status == "FINISHED", name


@pytest.mark.slow
def test_airflow_and_kfp_give_the_same_metrics(kfp_run: dict, airflow_run: dict) -> None:
    assert json.loads(airflow_run["metrics"].read_text()) == json.loads(kfp_run["metrics"].read_text())
    assert airflow_run["metrics"].read_bytes() == kfp_run["metrics"].read_bytes()
    assert (airflow_run["root"] / "report" / "html" / "report.html").is_file()
    promotion = json.loads((airflow_run["root"] / "promotion" / "promotion.json").read_text())
    assert [d["model"] for d in promotion["decisions"]] == ["student", "student_curated"]
    assert airflow_run["seconds"] < SMOKE_LIMIT_S, airflow_run["seconds"]
