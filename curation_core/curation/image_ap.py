"""``image_ap``: teacher minus student AP of each image on its own (the DetGain paper's image-level
metric baseline): pycocotools' mAP of the single image, ``target_matching.per_image_ap``.

An image without non-ignored boxes has no AP (pycocotools' -1); both models then score NaN and the
difference counts as 0: the method cannot see a background-only image's false positives, which is
one of the things dataset-level DetGain adds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from curation_core.curation.base import Needs, ScoredBatch, Selector, finite_scores
from curation_core.target_matching import match_targets, per_image_ap


def batch_matches(batch: ScoredBatch, detections: Any) -> Any:
    """``DatasetMatches`` of one model's detections on the batch, images keyed by stream position."""
    return match_targets(batch.targets, detections, keys=batch.keys, category_ids=batch.category_ids)


class ImageAPSelector(Selector):
    """Score = AP_teacher(x) - AP_student(x) over the image's own categories (NaN -> 0)."""

    name = "image_ap"
    needs = Needs(student_detections=True, teacher_detections=True)

    def score(self, batch: ScoredBatch) -> tuple[np.ndarray, Any]:
        ap_t = per_image_ap(batch_matches(batch, batch.teacher_detections))
        ap_s = per_image_ap(batch_matches(batch, batch.student_detections))
        return finite_scores(self.name, ap_t - ap_s), None
