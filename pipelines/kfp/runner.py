"""Compile the Kubeflow graph, run it here with ``kfp.local``, or submit it to a Kubeflow host."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from curation_core.errors import ConfigError, DetCurateError
from curation_core.io import atomic_write

#: Seconds to wait for a Kubeflow host's health endpoint.
HEALTH_TIMEOUT_S = 10.0
HEALTH_PATH = "/apis/v2beta1/healthz"


def compile_pipeline(out: str | os.PathLike[str], params: dict[str, Any], options: Any = None) -> Path:
    """Write the pipeline's IR YAML (the package ``kfp.Client`` submits) to ``out``, atomically."""
    from kfp import compiler

    from pipelines.kfp.graph import build_pipeline

    target = Path(out)
    tmp = target.with_name(f".{target.name}.compiling.yaml")
    try:
        compiler.Compiler().compile(build_pipeline(params, options), package_path=str(tmp))
        with atomic_write(target) as handle:
            handle.write(tmp.read_text(encoding="utf-8"))
    finally:
        tmp.unlink(missing_ok=True)
    return target


def run_local(params: dict[str, Any], workdir: str | os.PathLike[str], *, data_rev: str | None = None,
              track: bool = True, pipeline_run: str = "") -> Path:
    """Run the whole graph in this environment (``kfp.local.SubprocessRunner(use_venv=False)``).

    Artifacts go under ``workdir/kfp_root``; the report is also copied to ``workdir/report``. Returns
    the path of the run's ``metrics.json``. A failed task raises ``DetCurateError`` naming it (its log
    was streamed above).
    """
    from kfp import local

    from pipelines.kfp.graph import KfpOptions, build_pipeline

    root = Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root / "kfp_root"), raise_on_error=True)
    pipeline = build_pipeline(params, KfpOptions(gpus=0))
    try:
        pipeline(data_rev=data_rev or "", track=track, pipeline_run=pipeline_run, publish_dir=str(root))
    except RuntimeError as exc:
        raise DetCurateError(f"kfp-local: {str(exc).splitlines()[0]} (the task's log is above)") from None
    return root / "report" / "metrics.json"


def check_host(host: str, *, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """Raise ``ConfigError`` naming ``host`` when its Kubeflow Pipelines API does not answer."""
    if not host.startswith(("http://", "https://")):
        raise ConfigError(f"--host: expects an http:// or https:// URL of the Kubeflow Pipelines API; got {host!r}")
    url = host.rstrip("/") + HEALTH_PATH
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - a user-given http(s) URL
            response.read(256)
    except urllib.error.HTTPError as exc:
        raise ConfigError(f"Kubeflow Pipelines at {host} answered {exc.code} {exc.reason} for {HEALTH_PATH}; "
                          f"is it the API endpoint (ml-pipeline service)?") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ConfigError(f"Kubeflow Pipelines at {host} is unreachable ({getattr(exc, 'reason', exc)})") from None


def submit(host: str, package: str | os.PathLike[str], *, arguments: dict[str, Any], run_name: str,
           experiment: str = "detcurate", namespace: str | None = None) -> dict[str, str]:
    """Submit a compiled package to the Kubeflow host ``host`` as a run; return its ``run_id`` and ``url``."""
    check_host(host)
    import kfp

    client = kfp.Client(host=host, namespace=namespace)
    try:
        result = client.create_run_from_pipeline_package(str(package), arguments=arguments, run_name=run_name,
                                                         experiment_name=experiment, namespace=namespace)
    except Exception as exc:  # noqa: BLE001 - kfp_server_api / urllib3 raise many types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DetCurateError(f"Kubeflow Pipelines at {host} refused the run: {first}") from None
    return {"run_id": result.run_id, "url": f"{host.rstrip('/')}/#/runs/details/{result.run_id}"}
