"""The MLflow hook of a training run: the one place where the trainer's progress reaches MLflow.

``components.train`` trains; the caller hands it ``training_hooks(config)`` (the command line, the DVC
stage, the Kubeflow component and the Airflow task alike). This module imports the training engine (and
so torch); ``pipelines.tracking`` does not, so that an Airflow DAG file can use it while it is parsed.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from curation_core.engine.hooks import Hook
from curation_core.engine.trainer import METRICS_NAME
from curation_core.evaluation import CocoStats
from pipelines.tracking import (
    DEFAULT_LOG_EVERY,
    _display_path,
    _now_ms,
    check_tracking_server,
    coco_metrics,
    dataset_tags,
    experiment_id,
    log_metrics,
    log_params,
    metric_key,
    mlflow_client,
    require_mlflow,
    tracking_uri,
    training_data_paths,
)


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
    tags : extra run tags (``detcurate.data_rev``, ``detcurate.pipeline_run``, ...).
    """

    def __init__(self, *, run_name: str | None = None, register_as: str | None = None,
                 alias: str = "champion", log_every: int = DEFAULT_LOG_EVERY,
                 tags: Mapping[str, str] | None = None) -> None:
        if log_every < 1:
            raise ValueError(f"MLflowHook(log_every=) expects an integer >= 1; got {log_every}.")
        self.run_name = run_name
        self.register_as = register_as
        self.alias = alias
        self.log_every = log_every
        self.extra_tags = dict(tags or {})
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
        tags = {"detcurate.output_dir": _display_path(Path(self.trainer.output_dir).resolve()), **self._tags,
                **self.extra_tags}
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
                        "boxes_per_image_picked": stats["boxes_per_image"]["picked"],
                        "boxes_per_image_rejected": stats["boxes_per_image"]["rejected"],
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



def training_hooks(config: Any, *, run_name: str | None = None, register_as: str | None = None,
                   alias: str = "champion", tags: Mapping[str, str] | None = None) -> list[Hook]:
    """Hooks that track a training run of ``config`` in MLflow (and register the result if asked).

    Fails before training, not after it: without MLflow (ImportError with the install command), or when
    the tracking server does not answer (``ConfigError`` naming its URL).
    """
    require_mlflow()
    check_tracking_server(tracking_uri())
    return [MLflowHook(run_name=run_name or Path(config.train.output_dir).name, register_as=register_as,
                       alias=alias, tags=tags)]
