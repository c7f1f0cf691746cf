"""Run ``detcurate_pipeline`` once with ``dag.test()``: ``python -m pipelines.airflow.local_run CONF.json HOME``.

Airflow reads its configuration when it is first imported, so ``run_dag_test`` starts this module in a
fresh process with ``AIRFLOW_HOME`` (a SQLite metadata database in it), the DAG folder and
``LOAD_EXAMPLES=False`` set. Airflow 3.1+ refuses ``dag.test()`` for a DAG that is not in the database
("the dag is not serialized"), so the DAG folder is parsed and written to the database first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from curation_core.errors import DetCurateError

DAG_FOLDER = Path(__file__).resolve().parent
DAG_ID = "detcurate_pipeline"
BUNDLE = "dags-folder"


def airflow_env(home: str | os.PathLike[str], *, sql_conn: str | None = None) -> dict[str, str]:
    """Environment of an Airflow of this project: its home, metadata database, DAG folder, no examples."""
    home = Path(home).resolve()
    return {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FOLDER),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_conn or f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs")}


def run_dag_test(conf: dict[str, Any], home: str | os.PathLike[str], *, timeout: float = 1800) -> dict[str, Any]:
    """Migrate a metadata database in ``home`` (once), then ``dag.test(run_conf=conf)`` in a subprocess.

    Returns ``{"state": ..., "tasks": {task_id: state}}``; a run that did not succeed raises
    ``DetCurateError`` with the failed tasks.
    """
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    env = airflow_env(home)
    airflow = str(Path(sys.executable).with_name("airflow"))
    if not (home / "airflow.db").is_file():
        done = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise DetCurateError(f"airflow db migrate in {home} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    conf_path, result_path = home / "conf.json", home / "result.json"
    conf_path.write_text(json.dumps(conf), encoding="utf-8")
    result_path.unlink(missing_ok=True)
    subprocess.run([sys.executable, "-m", "pipelines.airflow.local_run", str(conf_path), str(result_path)],
                   env=env, timeout=timeout, check=False)
    if not result_path.is_file():
        raise DetCurateError(f"airflow: dag.test() of {DAG_ID} ended without a result (see the log above)")
    result = json.loads(result_path.read_text(encoding="utf-8"))
    if result["state"] != "success":
        failed = sorted(t for t, s in result["tasks"].items() if s not in ("success", "skipped"))
        raise DetCurateError(f"airflow: DAG run of {DAG_ID} ended {result['state']}; tasks not done: {', '.join(failed)}")
    return result


def _main(conf_path: str, result_path: str) -> None:
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.dagbundle import DagBundleModel
    from airflow.utils.session import create_session

    conf = json.loads(Path(conf_path).read_text(encoding="utf-8"))
    bag = DagBag(dag_folder=str(DAG_FOLDER), bundle_path=DAG_FOLDER, bundle_name=BUNDLE)
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    with create_session() as session:
        if session.get(DagBundleModel, BUNDLE) is None:
            session.add(DagBundleModel(name=BUNDLE))
    sync_bag_to_db(bag, BUNDLE, None)
    start = time.monotonic()
    run = bag.get_dag(DAG_ID).test(run_conf=conf)
    tasks = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    Path(result_path).write_text(json.dumps({"state": str(run.state), "tasks": tasks,
                                             "seconds": round(time.monotonic() - start, 1)}), encoding="utf-8")


if __name__ == "__main__":
    _main(*sys.argv[1:3])
