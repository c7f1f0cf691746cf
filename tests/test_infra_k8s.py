"""Cluster manifests (infra/k8s) and Helm values (infra/helm) validated offline.

Core kinds go through ``kubernetes-validate`` in strict mode (unknown fields are errors) against the
Kubernetes OpenAPI schemas it bundles (1.25 to 1.37; no network). The PyTorchJob is a custom resource:
its own fields are checked against the API types of the Kubeflow training operator (the
``kubeflow-training`` SDK's generated models: field names and types of ``kubeflow.org/v1``), and each
replica's pod template against the Kubernetes ``PodTemplate`` schema. Airflow's Helm values are not a
manifest: the Kubernetes objects they embed (volumes, mounts, resources, security context) are
validated as a pod template, and the keys used are checked against what the chart reads.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "infra" / "k8s"
HELM_VALUES = ROOT / "infra" / "helm" / "airflow-values.yaml"
#: The oldest and the newest Kubernetes minor version the manifests are checked against.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def _all_resources() -> list[tuple[str, dict]]:
    return [(f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
            for path in sorted(K8S.glob("*.yaml")) for doc in _documents(path)]


def _validate_core(resource: dict, version: str) -> None:
    kubernetes_validate.validate(resource, version, strict=True)


def _pod_template(template: dict) -> dict:
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template}


def _check_sdk_model(data: dict, klass: type, where: str) -> None:
    """``data`` (camelCase keys) fits the generated SDK model ``klass``: no unknown field, right types.

    Nested models are checked recursively; Kubernetes core types (``V1...``) are left to
    ``kubernetes-validate`` and skipped here.
    """
    import kubeflow.training.models as models

    by_json = {json_key: attr for attr, json_key in klass.attribute_map.items()}
    unknown = sorted(set(data) - set(by_json))
    assert not unknown, f"{where}: unknown field(s) {unknown} for {klass.__name__}; valid: {sorted(by_json)}"
    for key, value in data.items():
        kind = klass.openapi_types[by_json[key]]
        _check_value(value, kind, f"{where}.{key}", models)
    klass(**{by_json[k]: v for k, v in data.items()})  # the model's own checks: required fields, enums


def _check_value(value, kind: str, where: str, models) -> None:  # noqa: ANN001
    scalar = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}
    if kind in scalar:
        assert isinstance(value, scalar[kind]) and not (kind == "int" and isinstance(value, bool)), \
            f"{where}: expected {kind}; got {value!r}"
    elif match := re.fullmatch(r"dict\(str, (.+)\)", kind):
        assert isinstance(value, dict), f"{where}: expected a mapping"
        for key, item in value.items():
            _check_value(item, match.group(1), f"{where}.{key}", models)
    elif match := re.fullmatch(r"list\[(.+)\]", kind):
        assert isinstance(value, list), f"{where}: expected a list"
        for i, item in enumerate(value):
            _check_value(item, match.group(1), f"{where}[{i}]", models)
    elif kind.startswith("V1"):
        return  # a Kubernetes core type: validated against the Kubernetes schema
    else:
        assert isinstance(value, dict), f"{where}: expected an object of type {kind}"
        _check_sdk_model(value, getattr(models, kind), where)


def test_schemas_are_bundled_and_offline():
    """The schemas are files inside the package (validation opens no connection)."""
    from kubernetes_validate import utils

    versions = utils.all_versions()
    assert "1.29.0" in versions and kubernetes_validate.latest_version() == "1.37.0"
    schema_dir = Path(utils.__file__).parent / "kubernetes-json-schema"
    assert (schema_dir / "v1.37.0-local-strict" / "deployment-apps-v1.json").is_file()


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_manifests_validate_strictly(version):
    resources = [(name, doc) for name, doc in _all_resources() if doc["apiVersion"] != "kubeflow.org/v1"]
    kinds = {doc["kind"] for _, doc in resources}
    assert {"Namespace", "PersistentVolumeClaim", "StatefulSet", "Deployment", "Service"} <= kinds
    for name, doc in resources:
        try:
            _validate_core(doc, version)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} (Kubernetes {version}): {exc.message}")


def test_a_wrong_manifest_is_caught():
    """The validator does reject what a cluster would: an unknown field, a wrong type."""
    deployment = next(doc for _, doc in _all_resources() if doc["kind"] == "Deployment")
    bad_field = yaml.safe_load(yaml.safe_dump(deployment))
    bad_field["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError, match="imagePullPolcy"):
        _validate_core(bad_field, K8S_VERSIONS[-1])
    bad_type = yaml.safe_load(yaml.safe_dump(deployment))
    bad_type["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError, match="one"):
        _validate_core(bad_type, K8S_VERSIONS[-1])


def _pytorchjob() -> dict:
    jobs = [doc for _, doc in _all_resources() if doc["kind"] == "PyTorchJob"]
    assert len(jobs) == 1
    return jobs[0]


def test_pytorchjob_fits_the_training_operator_api():
    from kubeflow.training.models import KubeflowOrgV1PyTorchJobSpec

    job = _pytorchjob()
    assert job["apiVersion"] == "kubeflow.org/v1"
    _check_sdk_model(job["spec"], KubeflowOrgV1PyTorchJobSpec, "spec")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) <= {"Master", "Worker"} and "Master" in replicas
    for role, spec in replicas.items():
        for version in K8S_VERSIONS:
            try:
                _validate_core(_pod_template(spec["template"]), version)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"PyTorchJob {role} pod template (Kubernetes {version}): {exc.message}")
        container = spec["template"]["spec"]["containers"][0]
        assert container["name"] == "pytorch", "the training operator finds the container by this name"


def test_pytorchjob_runs_detcurate_train_under_torchrun_on_several_gpus():
    from pipelines.cli import cli

    job = _pytorchjob()
    replicas = job["spec"]["pytorchReplicaSpecs"]
    nodes = sum(spec["replicas"] for spec in replicas.values())
    per_node = int(job["spec"]["nprocPerNode"])
    container = replicas["Master"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == per_node
    assert nodes * per_node >= 2
    assert container["command"] == ["torchrun"] and container["args"][:3] == ["--no-python", "detcurate", "train"]
    # The arguments after `detcurate` parse as the real command line, with a config file in the image.
    args = container["args"][2:]
    assert args[0] == "train"
    train = cli.get_command(None, "train")
    sub = train.make_context("train", list(args[1:]))
    config = Path(sub.params["config_path"])
    assert config.parts[:3] == ("/", "opt", "detcurate") and (ROOT / "configs" / config.name).is_file()
    from curation_core.engine.config import load_config

    resolved = load_config(ROOT / "configs" / config.name, [o for o in sub.params["overrides"]])
    assert resolved.train.device == "cuda" and resolved.curation.method == "detgain"
    assert resolved.curation.teacher.startswith("models:/")


def test_pytorchjob_with_an_unknown_field_is_caught():
    from kubeflow.training.models import KubeflowOrgV1PyTorchJobSpec

    spec = yaml.safe_load(yaml.safe_dump(_pytorchjob()["spec"]))
    spec["pytorchReplicaSpecs"]["Worker"]["replica"] = 2
    with pytest.raises(AssertionError, match="unknown field.*replica"):
        _check_sdk_model(spec, KubeflowOrgV1PyTorchJobSpec, "spec")
    spec = yaml.safe_load(yaml.safe_dump(_pytorchjob()["spec"]))
    spec["pytorchReplicaSpecs"]["Worker"]["replicas"] = "2"
    with pytest.raises(AssertionError, match="expected int"):
        _check_sdk_model(spec, KubeflowOrgV1PyTorchJobSpec, "spec")


def test_manifests_reference_each_other_consistently():
    resources = {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in _all_resources()}
    namespaces = {name for kind, name in resources if kind == "Namespace"}
    for (kind, name), doc in resources.items():
        if kind != "Namespace":
            assert doc["metadata"].get("namespace") in namespaces, f"{kind}/{name}: namespace"
    claims = {name for kind, name in resources if kind == "PersistentVolumeClaim"}
    services = {name for kind, name in resources if kind == "Service"}
    text = "\n".join(path.read_text() for path in K8S.glob("*.yaml")) + HELM_VALUES.read_text()
    for claim in re.findall(r"claimName: (\S+?)[,}\s]", text):
        assert claim in claims, f"claim {claim} is not defined in infra/k8s"
    for host in re.findall(r"//([a-z0-9-]+)(?:\.detcurate[.a-z]*)?:\d+", text):
        assert host in services, f"service {host} is not defined in infra/k8s"
    for (kind, name), doc in resources.items():
        if kind == "Service" and "selector" in doc["spec"]:
            selected = [d for (k, _), d in resources.items() if k in ("Deployment", "StatefulSet")
                        and doc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
            assert selected, f"Service/{name} selects no pods"


def test_mlflow_server_uses_postgresql_and_an_artifact_volume():
    deployment = next(doc for _, doc in _all_resources() if doc["kind"] == "Deployment"
                      and doc["metadata"]["name"] == "mlflow")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert any(a.startswith("--backend-store-uri=postgresql://") for a in args)
    assert "--artifacts-destination=/mlartifacts" in args


def test_airflow_helm_values():
    values = yaml.safe_load(HELM_VALUES.read_text(encoding="utf-8"))
    assert values["executor"] == "KubernetesExecutor" and values["airflowVersion"].startswith("3.")
    # Keys of the chart's values.yaml that these values set (chart 1.18); a misspelt key is ignored by helm.
    known = {"airflowVersion", "defaultAirflowRepository", "defaultAirflowTag", "executor", "env", "config",
             "dags", "volumes", "volumeMounts", "workers", "scheduler", "postgresql", "logs"}
    assert set(values) <= known, sorted(set(values) - known)
    template = {"spec": {"securityContext": values["workers"]["securityContexts"]["pod"],
                         "volumes": values["volumes"],
                         "containers": [{"name": "base", "image": "airflow", "env": values["env"],
                                         "resources": values["workers"]["resources"],
                                         "volumeMounts": values["volumeMounts"]}]}}
    for version in K8S_VERSIONS:
        _validate_core(_pod_template(template), version)
