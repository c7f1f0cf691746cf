"""Checkpoints: one ``torch.save`` file per run, written atomically, read with ``weights_only=True``.

A checkpoint is a dict of plain types and tensors only (so loading it never runs pickled code):

- ``format`` (``FORMAT_NAME``) and ``format_version`` (``FORMAT_VERSION``);
- ``model_name`` (``"<detector>/<backbone>"``) and ``model`` (the state dict);
- ``optimizer``, ``scaler`` (``GradScaler`` state or None), ``scheduler`` (``{"policy", "iteration"}``:
  the schedule is a function of the iteration);
- ``iteration`` (finished steps), ``sampler`` (``{"seed", "batch_size", "num_samples", "next_batch"}``),
  ``rng`` (``{"torch": ByteTensor, "cuda": [ByteTensor, ...]}``);
- ``config`` (the resolved ``TrainConfig`` as plain dicts), ``category_ids`` and ``category_names``
  (label ``i + 1`` is ``category_ids[i]``), ``history`` (evaluations so far), ``torch_version``.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from curation_core.errors import CheckpointError
from curation_core.io import atomic_write

#: Identifies DetCurate checkpoints among other torch files.
FORMAT_NAME = "detcurate-checkpoint"
#: Incremented when the layout above changes incompatibly.
FORMAT_VERSION = 1
#: Keys every checkpoint of this version has.
REQUIRED_KEYS = ("model_name", "model", "iteration", "config", "category_ids", "category_names")
#: File name of the checkpoint inside a run's output folder.
CHECKPOINT_NAME = "checkpoint.pt"


def model_name(config: Any) -> str:
    """``"<detector>/<backbone>"`` of a ``ModelConfig``."""
    return f"{config.detector}/{config.backbone}"


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus the format tags) to ``path`` atomically; return the path."""
    target = Path(path)
    with atomic_write(target, "wb") as handle:
        torch.save({"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **payload}, handle)
    return target


def load_checkpoint(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint.

    Raises
    ------
    CheckpointError
        The file is missing, truncated, corrupt, not a DetCurate checkpoint (e.g. a bare state dict,
        or a pickle that needs arbitrary code), or of another format version.
    """
    source = Path(path)
    if not source.is_file():
        raise CheckpointError(f"{source}: checkpoint file does not exist")
    try:
        payload = torch.load(source, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError,
            AttributeError, ImportError, IndexError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{source}: corrupt, truncated or not a safe checkpoint "
                              f"({type(exc).__name__}: {_reason(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{source}: not a DetCurate checkpoint (no format tag {FORMAT_NAME!r}; "
                              f"a bare state dict or another program's file?)")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{source}: checkpoint format version {version!r}; this version of DetCurate "
                              f"reads version {FORMAT_VERSION}")
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"{source}: checkpoint lacks {', '.join(missing)} (damaged?)")
    return payload


def _reason(exc: BaseException) -> str:
    """The informative line of a torch.load error (the weights-only unpickler's is not its first)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line] or [type(exc).__name__]
    chosen = next((line for line in lines if line.startswith("WeightsUnpickler error")), lines[0])
    return chosen[:200]


def check_same_model(checkpoint: dict[str, Any], model_config: dict[str, Any], *, source: str) -> None:
    """``CheckpointError`` unless the checkpoint was trained with exactly this ``model`` section."""
    saved = checkpoint["config"].get("model") if isinstance(checkpoint.get("config"), dict) else None
    saved = _with_defaults("model", saved)
    if saved != model_config:
        diff = sorted(k for k in set(model_config) | set(saved or {}) if (saved or {}).get(k) != model_config.get(k))
        shown = ", ".join(f"{k}={(saved or {}).get(k)!r} (config: {model_config.get(k)!r})" for k in diff[:4])
        raise CheckpointError(f"{source}: checkpoint is of model {checkpoint['model_name']} with {shown}; "
                              f"it cannot continue this run")


def check_same_section(checkpoint: dict[str, Any], section: str, current: dict[str, Any], *, source: str) -> None:
    """``CheckpointError`` unless the checkpoint's run used this config ``section`` (``curation``,
    ``augment``, ``optim``): continuing with another one would silently mix two recipes.

    A checkpoint written before the section existed counts as having its defaults.
    """
    saved_config = checkpoint["config"] if isinstance(checkpoint.get("config"), dict) else {}
    saved = saved_config.get(section)
    if saved is None:
        from curation_core.engine.config import TrainConfig

        saved = TrainConfig.model_fields[section].default.model_dump(mode="json")
    saved = _with_defaults(section, saved)
    if saved != current:
        diff = sorted(k for k in set(current) | set(saved) if saved.get(k) != current.get(k))
        shown = ", ".join(f"{section}.{k}={saved.get(k)!r} (config: {current.get(k)!r})" for k in diff[:4])
        raise CheckpointError(f"{source}: the run was trained with {shown}; resuming would mix two recipes: "
                              f"restore the section or start a new train.output_dir")


def _with_defaults(section: str, saved: Any) -> Any:
    """A saved config ``section`` with the defaults of fields added since it was written.

    Fields gain defaults over releases (``model.loss``, ``model.sampler``, ...); a checkpoint written
    before one existed was trained with its default, so it compares equal. A section that no longer
    validates is returned as it is (the comparison then names what differs).
    """
    if not isinstance(saved, dict):
        return saved
    from pydantic import ValidationError

    from curation_core.engine.config import TrainConfig

    try:
        return TrainConfig.model_fields[section].annotation.model_validate(saved).model_dump(mode="json")
    except (ValidationError, KeyError, AttributeError, ValueError):
        return saved


def check_same_categories(checkpoint: dict[str, Any], categories: list[dict[str, Any]], *, source: str,
                          checkpoint_path: str) -> None:
    """``CheckpointError`` unless ``categories`` (a COCO category list) has the checkpoint's ids and names.

    The order may differ: labels are mapped through the ids.
    """
    expected = dict(zip(checkpoint["category_ids"], checkpoint["category_names"], strict=True))
    actual = {c["id"]: c["name"] for c in categories}
    if expected != actual:
        only_ckpt = sorted(set(expected.items()) - set(actual.items()))[:5]
        only_data = sorted(set(actual.items()) - set(expected.items()))[:5]
        raise CheckpointError(f"{source}: categories differ from those of checkpoint {checkpoint_path} "
                              f"(only in the checkpoint: {only_ckpt}; only in the data: {only_data})")
