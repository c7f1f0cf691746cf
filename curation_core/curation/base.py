"""What every selection method sees and provides.

A *super-batch* is B augmented training images identified by their stream position (``keys``: unique and
ascending, since the same image can occur twice when a super-batch wraps an epoch). The curator runs the
models the method ``needs`` on it and hands the outputs over as a ``ScoredBatch``; the method returns one
score per image, higher = more useful to train on now.

Methods with running state (DetGain) split scoring from updating, so that under DDP each rank scores its
share against the same state and every rank then applies the same update from the gathered payloads
(``Selector.update`` receives the payloads of all ranks in rank order).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

Detections = list[dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Needs:
    """Forward passes a method needs on the super-batch (each costs a forward pass of B images)."""

    student_losses: bool = False
    teacher_losses: bool = False
    student_detections: bool = False
    teacher_detections: bool = False

    @property
    def teacher(self) -> bool:
        return self.teacher_losses or self.teacher_detections

    @property
    def student(self) -> bool:
        return self.student_losses or self.student_detections


@dataclass(frozen=True)
class ScoredBatch:
    """Model outputs on the (share of the) super-batch a process scores.

    Attributes
    ----------
    keys : (n,) int64 stream positions, strictly ascending.
    image_ids : (n,) int64 COCO image ids (may repeat).
    targets : n training targets on the CPU (``boxes`` (m, 4) float32 xyxy absolute pixels of the
        augmented view, ``labels`` (m,) int64 in 1..K, ...).
    category_ids : (K,) category ids; label ``l`` is ``category_ids[l - 1]``.
    student_losses, teacher_losses : (n,) float64 per-image training loss, or None.
    student_detections, teacher_detections : n dicts (``boxes`` xyxy, ``scores``, ``labels`` 1..K), or None.
    rng : the selection's generator for this step (seeded by (seed, step): identical on every rank).
    offset, total : this share is images ``offset .. offset + n - 1`` of a super-batch of ``total``
        (default: the whole super-batch).
    """

    keys: np.ndarray
    image_ids: np.ndarray
    targets: Sequence[dict[str, torch.Tensor]]
    category_ids: Sequence[int]
    rng: np.random.Generator
    offset: int = 0
    total: int | None = None
    student_losses: np.ndarray | None = None
    teacher_losses: np.ndarray | None = None
    student_detections: Detections | None = None
    teacher_detections: Detections | None = None

    def __len__(self) -> int:
        return int(self.keys.size)

    def __post_init__(self) -> None:
        if self.total is None:  # the whole super-batch
            object.__setattr__(self, "total", int(self.keys.size))


class Selector(abc.ABC):
    """One selection method. Subclasses set ``name`` and ``needs`` and implement ``score``.

    ``score`` returns ``(scores, payload)``: (n,) float64 finite scores (higher = more useful) and
    whatever ``update`` needs (None for stateless methods). ``update`` then receives the payloads of
    every rank (one in a single process), in rank order, and must leave identical state on every rank.
    """

    name: str = ""
    needs: Needs = Needs()

    @abc.abstractmethod
    def score(self, batch: ScoredBatch) -> tuple[np.ndarray, Any]:
        """(n,) scores of the share and the payload for ``update`` (see the class docstring)."""

    def update(self, payloads: Sequence[Any]) -> None:
        """Fold the scored super-batch into the running state (default: stateless, nothing to do)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Plain types and tensors only (stored in ``checkpoint.pt``, loaded with ``weights_only``)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (default: stateless, nothing to restore)."""
        return None


def finite_scores(name: str, scores: np.ndarray) -> np.ndarray:
    """``scores`` as float64 with NaN (undefined, e.g. AP of an image without boxes) replaced by 0.

    Infinite values are an error: ``ValueError`` naming the method and the position.
    """
    out = np.asarray(scores, dtype=np.float64).copy()
    out[np.isnan(out)] = 0.0
    bad = np.flatnonzero(~np.isfinite(out))
    if bad.size:
        raise ValueError(f"{name} selector produced a non-finite score {out[bad[0]]} at super-batch index {int(bad[0])}.")
    return out
