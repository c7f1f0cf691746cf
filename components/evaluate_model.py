"""Pipeline step: COCO evaluation of a trained checkpoint on a data set."""

from __future__ import annotations

from typing import Any

from curation_core.engine.predict import evaluate_checkpoint
from curation_core.evaluation import CocoStats
from curation_core.io import write_json_atomic
from curation_core.progress import ProgressFn


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
