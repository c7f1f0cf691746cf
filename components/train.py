"""Pipeline step: train a detector from a YAML config (DVC stage, Kubeflow component, Airflow task).

With ``curation.method`` other than ``none`` the student's batches are chosen online
(``curation_core.curation``): this step builds the batch selector and hands it to the trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from curation_core.engine.config import TrainConfig, load_config
from curation_core.engine.hooks import Hook
from curation_core.engine.trainer import TrainResult, train
from curation_core.progress import ProgressFn


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
