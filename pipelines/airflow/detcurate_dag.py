"""The pipeline as Airflow DAGs (Airflow 3, TaskFlow API of ``airflow.sdk``).

Two DAGs:

- ``detcurate_data`` (daily): prepares the data set (``pipelines.steps.data_step``) into a folder named
  after its DVC hash and, when that version is new, emits the Asset ``DATA_ASSET`` with its path and
  version. An unchanged version is skipped, so no event is emitted.
- ``detcurate_pipeline`` (weekly, and whenever ``DATA_ASSET`` gets an event): data -> teacher -> balance
  -> plain and curated student (and, beside them, the robustness grid and active learning on the data,
  label quality on the teacher) -> evaluation and registration of each -> report -> promotion of the
  better student to ``champion`` -> run status in MLflow. The DAG
  param ``mode`` chooses where the steps run: ``local`` (in the worker's process, the same
  ``pipelines.steps`` functions as every other runner), ``kubernetes`` (each step a
  KubernetesPodOperator running ``detcurate pipeline step`` in ``image``, on the volume ``pvc``) or
  ``kfp`` (the compiled Kubeflow pipeline submitted to ``kfp_host``).

Parsing this file imports Airflow and ``pipelines.profiles`` only: torch, MLflow, kfp and the
Kubernetes provider are imported inside the tasks (``tests/test_airflow_dag.py`` checks it and the
parse time). Tasks are idempotent: a step whose output is finished with the same parameters is reused
(``components.staging``), so retries and re-runs never train twice; training tasks (the models, the
robustness grid, active learning) retry twice.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, Metadata, Param, dag, get_current_context, task
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable

from pipelines.profiles import MODELS, PROFILES

#: Emitted by ``detcurate_data`` when a new data version lands; triggers ``detcurate_pipeline``.
DATA_ASSET = Asset(name="detcurate_data", uri="file:///detcurate/data")
MODES = ("local", "kubernetes", "kfp")
TRAIN_RETRIES = {"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True}
# No start_date: with one, unpausing a DAG would run its most recent past interval at once (with the
# default params); without, the first scheduled run is the next one in the future.

PARAMS = {
    "profile": Param("demo", enum=list(PROFILES), description="smoke, demo or full"),
    "seed": Param(0, type="integer", minimum=0, description="seed of the data and of every model"),
    "overrides": Param([], type="array", description="key=value changes to the profile (teacher.schedule.max_iter=10)"),
    "data_rev": Param("", type="string", description="git revision of the data (empty: synthesise it)"),
    "mode": Param("local", enum=list(MODES), description="local, kubernetes or kfp"),
    "workdir": Param("", type="string", description="folder of the run's outputs (empty: outputs/airflow/<run id>)"),
    "track": Param(True, type="boolean", description="log to MLflow and register the models"),
    "image": Param("detcurate:latest", type="string", description="kubernetes/kfp: image of the steps"),
    "namespace": Param("default", type="string", description="kubernetes: namespace of the step pods"),
    "pvc": Param("detcurate-work", type="string", description="kubernetes: PVC holding the run's folders"),
    "kfp_host": Param("", type="string", description="kfp: URL of the Kubeflow Pipelines API"),
}


def _run_config() -> dict[str, Any]:
    """The run's parameters: the DAG params, with an asset event's ``profile``/``data_rev`` on top."""
    context = get_current_context()
    conf = dict(context["params"])
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            conf.update({k: v for k, v in (event.extra or {}).items() if k in ("profile", "data_rev", "seed")})
    run_id = context["dag_run"].run_id
    conf["pipeline_run"] = f"airflow-{run_id}"
    if not conf.get("workdir"):
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
        conf["workdir"] = f"outputs/airflow/{safe}"
    return conf


def _params(conf: dict[str, Any]) -> dict[str, Any]:
    from pipelines.profiles import check, pipeline_params

    params = pipeline_params(conf["profile"], seed=int(conf["seed"]), overrides=conf.get("overrides") or ())
    check(params)
    return params


def _step(name: str) -> Any:
    """Step ``name`` of ``pipelines.steps.GRAPH``, run by the DAG's ``mode``."""
    conf = _run_config()
    params = _params(conf)
    if conf["mode"] == "kubernetes":
        return _in_pod(name, conf, params)
    from pipelines.steps import run_step

    result = run_step(name, params, conf["workdir"], data_rev=conf["data_rev"] or None, track=conf["track"],
                      pipeline_run=conf["pipeline_run"])
    return {"step": name, "workdir": conf["workdir"], "summary": str(result)[:500]}


def _in_pod(name: str, conf: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Run one step in a pod of the project's image (the Kubernetes provider is imported only here)."""
    import json

    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    from pipelines.steps import TRAINING_STEPS

    command = ["detcurate", "pipeline", "step", name, "--params-json", json.dumps(params), "--workdir",
               f"/work/{conf['pipeline_run']}", "--pipeline-run", conf["pipeline_run"]]
    if conf["data_rev"]:
        command += ["--data-rev", conf["data_rev"]]
    if not conf["track"]:
        command.append("--no-track")
    training = name in TRAINING_STEPS
    resources = k8s.V1ResourceRequirements(
        requests={"cpu": "4" if training else "1", "memory": "16Gi" if training else "4Gi"},
        limits={"nvidia.com/gpu": "1"} if training else None)
    pod = KubernetesPodOperator(
        task_id=f"{name}_pod", name=f"detcurate-{name.replace('_', '-')}", namespace=conf["namespace"],
        image=conf["image"], cmds=command[:1], arguments=command[1:], container_resources=resources,
        volumes=[k8s.V1Volume(name="work", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
            claim_name=conf["pvc"]))],
        volume_mounts=[k8s.V1VolumeMount(name="work", mount_path="/work")],
        tolerations=[k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")] if training else None,
        get_logs=True, on_finish_action="delete_pod")
    pod.execute(context=get_current_context())
    return {"step": name, "workdir": f"/work/{conf['pipeline_run']}", "summary": "pod finished"}


@dag(dag_id="detcurate_data", schedule=CronTriggerTimetable("0 2 * * *", timezone="UTC"), catchup=False, max_active_runs=1,
     params={k: PARAMS[k] for k in ("profile", "seed", "data_rev")}, tags=["detcurate"],
     doc_md="Prepare the data set; emit the `detcurate_data` asset when a new version lands.")
def detcurate_data() -> None:
    @task(outlets=[DATA_ASSET])
    def ingest() -> Any:
        """Prepare the data into outputs/data/<version>; a known version is skipped (no asset event)."""
        import shutil
        from pathlib import Path

        from airflow.sdk.exceptions import AirflowSkipException

        from pipelines.steps import data_step
        from pipelines.tracking import dataset_version

        conf = dict(get_current_context()["params"])
        params = _params({**conf, "overrides": []})
        staging = Path("outputs/data/.incoming")
        data_step(params, staging, data_rev=conf["data_rev"] or None)
        version = dataset_version(staging / "train").removesuffix(".dir")
        final = Path("outputs/data") / version
        if final.exists():
            shutil.rmtree(staging)
            raise AirflowSkipException(f"data version {version} is already there ({final})")
        staging.rename(final)
        yield Metadata(DATA_ASSET, extra={"path": str(final.resolve()), "version": version,
                                          "profile": conf["profile"], "data_rev": conf["data_rev"],
                                          "seed": conf["seed"]})

    ingest()


@dag(dag_id="detcurate_pipeline", catchup=False, max_active_runs=1, params=PARAMS,
     schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 3 * * 1", timezone="UTC"), assets=DATA_ASSET),
     tags=["detcurate"], doc_md=__doc__)
def detcurate_pipeline() -> None:
    @task.branch
    def choose_mode() -> str:
        """Check every parameter before any step runs, then pick the branch of ``mode``."""
        conf = _run_config()
        params = _params(conf)
        if conf["track"]:
            from pipelines.tracking import check_tracking_server, tracking_uri

            check_tracking_server(tracking_uri())
        del params
        return "submit_kfp" if conf["mode"] == "kfp" else "data"

    @task
    def submit_kfp() -> dict[str, str]:
        """Compile the Kubeflow pipeline for this run's parameters and submit it to ``kfp_host``."""
        import tempfile
        from pathlib import Path

        from pipelines.kfp.graph import KfpOptions
        from pipelines.kfp.runner import compile_pipeline, submit

        conf = _run_config()
        with tempfile.TemporaryDirectory() as tmp:
            package = compile_pipeline(Path(tmp) / "pipeline.yaml", _params(conf), KfpOptions(image=conf["image"]))
            return submit(conf["kfp_host"], package, run_name=conf["pipeline_run"],
                          arguments={"data_rev": conf["data_rev"], "track": conf["track"],
                                     "pipeline_run": conf["pipeline_run"]})

    @task
    def data() -> Any:
        return _step("data")

    @task(**TRAIN_RETRIES)
    def train_teacher() -> Any:
        return _step("train_teacher")

    @task(**TRAIN_RETRIES)
    def train_student() -> Any:
        return _step("train_student")

    @task(**TRAIN_RETRIES)
    def train_student_curated() -> Any:
        return _step("train_student_curated")

    @task
    def balance() -> Any:
        return _step("balance")

    @task(**TRAIN_RETRIES)
    def robustness() -> Any:
        return _step("robustness")

    @task(**TRAIN_RETRIES)
    def active_learning() -> Any:
        return _step("active_learning")

    @task
    def label_quality() -> Any:
        return _step("label_quality")

    @task(retries=1)
    def evaluate(model: str) -> Any:
        return _step(f"evaluate_{model}")

    @task
    def report() -> Any:
        return _step("report")

    @task
    def promote() -> Any:
        return _step("promote")

    @task(trigger_rule="none_failed_min_one_success")
    def record_success() -> None:
        conf = _run_config()
        from pipelines.steps import record_status, run_tags

        record_status(conf["pipeline_run"], "SUCCEEDED", track=conf["track"],
                      tags=run_tags({"profile": conf["profile"], "seed": conf["seed"]}, data_rev=conf["data_rev"]))

    @task(trigger_rule="one_failed")
    def record_failure() -> None:
        conf = _run_config()
        from pipelines.steps import record_status, run_tags

        record_status(conf["pipeline_run"], "FAILED", track=conf["track"], message="a task of the DAG run failed",
                      tags=run_tags({"profile": conf["profile"], "seed": conf["seed"]}, data_rev=conf["data_rev"]))

    branch, kfp_run, data_task = choose_mode(), submit_kfp(), data()
    branch >> [kfp_run, data_task]
    teacher, balanced, grid = train_teacher(), balance(), robustness()
    rounds, quality = active_learning(), label_quality()
    student, curated = train_student(), train_student_curated()
    data_task >> [teacher, grid, rounds]
    teacher >> balanced >> [student, curated]
    teacher >> quality
    evals = {m: evaluate.override(task_id=f"evaluate_{m}")(m) for m in MODELS}
    teacher >> evals["teacher"]
    student >> evals["student"]
    curated >> evals["student_curated"]
    final, promoted = report(), promote()
    [*evals.values(), grid, rounds, quality] >> final
    final >> promoted
    ends = [promoted, kfp_run]
    ends >> record_success()
    steps = [data_task, teacher, balanced, grid, rounds, quality, student, curated, *evals.values(), final, promoted]
    [branch, *steps, kfp_run] >> record_failure()


detcurate_data()
detcurate_pipeline()
