"""The Kubeflow form: the compiled package (tasks, edges, resources, platform settings) and submission
to a Kubeflow host, checked at the HTTP boundary with a local stub server."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("kfp")
import yaml  # noqa: E402

DETCURATE = [sys.executable, "-c", "from pipelines.cli import main; main()"]
TRAINING = {"train", "train-student", "train-curated", "robustness", "active-learning"}
CACHED = {"data", "label-quality", "report"}


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kfp") / "pipeline.yaml"
    done = subprocess.run([*DETCURATE, "pipeline", "compile", "--out", str(out), "--profile", "smoke", "--image",
                           "registry.example/detcurate:1.2", "--node-selector", "pool=gpu", "--pvc", "detcurate-work"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


def test_compiled_graph_has_the_tasks_edges_and_resources(package: Path) -> None:
    from kfp import components

    spec = components.load_component_from_file(str(package)).pipeline_spec
    root = spec.root.dag.tasks["exit-handler-1"]
    assert set(spec.root.dag.tasks) == {"exit-handler-1", "record-status"}
    assert spec.root.dag.tasks["record-status"].trigger_policy.strategy == 2  # ALL_UPSTREAM_TASKS_COMPLETED: exit handler
    inner = spec.components[root.component_ref.name].dag.tasks
    assert set(inner) == {"data", "train", "balance", "train-student", "train-curated", "robustness", "evaluate",
                          "evaluate-2", "evaluate-3", "report", "promote", "active-learning", "label-quality"}
    edges = {name: set(task.dependent_tasks) for name, task in inner.items()}
    assert edges["data"] == set() and edges["train"] == edges["robustness"] == edges["active-learning"] == {"data"}
    assert edges["label-quality"] == {"data", "train"}  # the teacher's predictions of the training set
    assert edges["balance"] == {"data", "train"}  # the teacher's features
    assert edges["train-student"] == {"data", "balance"}  # the manifest
    assert edges["train-curated"] == {"data", "train", "balance"}  # the teacher's model and the manifest
    assert edges["evaluate-3"] == {"data", "train-curated"}
    assert edges["report"] == {"data", "balance", "robustness", "active-learning", "label-quality", "evaluate",
                               "evaluate-2", "evaluate-3", "train", "train-student", "train-curated"}
    assert edges["promote"] == {"data", "evaluate-2", "evaluate-3", "report"}  # the last step
    names = {name: task.inputs.parameters["model_name"].runtime_value.constant.string_value
             for name, task in inner.items() if name.startswith(("train", "evaluate"))}
    assert names["train"] == "teacher" and names["train-student"] == "student"
    assert names["train-curated"] == "student_curated"
    for name, task in inner.items():
        assert task.caching_options.enable_cache == (name in CACHED), name
        assert (task.retry_policy.max_retry_count == 2) == (name in TRAINING), name
    executors = spec.deployment_spec["executors"]
    for name, task in inner.items():
        container = executors[task.component_ref.name.replace("comp-", "exec-")]["container"]
        assert container["image"] == "registry.example/detcurate:1.2"
        resources = json.loads(json.dumps(dict(container["resources"]), default=dict))
        if name in TRAINING:
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert resources["accelerator"]["resourceCount"] == "1"
            assert resources["resourceCpuRequest"] == "4" and resources["resourceMemoryRequest"] == "16G"
        else:
            assert "accelerator" not in resources and resources["resourceCpuRequest"] == "1"
    defaults = spec.root.input_definitions.parameters
    teacher = json.loads(defaults["teacher_config"].default_value.string_value)
    assert teacher["model"]["backbone"] == "tiny" and teacher["schedule"]["max_iter"] == 6
    grid = json.loads(defaults["robustness_params"].default_value.string_value)
    assert grid["modes"] == ["normal", "hard"] and grid["losses"] == ["focal", "brl"] and grid["seeds"] == [0]
    assert json.loads(defaults["promotion_params"].default_value.string_value)["metric"] == "eval/AP"
    rounds = json.loads(defaults["active_learning_params"].default_value.string_value)
    assert (rounds["level"], rounds["rounds"], rounds["initial_iters"], rounds["seed"]) == ("box", 2, 4, 0)
    assert json.loads(defaults["label_quality_params"].default_value.string_value) == {"threshold": 0.5, "top": 10}
    outputs = {name: set(spec.components[task.component_ref.name].output_definitions.artifacts)
               for name, task in inner.items()}
    assert outputs["active-learning"] == {"rounds", "markdown", "metrics"}
    assert outputs["label-quality"] == {"report_dir", "markdown", "metrics"}
    types = {name: spec.components[inner["label-quality"].component_ref.name].output_definitions.artifacts[name]
             .artifact_type.schema_title for name in outputs["label-quality"]}
    assert types == {"report_dir": "system.Artifact", "markdown": "system.Markdown", "metrics": "system.Metrics"}


def test_platform_spec_has_node_selectors_tolerations_and_the_volume(package: Path) -> None:
    documents = list(yaml.safe_load_all(package.read_text()))
    platform = documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    train = platform["exec-train"]
    assert train["nodeSelector"]["labels"] == {"pool": "gpu"}
    assert train["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert all(ex["pvcMount"][0]["mountPath"] == "/detcurate" for ex in platform.values())
    assert "nodeSelector" not in platform["exec-evaluate"]
    assert platform["exec-robustness"]["nodeSelector"]["labels"] == {"pool": "gpu"}  # the grid trains
    assert platform["exec-active-learning"]["nodeSelector"]["labels"] == {"pool": "gpu"}  # the rounds train
    assert "nodeSelector" not in platform["exec-label-quality"]


def _scratch_arguments(package: Path) -> dict[str, dict[str, str]]:
    """Each task's scratch arguments (``scratch_root``, ``run_id``, ``step``) as compiled constants."""
    document = yaml.safe_load(package.read_text().split("\n---\n")[0])
    tasks = document["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    return {name: {key: value["runtimeValue"]["constant"] for key, value in task["inputs"].get("parameters", {}).items()
                   if key in ("scratch_root", "run_id", "step")} for name, task in tasks.items()}


def test_training_tasks_keep_their_work_on_the_pvc_keyed_by_run_and_step(package: Path, tmp_path: Path) -> None:
    from kfp import dsl

    from pipelines.kfp.graph import KfpOptions
    from pipelines.kfp.runner import compile_pipeline
    from pipelines.profiles import pipeline_params
    from pipelines.steps import TRAINING_STEPS

    with_pvc = {name: arguments for name, arguments in _scratch_arguments(package).items() if arguments}
    assert set(with_pvc) == TRAINING
    assert {arguments.pop("step") for arguments in with_pvc.values()} == set(TRAINING_STEPS)  # one folder per task
    assert dsl.PIPELINE_JOB_ID_PLACEHOLDER == "{{$.pipeline_job_uuid}}"  # the whole constant: the driver substitutes it
    assert all(arguments == {"scratch_root": "/detcurate/scratch", "run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER}
               for arguments in with_pvc.values())
    without = compile_pipeline(tmp_path / "plain.yaml", pipeline_params("smoke"), KfpOptions())
    assert all(arguments == {} for arguments in _scratch_arguments(without).values())
    assert dsl.PIPELINE_JOB_ID_PLACEHOLDER not in without.read_text()


def test_no_module_named_kfp_shadows_the_package() -> None:
    root = Path(__file__).resolve().parents[1]
    assert not list(root.glob("**/kfp.py")) or all(".venv" in str(p) for p in root.glob("**/kfp.py"))
    out = subprocess.run([sys.executable, "-c", "import kfp, pipelines.kfp.graph; print(kfp.__file__)"], cwd=root,
                         capture_output=True, text=True, timeout=120, check=True)
    assert "site-packages" in out.stdout


class _KfpStub(BaseHTTPRequestHandler):
    """Answers the calls kfp.Client makes: health, experiments, runs; records every request."""

    requests: list[tuple[str, str, dict]] = []

    def _reply(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self.requests.append(("GET", self.path, {}))
        if self.path.startswith("/apis/v2beta1/healthz"):
            self._reply({"commit_sha": "stub", "tag_name": "2.5.0", "multi_user": False})
        elif self.path.startswith("/apis/v2beta1/experiments"):
            self._reply({})  # no experiment of that name yet
        else:
            self._reply({})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        self.requests.append(("POST", self.path, body))
        if self.path.startswith("/apis/v2beta1/experiments"):
            self._reply({"experiment_id": "exp-1", "display_name": body.get("display_name")})
        elif self.path.startswith("/apis/v2beta1/runs"):
            self._reply({"run_id": "run-42", "display_name": body.get("display_name"), "state": "PENDING"})
        else:
            self._reply({})

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture
def stub():
    _KfpStub.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KfpStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_submit_sends_the_package_as_a_run(stub: str, package: Path) -> None:
    done = subprocess.run([*DETCURATE, "pipeline", "submit", "--host", stub, "--package", str(package), "--data-rev",
                           "v1", "--run-name", "nightly"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"submitted run run-42: {stub}/#/runs/details/run-42" in done.stdout
    runs = [body for method, path, body in _KfpStub.requests if method == "POST" and path.startswith("/apis/v2beta1/runs")]
    assert len(runs) == 1
    run = runs[0]
    assert run["display_name"] == "nightly" and run["experiment_id"] == "exp-1"
    assert run["runtime_config"]["parameters"]["data_rev"] == "v1"
    spec = run["pipeline_spec"].get("pipeline_spec", run["pipeline_spec"])  # with a platform spec: nested
    assert spec["pipelineInfo"]["name"] == "detcurate"
    assert set(spec["root"]["dag"]["tasks"]) == {"exit-handler-1", "record-status"}


def test_an_unreachable_kubeflow_host_is_one_line_naming_the_url(package: Path) -> None:
    done = subprocess.run([*DETCURATE, "pipeline", "submit", "--host", "http://127.0.0.1:9", "--package", str(package)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: Kubeflow Pipelines at http://127.0.0.1:9 is unreachable")
