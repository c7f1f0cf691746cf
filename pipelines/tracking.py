"""Experiment tracking with MLflow.

Every training run logs its resolved config as params, the loss terms and COCO statistics as metrics,
the data set version (DVC's hash of the data directory) as tags, and the checkpoint, the config and an
evaluation report as artifacts. ``detcurate evaluate`` logs the same for an evaluation run.

Where runs go: ``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<project root>/mlflow.db`` with
artifacts in ``<project root>/mlartifacts``; the project root is the nearest directory, from the
working directory upwards, that holds ``pyproject.toml`` or ``dvc.yaml`` (else the working directory).
Runs go to the experiment ``$MLFLOW_EXPERIMENT_NAME`` (default ``detcurate``).

This module and ``pipelines.registry`` (the model registry) are the only ones that import MLflow.
This one imports it only when a function needs it, so that everything else runs without it
(``pip install 'detcurate[tracking]'``), and it never imports the training engine (torch): an Airflow
DAG file may import it while it is parsed. The training hook is ``pipelines.tracking_hook.MLflowHook``;
``pipelines.registry`` imports this module, never the other way round.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from curation_core.errors import ConfigError, DataError
from curation_core.evaluation import COCO_STAT_NAMES, CocoStats

INSTALL_HINT = "pip install 'detcurate[tracking]'"
#: Files that mark the project root, searched from the working directory upwards.
PROJECT_MARKERS = ("pyproject.toml", "dvc.yaml")
DEFAULT_EXPERIMENT = "detcurate"
#: Training metrics are buffered and written in one batch every this many iterations.
DEFAULT_LOG_EVERY = 20
#: Limits of one ``log_batch`` call in MLflow's REST API.
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_HASH_CHUNK = 1 << 20
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")
#: Seconds to wait for a tracking server's health endpoint before calling it unreachable.
HEALTH_TIMEOUT_S = 5.0


def require_mlflow() -> ModuleType:
    """Import and return ``mlflow``, or raise ImportError with the install command."""
    try:
        import mlflow
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(f"experiment tracking needs MLflow: {INSTALL_HINT}") from exc
    return mlflow


def project_root(start: str | os.PathLike[str] | None = None) -> Path:
    """Nearest directory from ``start`` (default: the working directory) upwards holding a project marker.

    Falls back to ``start`` itself when no directory up to the file-system root holds one.
    """
    origin = Path(start if start is not None else os.getcwd()).resolve()
    for folder in (origin, *origin.parents):
        if any((folder / marker).is_file() for marker in PROJECT_MARKERS):
            return folder
    return origin


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set and non-empty, else ``sqlite:///<project root>/mlflow.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri or f"sqlite:///{project_root() / 'mlflow.db'}"


def configure_mlflow() -> str:
    """Point MLflow's global tracking URI at ``tracking_uri()`` (unless it already is) and return it.

    Needed by MLflow's fluent functions (model logging, ``pyfunc.load_model``), which read the global URI.
    """
    mlflow = require_mlflow()
    uri = tracking_uri()
    if mlflow.get_tracking_uri() != uri:
        mlflow.set_tracking_uri(uri)
    return uri


def check_tracking_server(uri: str, *, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """Raise ``ConfigError`` naming ``uri`` when an ``http(s)://`` tracking server does not answer.

    Asks the server's ``/health`` endpoint; a database store (``postgresql://``, ``mysql://``, ...) is
    connected to once; local stores (``sqlite:///``, ``file:``) need no check. Called
    before any training, so an unreachable server fails a run at once, not after hours of work.
    """
    if uri.split(":", 1)[0].split("+", 1)[0] in _DATABASE_SCHEMES:
        _check_database(uri, timeout=timeout)
        return
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:  # noqa: S310
            response.read(64)
    except urllib.error.HTTPError:
        return  # it answers (a proxy in front of it may not serve /health)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(f"MLflow tracking server {uri} is unreachable ({reason}); start it or set "
                          f"MLFLOW_TRACKING_URI") from None


#: Tracking URIs that name a database server directly (SQLAlchemy dialects MLflow supports).
_DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")


def database_url_shown(url: str) -> str:
    """A SQLAlchemy database URL as messages show it: the password hidden."""
    import sqlalchemy

    return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)


def database_error_reason(exc: BaseException) -> str:
    """The first line of a SQLAlchemy error's driver message (at most 200 characters), for one-line errors."""
    return str(getattr(exc, "orig", exc)).strip().splitlines()[0][:200]


def _check_database(uri: str, *, timeout: float) -> None:
    """Raise ``ConfigError`` naming ``uri`` (password hidden) when its database does not accept a connection."""
    import sqlalchemy

    shown = database_url_shown(uri)
    try:
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": max(1, int(timeout))})
        with engine.connect():
            pass
        engine.dispose()
    except ImportError as exc:
        raise ConfigError(f"MLflow tracking database {shown}: its driver is not installed ({exc}); "
                          f"{INSTALL_HINT}") from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise ConfigError(f"MLflow tracking database {shown} is unreachable ({database_error_reason(exc)}); start it or set "
                          f"MLFLOW_TRACKING_URI") from None


def mlflow_client() -> Any:
    """An ``MlflowClient`` for ``tracking_uri()``."""
    return require_mlflow().MlflowClient(tracking_uri=tracking_uri())


def experiment_id(client: Any, name: str | None = None) -> str:
    """Id of experiment ``name`` (default ``$MLFLOW_EXPERIMENT_NAME`` or ``detcurate``), created if absent.

    With a ``sqlite:///PATH`` store the experiment's artifacts go to ``mlartifacts/`` beside the database
    (MLflow's own default would be ``./mlruns`` under whatever the working directory is); a tracking
    server decides for itself.
    """
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    uri = client.tracking_uri
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except require_mlflow().exceptions.MlflowException:
        # Another process created it between the lookup and the creation.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


# --------------------------------------------------------------------------------------------------
# Data set version: DVC's content hash
# --------------------------------------------------------------------------------------------------


def dataset_version(path: str | os.PathLike[str]) -> str:
    """The hash DVC records for ``path`` in ``dvc.lock`` / ``.dvc`` files (DVC 3, ``md5``).

    For a file it is the MD5 of its bytes. For a directory DVC hashes a JSON manifest:
    (1) list every file below it, recursively, as ``{"md5": <file md5>, "relpath": <posix path>}``;
    (2) sort the list by ``relpath``;
    (3) ``json.dumps(list, sort_keys=True)``, UTF-8 encoded, MD5 of that, plus the suffix ``.dir``.
    Empty directories do not count. Files that ``.dvcignore`` excludes would be left out by DVC but are
    counted here, so keep data directories free of ignored files (the project's ``.dvcignore`` only names
    tool folders).
    """
    root = Path(path)
    if root.is_file():
        return _file_md5(root)
    if not root.is_dir():
        raise DataError(f"dataset_version(path=) expects an existing file or directory; got {str(root)!r}.")
    entries = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        for name in files:
            file = Path(folder) / name
            entries.append({"md5": _file_md5(file), "relpath": file.relative_to(root).as_posix()})
    entries.sort(key=lambda entry: entry["relpath"])
    manifest = json.dumps(entries, sort_keys=True).encode("utf-8")
    return hashlib.md5(manifest, usedforsecurity=False).hexdigest() + ".dir"


def _file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def dataset_tags(paths: Iterable[str | os.PathLike[str]]) -> dict[str, str]:
    """Tags naming the data a run used: ``dataset.path`` and ``dataset.version`` of their common folder.

    The common folder of ``paths`` (files count by their parent folder) is what the pipeline tracks as
    one DVC output (``data/...``), so ``dataset.version`` equals the hash in ``dvc.lock``.
    """
    folders = [Path(p).resolve() if Path(p).is_dir() else Path(p).resolve().parent for p in paths]
    if not folders:
        return {}
    common = Path(os.path.commonpath(folders))
    return {"dataset.path": _display_path(common), "dataset.version": dataset_version(common)}


def _display_path(path: Path) -> str:
    root = project_root()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


# --------------------------------------------------------------------------------------------------
# Logging helpers
# --------------------------------------------------------------------------------------------------


def metric_key(*parts: str) -> str:
    """Join ``parts`` with ``/`` into a valid MLflow metric key (other characters become ``_``)."""
    return "/".join(_UNSAFE_KEY_CHARS.sub("_", str(part)) for part in parts)


def coco_metrics(stats: CocoStats, *, prefix: str, category_names: Mapping[int, str] | None = None) -> dict[str, float]:
    """``{prefix}/AP``, ... for the 12 COCO statistics, and ``{prefix}/AP_per_category/<name>``.

    Categories are named by ``category_names``, else by ``stats.category_names``, else by id. Undefined
    values (pycocotools' -1, a category without ground truth) are left out, so charts show no fake zeros.
    """
    names = category_names or stats.category_names
    out = {metric_key(prefix, name): value for name, value in zip(COCO_STAT_NAMES, stats.stats, strict=True)
           if value >= 0}
    for cat_id, ap in stats.per_category_ap.items():
        if not math.isnan(ap):
            out[metric_key(prefix, "AP_per_category", names.get(cat_id, str(cat_id)))] = ap
    return out


def log_params(client: Any, run_id: str, params: Mapping[str, Any]) -> None:
    """Log ``params`` (values as strings) in batches of MLflow's size limit."""
    entities = require_mlflow().entities
    items = [entities.Param(key, str(value)) for key, value in params.items()]
    for start in range(0, len(items), _MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[start:start + _MAX_PARAMS_PER_BATCH], synchronous=True)


def log_metrics(client: Any, run_id: str, metrics: Iterable[tuple[str, float, int] | tuple[str, float, int, int]]) -> None:
    """Log ``(key, value, step)`` or ``(key, value, step, timestamp_ms)`` in batches of MLflow's size limit.

    Without a timestamp a metric gets the time of this call.
    """
    entities = require_mlflow().entities
    now = _now_ms()
    items = [entities.Metric(m[0], float(m[1]), m[3] if len(m) > 3 else now, int(m[2])) for m in metrics]
    for start in range(0, len(items), _MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=items[start:start + _MAX_METRICS_PER_BATCH], synchronous=True)


def _now_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------------------------------
# Training runs
# --------------------------------------------------------------------------------------------------


def training_data_paths(config: Any) -> list[Path]:
    """The data paths a training config reads (annotation files and image folders)."""
    data = config.data
    return [Path(getattr(data, field)) for field in ("train_annotations", "train_images", "val_annotations",
                                                     "val_images") if getattr(data, field, None)]


# --------------------------------------------------------------------------------------------------
# Evaluation runs
# --------------------------------------------------------------------------------------------------


def log_evaluation(
    stats: CocoStats,
    *,
    checkpoint: str | os.PathLike[str],
    report_path: str | os.PathLike[str],
    run_name: str | None = None,
    params: Mapping[str, Any] | None = None,
    data_paths: Iterable[str | os.PathLike[str]] = (),
    category_names: Mapping[int, str] | None = None,
    tags: Mapping[str, str] | None = None,
    register: Callable[[str, dict[str, str]], Any] | None = None,
) -> str:
    """Log an evaluation of ``checkpoint`` as its own run; return the run id.

    Logs ``params``, the COCO statistics as ``eval/...`` metrics, ``dataset.*`` tags of ``data_paths``
    and ``tags``, and the checkpoint and the report file as artifacts. ``register(run_id, tags)`` is
    called while the run is open, e.g. ``pipelines.registry.registrar(NAME, alias=...)``, which
    registers the checkpoint under the run; a failure there marks the run FAILED.
    """
    client = mlflow_client()
    checkpoint = Path(checkpoint)
    run = client.create_run(experiment_id(client), run_name=run_name or f"evaluate {checkpoint.parent.name}")
    run_id = run.info.run_id
    try:
        log_params(client, run_id, {"checkpoint": _display_path(checkpoint.resolve()), **(params or {})})
        run_tags = {**dataset_tags(data_paths), **(tags or {})}
        for key, value in run_tags.items():
            client.set_tag(run_id, key, value)
        metrics = coco_metrics(stats, prefix="eval", category_names=category_names)
        log_metrics(client, run_id, ((key, value, 0) for key, value in metrics.items()))
        client.log_artifact(run_id, str(checkpoint), artifact_path="checkpoint")
        client.log_artifact(run_id, str(report_path), artifact_path="report")
        if register is not None:
            register(run_id, run_tags)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def record_pipeline_status(pipeline_run: str, status: str, *, tags: Mapping[str, str] | None = None,
                           message: str = "") -> str:
    """Record the final state of a pipeline run (Kubeflow exit handler, Airflow's last task) in MLflow.

    One MLflow run per pipeline run, named ``pipeline <pipeline_run>`` (found again by its tag
    ``detcurate.pipeline_run``, so a retried exit task updates it instead of adding a second one), with
    the tags ``detcurate.pipeline_status`` (``SUCCEEDED``, ``FAILED``, ...), ``tags`` and, for a failure,
    the first 5,000 characters of ``message``. The MLflow run ends FINISHED for a pipeline that
    succeeded, else FAILED. Returns its id.
    """
    client = mlflow_client()
    experiment = experiment_id(client)
    query = f"tags.`detcurate.pipeline_run` = '{pipeline_run}'"
    found = client.search_runs([experiment], filter_string=query, max_results=1)
    run_id = found[0].info.run_id if found else client.create_run(
        experiment, run_name=f"pipeline {pipeline_run}", tags={"detcurate.pipeline_run": pipeline_run}).info.run_id
    for key, value in {"detcurate.pipeline_status": status, **(tags or {})}.items():
        client.set_tag(run_id, key, str(value))
    if message:
        client.set_tag(run_id, "detcurate.pipeline_error", message[:5000])
    client.set_terminated(run_id, "FINISHED" if status.upper() in ("SUCCEEDED", "SUCCESS") else "FAILED")
    return run_id


_MOVED_TO_TRACKING_HOOK = ("MLflowHook", "training_hooks")


def __getattr__(name: str) -> Any:
    """``MLflowHook`` and ``training_hooks`` live in ``pipelines.tracking_hook`` (they import torch);
    ``pipelines.tracking.MLflowHook`` still finds them, importing torch only then."""
    if name in _MOVED_TO_TRACKING_HOOK:
        from pipelines import tracking_hook

        return getattr(tracking_hook, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------------
# Robustness grids
# --------------------------------------------------------------------------------------------------


def log_robustness(result: Any, config_path: str | os.PathLike[str], *, run_name: str | None = None) -> str:
    """Log a finished robustness grid (``curation_core.robustness.runner.RobustnessResult``) as one run.

    Params: the grid's configuration (modes, losses, curations, seeds, base config). Metrics: the mean
    over seeds of AP/AP50/AP75 as ``robustness/<mode>/<loss>/<curation>/<stat>``, the paired BRL - focal
    difference as ``robustness/<mode>/brl_minus_focal/<curation>/<stat>`` and each mode's
    ``robustness/<mode>/dropped_fraction``. Artifacts: the JSON, the Markdown table, the figure and the
    robustness config, under ``robustness/``. Returns the run id.
    """
    client = mlflow_client()
    out_dir = Path(result.json_path).parent
    run = client.create_run(experiment_id(client), run_name=run_name or f"robustness {out_dir.name}")
    run_id = run.info.run_id
    try:
        report = json.loads(Path(result.json_path).read_text(encoding="utf-8"))
        grid = report["config"]
        log_params(client, run_id, {"robustness.config": str(config_path), "base.config": grid["base"]["config"],
                                    **{f"robustness.{k}": ",".join(map(str, grid[k]))
                                       for k in ("modes", "losses", "curations", "seeds")}})
        metrics = [(metric_key("robustness", mode, "dropped_fraction"), info["dropped_fraction"], 0)
                   for mode, info in report["training_sets"].items()]
        for row in report["summary"]:
            metrics += [(metric_key("robustness", row["mode"], row["loss"], row["curation"], stat), row[stat]["mean"], 0)
                        for stat in ("AP", "AP50", "AP75")]
        for row in report["brl_minus_focal"]:
            metrics += [(metric_key("robustness", row["mode"], "brl_minus_focal", row["curation"], stat),
                         row[stat]["mean"], 0) for stat in ("AP", "AP50", "AP75")]
        log_metrics(client, run_id, metrics)
        for path in (result.json_path, result.markdown_path, result.plot_path, config_path):
            client.log_artifact(run_id, str(path), artifact_path="robustness")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


# --------------------------------------------------------------------------------------------------
# Offline curation
# --------------------------------------------------------------------------------------------------


def log_curation_manifest(summary: Any, annotations: str | os.PathLike[str], *, run_name: str | None = None) -> str:
    """Log a curation manifest (``components.balance.BalanceSummary``) as one run; return its id.

    Params: how the manifest was made (``balance.*``). Metrics: images kept, dropped, repeated and
    expected per epoch, and per category its repeat factor and annotation share before and after
    (``balance/<category>/...``). Tags: the data set's DVC hash and the manifest's data-set identity.
    Artifacts: the manifest, its Markdown report and both figures, under ``curation/``.
    """
    client = mlflow_client()
    manifest = summary.manifest
    run = client.create_run(experiment_id(client), run_name=run_name or f"balance {Path(summary.manifest_path).stem}")
    run_id = run.info.run_id
    try:
        log_params(client, run_id, {"balance.annotations": str(annotations),
                                    **{f"balance.{k}": v for k, v in manifest.parameters.items()}})
        for key, value in {**dataset_tags([annotations]), "curation.images_sha256": manifest.identity}.items():
            client.set_tag(run_id, key, value)
        s = manifest.summary
        metrics = [(metric_key("balance", name), float(s[name]), 0)
                   for name in ("kept", "dropped", "repeated", "expected_images_per_epoch")]
        for row in summary.per_category:
            name = str(row["name"])
            metrics += [(metric_key("balance", name, "share_before"), row["share_before"], 0),
                        (metric_key("balance", name, "share_after"), row["share_after"], 0)]
            if row["r"] is not None:
                metrics.append((metric_key("balance", name, "repeat_factor"), row["r"], 0))
        log_metrics(client, run_id, metrics)
        for path in (summary.manifest_path, summary.report_path, summary.class_figure, summary.weight_figure):
            client.log_artifact(run_id, str(path), artifact_path="curation")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


# --------------------------------------------------------------------------------------------------
# Active learning
# --------------------------------------------------------------------------------------------------


def log_active_learning(summary: Any, config_path: str | os.PathLike[str], *, run_name: str | None = None) -> str:
    """Log a finished active-learning run (``components.active_learning.ActiveLearningSummary``); its id.

    Params: the run's configuration (``active_learning.*``). Metrics: the curve, one step per round:
    ``active_learning/AP`` and ``active_learning/AP50`` at step = boxes labelled, and per round
    ``active_learning/boxes``, ``.../images``, ``.../queried``, ``.../background`` at step = round.
    Artifacts: the curve JSON and the config, under ``active_learning/``.
    """
    client = mlflow_client()
    config = summary.config
    run = client.create_run(experiment_id(client),
                            run_name=run_name or f"active-learning {config.level} {config.measure} seed {config.seed}")
    run_id = run.info.run_id
    try:
        params = {k: v for k, v in config.model_dump(mode="json").items() if k != "base"}
        log_params(client, run_id, {"active_learning.base.config": config.base.config,
                                    **{f"active_learning.{k}": v for k, v in params.items()}})
        metrics: list[tuple[str, float, int]] = []
        for r in summary.rounds:
            metrics += [(metric_key("active_learning", "AP"), float(r["AP"]), int(r["boxes"])),
                        (metric_key("active_learning", "AP50"), float(r["AP50"]), int(r["boxes"]))]
            metrics += [(metric_key("active_learning", name), float(r[name]), int(r["round"]))
                        for name in ("boxes", "images", "queried", "background")]
        log_metrics(client, run_id, metrics)
        for path in (summary.curve_path, config_path):
            client.log_artifact(run_id, str(path), artifact_path="active_learning")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def log_report(folder: str | os.PathLike[str], *, run_name: str = "report") -> str:
    """Log a report folder (``components.html_report``: report.html, report.md, figures/) as the
    artifacts of a new run under ``report/``; return the run id."""
    client = mlflow_client()
    run_id = client.create_run(experiment_id(client), run_name=run_name).info.run_id
    try:
        client.log_artifacts(run_id, str(folder), artifact_path="report")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id
