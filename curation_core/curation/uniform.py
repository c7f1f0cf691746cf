"""``uniform``: b of the B images drawn uniformly at random, the control for every other method.

It sees as many distinct images per step as the scored methods (B) and trains on as many (b), but
chooses blindly: a gain of a scored method over ``uniform`` is the value of its scores.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from curation_core.curation.base import ScoredBatch, Selector


class UniformSelector(Selector):
    """Scores are i.i.d. U(0, 1) from the step's generator, so top-b is a uniform subset of b.

    Every rank draws the scores of the whole super-batch and keeps its share, so the choice does not
    depend on the number of ranks."""

    name = "uniform"

    def score(self, batch: ScoredBatch) -> tuple[np.ndarray, Any]:
        return batch.rng.random(batch.total)[batch.offset:batch.offset + len(batch)], None
