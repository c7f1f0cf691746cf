"""Model registry: detector checkpoints as MLflow pyfunc models, addressed by alias.

A registered version is a pyfunc model whose only artifact is the training checkpoint; its
``predict`` runs ``curation_core.engine.predict.load_detector(checkpoint).predict(images)``. The
wrapper class is pickled by reference (``pipelines.registry.DetectorModel``), so loading a model back
needs DetCurate installed, never the source code stored beside the model. Promotion uses aliases
(``models:/NAME@champion``); MLflow's stages are deprecated.

Together with ``pipelines.tracking`` this is the only module that imports MLflow. It imports
``pipelines.tracking``; tracking never imports it (registration after training or evaluation is handed
to tracking as a callable, ``registrar``). Checkpoints are read through ``components.evaluate_model``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.tracking import configure_mlflow, experiment_id, mlflow_client, require_mlflow

mlflow = require_mlflow()

#: Alias given to a newly registered version unless another one is asked for.
DEFAULT_ALIAS = "champion"
#: Name of the model inside its run's artifacts, and of the checkpoint inside the model.
MODEL_NAME = "model"
CHECKPOINT_ARTIFACT = "checkpoint"
#: Key of the model config entry naming the inference device (default "cpu").
DEVICE_KEY = "predict_device"
#: Distributions the model needs at load time. Written out explicitly (with the installed versions) so
#: that logging never runs MLflow's requirement inference, which loads the model in a subprocess.
_RUNTIME_DISTRIBUTIONS = ("detcurate", "torch", "torchvision", "numpy", "pydantic", "pyyaml", "pillow")


class DetectorModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper around a DetCurate checkpoint.

    ``predict`` takes RGB images, each an ``(H, W, 3)`` uint8 array (a list of them, or one
    ``(N, H, W, 3)`` array) and returns one dict per image: ``boxes`` (K, 4) float32 xyxy in absolute
    pixels, ``scores`` (K,) float32 (higher = more confident), ``labels`` (K,) int64 category ids.
    """

    # MLflow turns predict()'s type hints into an input schema and wraps predict() to validate input
    # against it, warning when there are none. A list of images of different sizes has no such schema
    # and the detector validates its input itself, so predict() has no hints and opts out (MLflow's
    # own attribute for this).
    _skip_type_hint_validation = True

    def __init__(self) -> None:
        self._detector: Any = None

    def load_context(self, context: Any) -> None:
        from components.evaluate_model import load_detector

        device = (context.model_config or {}).get(DEVICE_KEY, "cpu")
        self._detector = load_detector(context.artifacts[CHECKPOINT_ARTIFACT], device=device)

    def predict(self, context, model_input, params=None):
        if self._detector is None:
            self.load_context(context)
        return self._detector.predict(as_image_list(model_input))


def as_image_list(model_input: Any) -> list[Any]:
    """Normalise pyfunc input to a list of images: a list/tuple as is, one ``(H, W, 3)`` array as a list
    of one, an ``(N, H, W, 3)`` array as a list of N. The detector checks each image's dtype and shape."""
    if isinstance(model_input, np.ndarray):
        if model_input.ndim == 3:
            return [model_input]
        if model_input.ndim == 4:
            return list(model_input)
        raise ValueError(f"DetectorModel.predict(model_input=) expects (H, W, 3) or (N, H, W, 3) arrays; "
                         f"got an array of shape {model_input.shape}.")
    if isinstance(model_input, list | tuple):
        return list(model_input)
    raise ValueError(f"DetectorModel.predict(model_input=) expects a list of (H, W, 3) uint8 arrays; "
                     f"got {type(model_input).__name__}.")


def register_checkpoint(
    checkpoint: str | os.PathLike[str],
    name: str,
    *,
    alias: str | None = DEFAULT_ALIAS,
    run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> Any:
    """Log ``checkpoint`` as a pyfunc model, register it as a new version of ``name`` and set ``alias``.

    Parameters
    ----------
    checkpoint : a checkpoint written by the training engine (checked with ``load_checkpoint`` first).
    name : registered model name (created on first use).
    alias : alias moved to the new version (``None``: no alias).
    run_id : run that the model is logged under; ``None`` logs it under a new run named
        ``register <name>``. An active run with this id is reused as is.
    tags : extra tags for the new model version.

    Returns
    -------
    mlflow.entities.model_registry.ModelVersion (``.name``, ``.version``, ``.run_id``, ``.aliases``).
    """
    from components.evaluate_model import check_checkpoint

    path = Path(checkpoint)
    check_checkpoint(path)  # CheckpointError for missing, corrupt or foreign files, before anything is logged
    configure_mlflow()
    client = mlflow_client()
    with _active_run(client, run_id, run_name=f"register {name}"):
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=DetectorModel(),
            artifacts={CHECKPOINT_ARTIFACT: str(path)},
            pip_requirements=pip_requirements(),
            # Declared so that load_registered(device=) may override it; MLflow also logs it as a run param.
            model_config={DEVICE_KEY: "cpu"},
            registered_model_name=name,
        )
    version = str(info.registered_model_version)
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, version, key, value)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return client.get_model_version(name, version)


def registrar(name: str, checkpoint: str | os.PathLike[str], *, alias: str | None = DEFAULT_ALIAS
              ) -> Callable[[str, dict[str, str]], Any]:
    """``register(run_id, tags)`` for ``pipelines.tracking.log_evaluation``: registers ``checkpoint`` as a
    new version of ``name`` under that run, with those tags, and moves ``alias`` to it."""
    def register(run_id: str, tags: dict[str, str]) -> Any:
        return register_checkpoint(checkpoint, name, alias=alias, run_id=run_id, tags=tags)

    return register


def load_registered(uri: str, *, device: str = "cpu") -> Any:
    """Load a registered detector, e.g. ``load_registered("models:/detcurate-demo-teacher@champion")``.

    Returns an ``mlflow.pyfunc.PyFuncModel`` whose ``predict(images)`` returns detections as
    ``DetectorModel.predict`` describes, computed on ``device`` ("cpu", "cuda", "cuda:1", ...).
    """
    configure_mlflow()
    return mlflow.pyfunc.load_model(uri, model_config={DEVICE_KEY: device})


def pip_requirements(distributions: Sequence[str] = _RUNTIME_DISTRIBUTIONS) -> list[str]:
    """``name==version`` of each installed distribution in ``distributions`` (absent ones are skipped)."""
    requirements = []
    for dist in distributions:
        try:
            requirements.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return requirements


@contextlib.contextmanager
def _active_run(client: Any, run_id: str | None, *, run_name: str) -> Iterator[None]:
    """Make run ``run_id`` (or a new run) the active fluent run for the block, reusing an active one."""
    active = mlflow.active_run()
    if active is not None and (run_id is None or active.info.run_id == run_id):
        yield
        return
    which = {"run_id": run_id} if run_id else {"experiment_id": experiment_id(client), "run_name": run_name}
    with mlflow.start_run(nested=active is not None, **which):
        yield


def resolve_checkpoint(uri: str) -> Path:
    """The local training checkpoint of a registered model (``models:/NAME@ALIAS`` or ``models:/NAME/3``),
    downloaded from the artifact store (e.g. for ``curation.teacher``)."""
    from mlflow.models import Model

    configure_mlflow()
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except mlflow.exceptions.MlflowException as exc:
        from curation_core.errors import ConfigError

        raise ConfigError(f"{uri}: cannot be resolved in the model registry ({str(exc).splitlines()[0][:200]})") from None
    flavor = Model.load(str(local)).flavors.get("python_function", {})
    relative = flavor.get("artifacts", {}).get(CHECKPOINT_ARTIFACT, {}).get("path")
    if relative is None:
        from curation_core.errors import CheckpointError

        raise CheckpointError(f"{uri}: registered model has no {CHECKPOINT_ARTIFACT!r} artifact (not a DetCurate model)")
    return local / relative
