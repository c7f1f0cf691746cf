"""Pipeline step: train a detector from a YAML config (DVC stage, Kubeflow component, Airflow task).

With ``curation.method`` other than ``none`` the student's batches are chosen online
(``curation_core.curation``): this step builds the batch selector and hands it to the trainer. The
trainer is assembled here only; callers hand in their hooks (progress, ``pipelines.tracking_hook``).

``train_model`` is the pipeline form: a config (a dict, as a Kubeflow or Airflow parameter), a data
folder of ``components.data`` and an output folder published whole (``components.staging``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from components.data import data_paths
from components.staging import finished, staged_output
from curation_core.engine.checkpoint import CHECKPOINT_NAME
from curation_core.engine.config import TrainConfig, config_from_dict, load_config
from curation_core.engine.hooks import Hook
from curation_core.engine.trainer import METRICS_NAME, TrainingInterrupted, TrainResult, train
from curation_core.progress import ProgressFn

__all__ = ["TrainingInterrupted", "load_train_config", "pipeline_config", "selector_factory", "train_config",
           "train_detector", "train_model"]

#: Load and validate a YAML config with ``key=value`` overrides (``ConfigError`` naming file and field).
load_train_config = load_config


def selector_factory(config: TrainConfig, *, resolve_uri: Callable[[str], str] | None = None):  # noqa: ANN201
    """The trainer's ``selector_factory`` for ``config`` (None for plain training)."""
    if config.curation.method == "none":
        return None
    from curation_core.curation.curator import build_curator

    return partial(build_curator, resolve_uri=resolve_uri)


def train_config(config: TrainConfig, *, hooks: Sequence[Hook] = (), resume: bool = False,
                 progress: ProgressFn | None = None, resolve_uri: Callable[[str], str] | None = None) -> TrainResult:
    """Train a validated config (curated if its ``curation`` section says so); see ``train_detector``."""
    return train(config, hooks=hooks, resume=resume, progress=progress,
                 selector_factory=selector_factory(config, resolve_uri=resolve_uri))


def train_detector(config_path: str, overrides: Sequence[str] = (), *, hooks: Sequence[Hook] = (),
                   resume: bool = False, progress: ProgressFn | None = None,
                   resolve_uri: Callable[[str], str] | None = None) -> TrainResult:
    """Load and validate ``config_path`` with ``key=value`` ``overrides``, then train.

    Outputs land in ``train.output_dir``: ``checkpoint.pt``, ``config.yaml`` (the resolved config),
    ``metrics.json`` (COCO statistics by iteration) and, for curated runs, ``selections.csv``. Raises
    ``ConfigError``/``DataError``/``CheckpointError`` on bad input and ``TrainingInterrupted`` after a
    signal (checkpoint written; continue with ``resume``). ``resolve_uri`` turns a ``models:/`` teacher
    URI into a local checkpoint (``pipelines.registry.resolve_checkpoint``).
    """
    config = load_config(config_path, overrides)
    return train_config(config, hooks=hooks, resume=resume, progress=progress, resolve_uri=resolve_uri)


def pipeline_config(config: Mapping[str, Any], *, data_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str],
                    teacher: str | os.PathLike[str] | None = None, manifest: str | os.PathLike[str] | None = None,
                    source: str = "<pipeline>") -> TrainConfig:
    """``config`` (a training config as a dict) with its data, output folder and teacher set, validated.

    ``teacher``: a checkpoint path or ``models:/`` URI for ``curation.teacher`` (the pipeline's teacher
    step). ``manifest``: a curation manifest for ``data.manifest`` (the pipeline's balance step).
    ``ConfigError`` names ``source`` and the bad field.
    """
    raw = copy.deepcopy(dict(config))
    raw["data"] = {**raw.get("data", {}), **data_paths(data_dir)}
    if manifest is not None:
        raw["data"]["manifest"] = str(manifest)
    raw["train"] = {**raw.get("train", {}), "output_dir": str(output_dir)}
    if teacher is not None:
        raw["curation"] = {**raw.get("curation", {}), "teacher": str(teacher)}
    return config_from_dict(raw, source=source)


def train_model(config: Mapping[str, Any], out_dir: str | os.PathLike[str], *, data_dir: str | os.PathLike[str],
                teacher: str | os.PathLike[str] | None = None, manifest: str | os.PathLike[str] | None = None,
                hooks: Sequence[Hook] | Callable[[TrainConfig], Sequence[Hook]] = (),
                progress: ProgressFn | None = None, resolve_uri: Callable[[str], str] | None = None) -> dict[str, Any]:
    """Train ``config`` on the data of ``data_dir`` into ``out_dir``, published whole when training ends.

    ``out_dir`` receives ``checkpoint.pt``, ``config.yaml``, ``metrics.json`` (and ``selections.csv``
    for a curated run) and ``step.json``. Training runs in ``components.staging.staging_dir(out_dir)``:
    a run killed halfway continues from its last checkpoint the next time with the same ``out_dir`` (bit
    for bit), and a finished output with the same config, data and teacher is returned as it is, without
    training. (A Kubeflow retry, in a new pod with a new output folder, passes a folder on a volume as
    ``out_dir``: ``components.staging.scratch_output``.)
    ``hooks`` may be a function of the validated config (built once the config is known to be valid).
    ``manifest``: a curation manifest (``data.manifest``); the step that wrote it is part of the
    fingerprint, so a manifest made with other parameters retrains.

    Returns
    -------
    dict with ``checkpoint``, ``metrics`` (paths in ``out_dir``), ``iterations`` and ``final`` (the
    named COCO statistics on the validation set, or None).
    """
    final_dir = Path(out_dir)
    checked = pipeline_config(config, data_dir=data_dir, output_dir=final_dir, teacher=teacher, manifest=manifest)
    fingerprint = {"config": checked.to_dict(), "data": str(Path(data_dir).resolve()),
                   "data_step": _step_record(data_dir), "teacher": _step_record(Path(teacher).parent) if teacher else None}
    if manifest is not None:  # only then: the fingerprints of finished outputs without one stay valid
        fingerprint["manifest_step"] = _step_record(Path(manifest).parent)
    done = finished(final_dir, fingerprint)
    if done is not None:
        return done["result"]
    result: dict[str, Any] = {}
    with staged_output(final_dir, step="train", fingerprint=fingerprint, result=result) as stage:
        staged = pipeline_config(config, data_dir=data_dir, output_dir=stage, teacher=teacher, manifest=manifest)
        run_hooks = hooks(checked) if callable(hooks) else hooks
        trained = train_config(staged, hooks=run_hooks, resume=True, progress=progress, resolve_uri=resolve_uri)
        result.update({"checkpoint": str(final_dir / CHECKPOINT_NAME), "metrics": str(final_dir / METRICS_NAME),
                       "iterations": trained.iterations,
                       "final": trained.final_stats.named() if trained.final_stats is not None else None})
    return result


def _step_record(folder: str | os.PathLike[str]) -> Any:
    """The ``step.json`` fingerprint of an upstream output (its parameters), or None outside a pipeline."""
    done = Path(folder) / "step.json"
    if not done.is_file():
        return None
    import json

    return json.loads(done.read_text(encoding="utf-8")).get("fingerprint")
