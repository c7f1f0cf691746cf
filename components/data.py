"""Pipeline step: the data set of a pipeline run, synthesised or a user's COCO set validated on the way in.

Output folder (published whole, ``components.staging``): ``train/annotations.json``, ``train/images/``,
``val/annotations.json``, ``val/images/`` and ``step.json``. A user's set (``source``: a folder with the
same layout) is validated record by record, image files included (``curation_core.coco.load_coco``),
before anything is copied; the first problem is a one-line ``CocoValidationError``/``DataError``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from components.staging import finished, staged_output
from curation_core.coco import load_coco
from curation_core.errors import DataError
from curation_core.progress import ProgressFn
from curation_core.synth import SynthConfig, generate_dataset

SPLITS = ("train", "val")
#: ``source`` value that asks for the built-in synthetic data set.
SYNTH = "synth"


def data_paths(data_dir: str | os.PathLike[str]) -> dict[str, str]:
    """The four ``data`` fields of a training config for a data folder written by this step."""
    root = Path(data_dir)
    return {"train_annotations": str(root / "train" / "annotations.json"), "train_images": str(root / "train" / "images"),
            "val_annotations": str(root / "val" / "annotations.json"), "val_images": str(root / "val" / "images")}


def prepare_data(out_dir: str | os.PathLike[str], *, source: str = SYNTH, train: int = 1200, val: int = 300,
                 size: int = 128, seed: int = 0, imbalance: float = 10.0, max_objects: int = 20,
                 progress: ProgressFn | None = None) -> dict[str, Any]:
    """Write the data set of a run to ``out_dir``; return its summary (images and annotations per split).

    Parameters
    ----------
    source : ``"synth"`` (``curation_core.synth``, with ``train``, ``val``, ``size``, ``seed``,
        ``imbalance``, ``max_objects``; see ``components.synth``) or a folder holding
        ``{train,val}/annotations.json`` and ``{train,val}/images``.

    Raises
    ------
    ConfigError
        A synthesis parameter is out of range (nothing is written).
    DataError, CocoValidationError
        The source folder lacks a split, or a record or an image file of it is invalid.
    """
    synth = source == SYNTH
    fingerprint: dict[str, Any] = ({"source": SYNTH, "train": train, "val": val, "size": size, "seed": seed,
                                    "imbalance": imbalance, "max_objects": max_objects} if synth
                                   else {"source": str(Path(source).resolve()), "mtime": _tree_mtime(Path(source))})
    done = finished(out_dir, fingerprint)
    if done is not None:
        return done["result"]
    config = SynthConfig(train=train, val=val, size=size, seed=seed, imbalance=imbalance,
                         max_objects=max_objects) if synth else None  # ConfigError before anything is written
    datasets = None if synth else _validated(Path(source), progress=progress)
    result: dict[str, Any] = {}
    with staged_output(out_dir, step="data", fingerprint=fingerprint, result=result) as stage:
        if config is not None:
            generate_dataset(stage, config, progress=progress)
        else:
            for split in SPLITS:
                shutil.copytree(Path(source) / split, stage / split, dirs_exist_ok=True)
        for split in SPLITS:
            gt = datasets[split] if datasets else load_coco(stage / split / "annotations.json")
            result[split] = {"images": len(gt.images), "annotations": len(gt.annotations)}
    return result


def _validated(source: Path, *, progress: ProgressFn | None) -> dict[str, Any]:
    found = {}
    for split in SPLITS:
        annotations, images = source / split / "annotations.json", source / split / "images"
        if not annotations.is_file() or not images.is_dir():
            raise DataError(f"{source}: <folder>: expects {split}/annotations.json and {split}/images/ "
                            f"(the layout of `detcurate data synth`)")
        found[split] = load_coco(annotations, image_root=images, progress=progress)
    return found


def _tree_mtime(root: Path) -> float:
    """Latest modification time below ``root`` (a user's set that changed is ingested again)."""
    if not root.is_dir():
        raise DataError(f"{root}: <folder>: data source does not exist (expected 'synth' or a COCO folder)")
    return max((p.stat().st_mtime for p in root.rglob("*")), default=root.stat().st_mtime)
