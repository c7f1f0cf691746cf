"""COCO box evaluation, delegated to pycocotools so that every number is pycocotools' own.

``evaluate_detections`` returns the 12 summary statistics in pycocotools' order and the per-category
AP (IoU 0.50:0.95, all areas, 100 detections). Images of the ground truth that have no detection count
as images with only false negatives, exactly as in ``COCOeval``.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from curation_core.coco import CocoDataset

#: Names of the 12 statistics of ``COCOeval.summarize`` for boxes, in its order.
COCO_STAT_NAMES: tuple[str, ...] = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)

#: IoU thresholds 0.50:0.05:0.95, computed exactly as pycocotools does (bitwise the same floats).
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
#: Area ranges of pycocotools, in pixels^2: all, small, medium, large.
COCO_AREA_RANGES: dict[str, tuple[float, float]] = {
    "all": (0.0, 1e5**2),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}
#: Per-image detection limits of pycocotools (the last one is used for matching).
COCO_MAX_DETS: tuple[int, ...] = (1, 10, 100)


@dataclass(frozen=True)
class CocoStats:
    """Result of a COCO box evaluation.

    Attributes
    ----------
    stats : tuple of 12 floats, pycocotools' order (see ``COCO_STAT_NAMES``); -1.0 where undefined,
        exactly as pycocotools reports it.
    per_category_ap : category id -> AP@[.50:.95] (all areas, 100 dets); NaN for a category without
        ground truth (pycocotools excludes those from the mean).
    num_images, num_detections : sizes of the evaluated sets.
    category_names : category id -> name, from the ground truth (empty when not known).
    """

    stats: tuple[float, ...]
    per_category_ap: dict[int, float]
    num_images: int
    num_detections: int
    category_names: dict[int, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``stats`` (list of 12), ``names``, ``per_category_ap`` (by id), the same by
        category name (``per_category_ap_by_name``, when names are known) and the sizes."""
        per_category = {k: (None if np.isnan(v) else v) for k, v in self.per_category_ap.items()}
        out: dict[str, Any] = {
            "stats": list(self.stats),
            "names": list(COCO_STAT_NAMES),
            "per_category_ap": {str(k): v for k, v in per_category.items()},
            "num_images": self.num_images,
            "num_detections": self.num_detections,
        }
        if self.category_names:
            out["per_category_ap_by_name"] = {self.category_names.get(k, str(k)): v for k, v in per_category.items()}
        return out

    def named(self) -> dict[str, float]:
        """Statistic name -> value."""
        return dict(zip(COCO_STAT_NAMES, self.stats, strict=True))


def evaluate_detections(gt: CocoDataset, detections: list[dict[str, Any]]) -> CocoStats:
    """Evaluate COCO-format detections (xywh, absolute pixels) against ``gt`` with pycocotools.

    ``detections`` must already be validated (``coco.load_detections``). With no detections at all the
    result is what pycocotools reports for an empty result set: every statistic 0 (or -1 where there is
    no ground truth in an area range).
    """
    from pycocotools.cocoeval import COCOeval

    coco_gt = gt.to_pycocotools()
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        coco_dt = _load_results(coco_gt, detections)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = tuple(float(s) for s in evaluator.stats)
    return CocoStats(
        stats=stats,
        per_category_ap=_per_category_ap(evaluator),
        num_images=len(gt.images),
        num_detections=len(detections),
        category_names={int(c["id"]): str(c["name"]) for c in gt.categories},
    )


def _load_results(coco_gt: Any, detections: list[dict[str, Any]]) -> Any:
    """``COCO.loadRes`` over copies of ``detections`` (it adds fields in place), empty lists included."""
    from pycocotools.coco import COCO

    copies = [
        {"image_id": d["image_id"], "category_id": d["category_id"], "bbox": list(d["bbox"]), "score": d["score"]}
        for d in detections
    ]
    if copies:
        return coco_gt.loadRes(copies)
    # loadRes cannot take an empty list; an empty result set has the ground truth's images and categories.
    empty = COCO()
    empty.dataset = {"images": list(coco_gt.dataset["images"]), "categories": list(coco_gt.dataset["categories"]), "annotations": []}
    empty.createIndex()
    return empty


def _per_category_ap(evaluator: Any) -> dict[int, float]:
    # precision has shape (T, R, K, A, M); area index 0 = all, max-dets index -1 = 100.
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    out: dict[int, float] = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k]
        valid = values[values > -1]
        out[int(cat_id)] = float(np.mean(valid)) if valid.size else float("nan")
    return out
