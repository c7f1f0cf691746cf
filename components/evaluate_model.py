"""Pipeline step: COCO evaluation of a trained checkpoint on a data set (``evaluate_trained``: pipeline form)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from curation_core.engine.checkpoint import load_checkpoint
from curation_core.engine.predict import LoadedDetector, evaluate_checkpoint, load_detector
from curation_core.evaluation import CocoStats
from curation_core.io import write_json_atomic
from curation_core.progress import ProgressFn

__all__ = ["check_checkpoint", "evaluate_model", "evaluate_trained", "load_detector", "LoadedDetector"]


def check_checkpoint(checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and verify a training checkpoint (``CheckpointError`` for a missing, corrupt or foreign file)."""
    return load_checkpoint(checkpoint)


def evaluate_model(checkpoint: str, annotations: str, images: str, *, out_json: str | None = None,
                   detections_json: str | None = None, device: str = "cpu", batch_size: int = 8,
                   progress: ProgressFn | None = None) -> CocoStats:
    """Run the checkpoint's detector on every image of ``annotations`` and evaluate with pycocotools.

    ``out_json`` receives the report (``stats``: the 12 numbers in pycocotools' order, ``names``,
    ``per_category_ap``, sizes, and the checkpoint path); ``detections_json`` the COCO results. Both are
    written atomically.
    """
    stats, detections = evaluate_checkpoint(checkpoint, annotations, images, device=device, batch_size=batch_size,
                                            progress=progress)
    if detections_json is not None:
        write_json_atomic(detections_json, detections)
    if out_json is not None:
        report: dict[str, Any] = {**stats.as_dict(), "checkpoint": str(checkpoint), "annotations": str(annotations),
                                  **stats.named()}
        write_json_atomic(out_json, report, indent=2)
    return stats


#: Files of the pipeline form's output folder.
EVAL_REPORT = "eval.json"
EVAL_DETECTIONS = "detections.json"


def evaluate_trained(model_dir: str | os.PathLike[str], data_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                     *, split: str = "val", device: str = "cpu", batch_size: int = 8,
                     progress: ProgressFn | None = None) -> dict[str, Any]:
    """Pipeline form of ``evaluate_model``: the checkpoint of a ``components.train.train_model`` folder on
    the ``split`` of a ``components.data`` folder; ``out_dir`` (published whole) gets ``eval.json`` and
    ``detections.json``. Returns the report (``stats``, ``names``, ``per_category_ap``, ...)."""
    from components.data import data_paths
    from components.staging import finished, staged_output

    paths = data_paths(data_dir)
    checkpoint = Path(model_dir) / "checkpoint.pt"
    fingerprint = {"model": _step_fingerprint(model_dir), "checkpoint": str(checkpoint.resolve()),
                   "data": str(Path(data_dir).resolve()), "split": split}
    done = finished(out_dir, fingerprint)
    if done is not None:
        return done["result"]
    result: dict[str, Any] = {}
    with staged_output(out_dir, step="evaluate", fingerprint=fingerprint, result=result) as stage:
        evaluate_model(str(checkpoint), paths[f"{split}_annotations"], paths[f"{split}_images"],
                       out_json=str(stage / EVAL_REPORT), detections_json=str(stage / EVAL_DETECTIONS),
                       device=device, batch_size=batch_size, progress=progress)
        report = json.loads((stage / EVAL_REPORT).read_text(encoding="utf-8"))
        report["checkpoint"] = str(checkpoint)
        write_json_atomic(stage / EVAL_REPORT, report, indent=2)
        result.update(report)
    return result


def _step_fingerprint(folder: str | os.PathLike[str]) -> Any:
    done = Path(folder) / "step.json"
    return json.loads(done.read_text(encoding="utf-8")).get("fingerprint") if done.is_file() else None
