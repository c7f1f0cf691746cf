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
(``pip install 'detcurate[tracking]'``).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import math
import os
import re
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from curation_core.engine.hooks import Hook
from curation_core.engine.trainer import METRICS_NAME
from curation_core.errors import DataError
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


class MLflowHook(Hook):
    """Logs one training run to MLflow.

    Uses the active MLflow run if there is one (and leaves it open), else opens a run and closes it
    after training. Cost rule: ``after_step`` only appends to a buffer; the buffer goes to the store in
    one batch every ``log_every`` iterations (one database write, a few milliseconds) and before each
    evaluation, so the per-step cost is negligible.

    Parameters
    ----------
    run_name : name of the run (default: the name of the training output folder).
    register_as : if given, register the final checkpoint under this model name and point ``alias`` at it.
    alias : registry alias moved to the newly registered version.
    log_every : iterations between two metric writes (all steps are logged, in batches).
    """

    def __init__(self, *, run_name: str | None = None, register_as: str | None = None,
                 alias: str = "champion", log_every: int = DEFAULT_LOG_EVERY) -> None:
        if log_every < 1:
            raise ValueError(f"MLflowHook(log_every=) expects an integer >= 1; got {log_every}.")
        self.run_name = run_name
        self.register_as = register_as
        self.alias = alias
        self.log_every = log_every
        self.run_id: str | None = None
        self.model_version: Any = None
        self._client: Any = None
        self._owns_run = False
        self._tags: dict[str, str] = {}
        self._pending: list[tuple[str, float, int, int]] = []

    def before_train(self) -> None:
        mlflow = require_mlflow()
        self._client = mlflow_client()
        config = self.trainer.config
        active = mlflow.active_run()
        if active is not None:
            self.run_id, self._owns_run = active.info.run_id, False
        else:
            run = self._client.create_run(experiment_id(self._client),
                                          run_name=self.run_name or Path(self.trainer.output_dir).name)
            self.run_id, self._owns_run = run.info.run_id, True
            # on_exception closes the run when training fails or is interrupted; this covers a process
            # that exits without either (a hook of another library calling sys.exit, say).
            atexit.register(self.end, "FAILED")
        log_params(self._client, self.run_id, config.flat_params())
        self._tags = dataset_tags(training_data_paths(config))
        tags = {"detcurate.output_dir": _display_path(Path(self.trainer.output_dir).resolve()), **self._tags}
        for key, value in tags.items():
            self._client.set_tag(self.run_id, key, value)

    def after_step(self) -> None:
        step, now = self.trainer.iter, _now_ms()
        self._pending.extend((metric_key("train", key), value, step, now)
                             for key, value in self.trainer.last_metrics.items() if math.isfinite(value))
        if step % self.log_every == 0:
            self._flush()

    def after_eval(self, stats: CocoStats) -> None:
        self._flush()
        names = dict(zip(self.trainer.category_ids, self.trainer.category_names, strict=True))
        metrics = coco_metrics(stats, prefix="val", category_names=names)
        log_metrics(self._client, self.run_id, ((key, value, self.trainer.iter) for key, value in metrics.items()))

    def after_checkpoint(self, path: Path) -> None:
        self._client.set_tag(self.run_id, "detcurate.last_checkpoint", _display_path(Path(path).resolve()))

    def after_train(self) -> None:
        self._flush()
        result = self.trainer.result
        self._client.log_artifact(self.run_id, str(result.checkpoint), artifact_path="checkpoint")
        self._client.log_artifact(self.run_id, str(result.config_path), artifact_path="config")
        report = Path(result.output_dir) / METRICS_NAME  # final COCO stats + evaluation history
        if report.is_file():
            self._client.log_artifact(self.run_id, str(report), artifact_path="report")
            if result.history:
                self._log_curves(report)
        self._log_curation(Path(result.output_dir), step=result.iterations)
        log_metrics(self._client, self.run_id, [("train/images_per_s_mean", result.images_per_s, result.iterations)])
        if self.register_as:
            from pipelines.registry import register_checkpoint

            self.model_version = register_checkpoint(result.checkpoint, self.register_as, alias=self.alias,
                                                     run_id=self.run_id, tags=self._tags)
        self.end("FINISHED")

    def _log_curves(self, report: Path) -> None:
        """Validation AP and AP50 over the iterations of this run, as ``report/training_curves.png``."""
        import tempfile

        from components.report import plot_training_curves

        with tempfile.TemporaryDirectory() as tmp:
            label = self.run_name or Path(self.trainer.output_dir).name
            figure = plot_training_curves({label: report}, Path(tmp) / "training_curves.png", title=label)
            self._client.log_artifact(self.run_id, str(figure), artifact_path="report")

    def _log_curation(self, output_dir: Path, *, step: int) -> None:
        """For a curated run: ``selections.csv``, its report (``components.curation_report``) and a few
        headline numbers, all under ``curation/``.

        The run's training result is already logged, so a failure here (a malformed log, an unreadable
        annotations file, a store refusing an artifact) becomes a ``RuntimeWarning`` and the tag
        ``detcurate.curation_report_error``, never a failed run.
        """
        import tempfile

        from components.curation_report import curation_report
        from curation_core.engine.selection_log import LOG_NAME

        log = output_dir / LOG_NAME
        if not log.is_file():
            return
        try:
            self._client.log_artifact(self.run_id, str(log), artifact_path="curation")
            with tempfile.TemporaryDirectory() as tmp:
                stats = curation_report(log, self.trainer.config.data.train_annotations, out_dir=tmp)
                for path in stats["files"].values():
                    self._client.log_artifact(self.run_id, path, artifact_path="curation")
            headline = {"distinct_images_frac": stats["distinct_images"]["picked_frac"],
                        "background_share_picked": stats["background_share"]["picked"],
                        "background_share_dataset": stats["background_share"]["dataset"],
                        "picks_per_image_max": stats["picks_per_image"]["max"],
                        "score_picked_mean": stats["scores"]["picked"]["mean"],
                        "score_rejected_mean": stats["scores"]["rejected"]["mean"]}
            log_metrics(self._client, self.run_id,
                        [(f"curation/{key}", value, step) for key, value in headline.items() if value is not None])
        except Exception as exc:  # noqa: BLE001 - reporting must not fail a finished training run
            message = f"curation report of {log} not logged: {type(exc).__name__}: {exc}"
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            with contextlib.suppress(Exception):
                self._client.set_tag(self.run_id, "detcurate.curation_report_error", message[:5000])

    def on_exception(self, error: BaseException) -> None:
        """Close the run as KILLED (interrupted: SIGINT/SIGTERM, ``request_stop``) or FAILED."""
        from curation_core.engine.trainer import TrainingInterrupted

        self.end("KILLED" if isinstance(error, TrainingInterrupted | KeyboardInterrupt) else "FAILED")

    def end(self, status: str = "FINISHED") -> None:
        """Close the run this hook opened (no-op for a run it did not open, or one already closed).

        Call it with ``"FAILED"`` or ``"KILLED"`` when training raised; otherwise it happens at exit.
        """
        if self._owns_run:
            self._owns_run = False
            atexit.unregister(self.end)
            self._flush()
            self._client.set_terminated(self.run_id, status)

    def _flush(self) -> None:
        if self._pending:
            log_metrics(self._client, self.run_id, self._pending)
            self._pending = []


def training_data_paths(config: Any) -> list[Path]:
    """The data paths a training config reads (annotation files and image folders)."""
    data = config.data
    return [Path(getattr(data, field)) for field in ("train_annotations", "train_images", "val_annotations",
                                                     "val_images") if getattr(data, field, None)]


def training_hooks(config: Any, *, run_name: str | None = None, register_as: str | None = None) -> list[Hook]:
    """Hooks that track a training run of ``config`` in MLflow (and register the result if asked)."""
    require_mlflow()  # fail before training, not after it
    return [MLflowHook(run_name=run_name or Path(config.train.output_dir).name, register_as=register_as)]


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
    register_as: str | None = None,
    alias: str = "champion",
) -> str:
    """Log an evaluation of ``checkpoint`` as its own run; return the run id.

    Logs ``params``, the COCO statistics as ``eval/...`` metrics, ``dataset.*`` tags of ``data_paths``,
    and the checkpoint and the report file as artifacts. With ``register_as`` the checkpoint is also
    registered under that name with ``alias``.
    """
    client = mlflow_client()
    checkpoint = Path(checkpoint)
    run = client.create_run(experiment_id(client), run_name=run_name or f"evaluate {checkpoint.parent.name}")
    run_id = run.info.run_id
    try:
        log_params(client, run_id, {"checkpoint": _display_path(checkpoint.resolve()), **(params or {})})
        tags = dataset_tags(data_paths)
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        metrics = coco_metrics(stats, prefix="eval", category_names=category_names)
        log_metrics(client, run_id, ((key, value, 0) for key, value in metrics.items()))
        client.log_artifact(run_id, str(checkpoint), artifact_path="checkpoint")
        client.log_artifact(run_id, str(report_path), artifact_path="report")
        if register_as:
            from pipelines.registry import register_checkpoint

            register_checkpoint(checkpoint, register_as, alias=alias, run_id=run_id, tags=tags)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id
