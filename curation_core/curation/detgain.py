"""``detgain``: teacher DetGain minus student DetGain, each against its model's running state of D.

Sun et al., arXiv 2511.14197, Eq. (learnability): ``s(x) = delta(x; teacher, D) - delta(x; student, D)``
with ``delta(x; f, D) = mAP(f; D + {x}) - mAP(f; D)``, estimated by ``curation.estimator`` (``exact``,
``uniform`` = the paper's closed form, ``empirical``).

D is the recent training stream: each model keeps a ``DetGainState`` of its matched predictions on
every *scored* image (all B of each super-batch, not only the b picked, so that D estimates the
training distribution and not the selection's bias), forgetting by ``curation.window`` images or
``curation.decay`` per update. Each super-batch is scored against the states as they were before it,
then folded in. Before the first update both states are empty: the first super-batch scores 0
everywhere (so top-b keeps its first b images, a random b of the shuffled stream) and only fills D.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from curation_core.curation.base import Needs, ScoredBatch, Selector, finite_scores
from curation_core.curation.image_ap import batch_matches
from curation_core.detgain.scoring import learnability
from curation_core.detgain.state import DetGainState, StateConfig
from curation_core.evaluation import COCO_IOU_THRESHOLDS
from curation_core.matching import DatasetMatches


def concat_matches(parts: Sequence[DatasetMatches]) -> DatasetMatches:
    """One ``DatasetMatches`` of disjoint image sets (ascending across ``parts``, as the ranks' shares are).

    Every part must have the same categories and IoU thresholds. Rows come out in (category, image, rank)
    order, as ``match_dataset`` produces them.
    """
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    offsets = np.cumsum([0] + [p.image_ids.size for p in parts])
    image_ids = np.concatenate([p.image_ids for p in parts])
    if np.any(np.diff(image_ids) <= 0):
        raise ValueError("concat_matches(parts=) expects disjoint, ascending image ids across the parts.")
    det_image = np.concatenate([p.det_image + o for p, o in zip(parts, offsets[:-1], strict=True)])
    det_category = np.concatenate([p.det_category for p in parts])
    det_rank = np.concatenate([p.det_rank for p in parts])
    order = np.lexsort((det_rank, det_image, det_category))
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])[order]  # noqa: E731
    return DatasetMatches(
        image_ids=image_ids, category_ids=first.category_ids, iou_thresholds=first.iou_thresholds,
        det_image=det_image[order], det_category=det_category[order], det_score=cat("det_score"),
        det_rank=det_rank[order], det_true_positive=cat("det_true_positive"), det_ignored=cat("det_ignored"),
        gt_count=np.concatenate([p.gt_count for p in parts], axis=0),
    )


class DetGainSelector(Selector):
    """Score = learnability against the two running states (see the module docstring)."""

    name = "detgain"
    needs = Needs(student_detections=True, teacher_detections=True)

    def __init__(self, *, estimator: str, window: int | None, decay: float | None) -> None:
        self.estimator = estimator
        self.state_config = StateConfig(window=window, decay=decay)
        self.teacher_state = DetGainState(COCO_IOU_THRESHOLDS, config=self.state_config)
        self.student_state = DetGainState(COCO_IOU_THRESHOLDS, config=self.state_config)

    def score(self, batch: ScoredBatch) -> tuple[np.ndarray, Any]:
        teacher, student = batch_matches(batch, batch.teacher_detections), batch_matches(batch, batch.student_detections)
        if self.teacher_state.num_updates == 0:  # empty D: nothing to compare with (module docstring)
            return np.zeros(len(batch)), (teacher, student)
        scores = learnability(self.teacher_state, self.student_state, teacher, student, estimator=self.estimator)
        return finite_scores(self.name, scores.learnability), (teacher, student)

    def update(self, payloads: Sequence[Any]) -> None:
        self.teacher_state.update(concat_matches([p[0] for p in payloads]))
        self.student_state.update(concat_matches([p[1] for p in payloads]))

    def state_dict(self) -> dict[str, Any]:
        as_tensor = lambda state: torch.frombuffer(bytearray(state.to_bytes()), dtype=torch.uint8)  # noqa: E731
        return {"teacher_state": as_tensor(self.teacher_state), "student_state": as_tensor(self.student_state)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load = lambda key: DetGainState.from_bytes(state[key].numpy().tobytes(), source=f"checkpoint {key}")  # noqa: E731
        self.teacher_state, self.student_state = load("teacher_state"), load("student_state")
