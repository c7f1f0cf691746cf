"""Loss-based baselines.

- ``loss``: the highest per-image student training loss (hard-example mining, "loss" in the DetGain paper).
- ``loss_learnability``: student loss minus teacher loss (RHO-LOSS, Mindermann et al. 2022, and JEST's
  learnability, Evans et al. 2024): high where the student errs but a stronger model does not, which
  discounts images that are hard for everyone (label noise, ambiguous objects).

The losses are the detector's own training losses per image
(``curation_core.losses.per_image.score_forward``), on the same augmented view the student trains on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from curation_core.curation.base import Needs, ScoredBatch, Selector, finite_scores


class LossSelector(Selector):
    """Score = student loss (higher = harder for the student)."""

    name = "loss"
    needs = Needs(student_losses=True)

    def score(self, batch: ScoredBatch) -> tuple[np.ndarray, Any]:
        assert batch.student_losses is not None
        return finite_scores(self.name, batch.student_losses), None


class LossLearnabilitySelector(Selector):
    """Score = student loss - teacher loss (higher = more left for the student to learn)."""

    name = "loss_learnability"
    needs = Needs(student_losses=True, teacher_losses=True)

    def score(self, batch: ScoredBatch) -> tuple[np.ndarray, Any]:
        assert batch.student_losses is not None and batch.teacher_losses is not None
        return finite_scores(self.name, batch.student_losses - batch.teacher_losses), None
