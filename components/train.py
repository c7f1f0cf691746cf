"""Pipeline step: train a detector from a YAML config (DVC stage, Kubeflow component, Airflow task)."""

from __future__ import annotations

from collections.abc import Sequence

from curation_core.engine.config import load_config
from curation_core.engine.hooks import Hook
from curation_core.engine.trainer import TrainResult, train
from curation_core.progress import ProgressFn


def train_detector(config_path: str, overrides: Sequence[str] = (), *, hooks: Sequence[Hook] = (),
                   resume: bool = False, progress: ProgressFn | None = None) -> TrainResult:
    """Load and validate ``config_path`` with ``key=value`` ``overrides``, then train.

    Outputs land in ``train.output_dir``: ``checkpoint.pt``, ``config.yaml`` (the resolved config) and
    ``metrics.json`` (COCO statistics by iteration). Raises ``ConfigError``/``DataError``/``CheckpointError``
    on bad input and ``TrainingInterrupted`` after a signal (checkpoint written; continue with ``resume``).
    """
    config = load_config(config_path, overrides)
    return train(config, hooks=hooks, resume=resume, progress=progress)
