"""DetGain and learnability scores of images: one entry point over the estimators.

Sun et al., arXiv 2511.14197: the DetGain of image x for model f on the set D is
``delta(x; f, D) = mAP(f; D + {x}) - mAP(f; D)``, and the learnability of x is
``s(x) = delta(x; teacher, D) - delta(x; student, D)``: higher = the teacher gains more from x than the
student does, so x still holds something the student can learn.

Estimators (``estimator=``):

- ``"exact"``: pycocotools' ``stats[0]`` on both sets, computed incrementally (``exact``).
- ``"uniform"``: the paper's closed form under a uniform score prior (``uniform``).
- ``"empirical"``: the same first-order change read from D's actual score histograms, with the change of
  the ground-truth count (``empirical``).
- ``"envelope"`` (online only, ``ONLINE_ESTIMATORS``): pycocotools' 101-point AP change read at the
  sampled recalls from D's precision envelope (``envelope``).

Two settings: *online* (``detgain``, ``learnability``): new images scored against a ``DetGainState``
holding D; *leave-one-out* (``leave_one_out_detgain``, ``leave_one_out_learnability``): every image of
one evaluated set scored with D = all other images, i.e. ``mAP(all) - mAP(all but x)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from curation_core.detgain.empirical import (
    DEFAULT_NUM_BINS,
    ScoreHistogram,
    empirical_gains,
    empirical_tables,
    histogram_counts,
)
from curation_core.detgain.envelope import envelope_gains
from curation_core.detgain.exact import exact_insert_gains, exact_leave_one_out
from curation_core.detgain.records import DetectionTable, select_images, table_from_matches
from curation_core.detgain.state import DetGainState
from curation_core.detgain.uniform import uniform_gains

#: Valid values of ``estimator=`` in both settings.
ESTIMATORS: tuple[str, ...] = ("exact", "uniform", "empirical")
#: Valid values of ``estimator=`` online (``detgain``, ``learnability``).
ONLINE_ESTIMATORS: tuple[str, ...] = (*ESTIMATORS, "envelope")
#: Detections per chunk when the uniform / empirical estimators score a large set (bounds memory).
CHUNK_DETECTIONS = 1 << 17


def _check_estimator(fn: str, estimator: str, valid: tuple[str, ...] = ESTIMATORS) -> None:
    if estimator not in valid:
        raise ValueError(f"{fn}(estimator=) expects one of {', '.join(map(repr, valid))}; got {estimator!r}.")


def _image_chunks(table: DetectionTable) -> Iterator[tuple[slice, DetectionTable]]:
    """Consecutive image ranges of ``table`` holding about ``CHUNK_DETECTIONS`` detections each."""
    if table.num_detections <= CHUNK_DETECTIONS:
        yield slice(0, table.num_images), table
        return
    per_image = np.bincount(table.det_image, minlength=table.num_images)
    chunk_of = (np.cumsum(per_image) - per_image) // CHUNK_DETECTIONS
    edges = np.concatenate([[0], np.flatnonzero(np.diff(chunk_of)) + 1, [table.num_images]])
    for s, e in zip(edges[:-1], edges[1:], strict=True):
        yield slice(int(s), int(e)), select_images(table, np.arange(s, e))


def detgain(state: DetGainState, matches: Any, *, estimator: str = "exact") -> np.ndarray:
    """DetGain of every image of ``matches``, each added alone to the set D held by ``state``.

    Parameters
    ----------
    state : statistics of the model's predictions on D.
    matches : ``DatasetMatches`` of the same model on the new images (same IoU thresholds as ``state``).
    estimator : ``"exact"``, ``"uniform"``, ``"empirical"`` or ``"envelope"``.

    Returns
    -------
    (N,) float64 in ``matches.image_ids`` order: ``mAP(D + {x}) - mAP(D)``; higher = x raises mAP more.
    Categories absent from D count as without ground truth there (x may bring their first boxes).
    """
    _check_estimator("detgain", estimator, ONLINE_ESTIMATORS)
    batch = table_from_matches(matches, fn="detgain")
    if not np.array_equal(batch.iou_thresholds, state.iou_thresholds):
        raise ValueError(f"detgain(matches=) expects the state's IoU thresholds {state.iou_thresholds.tolist()}; "
                         f"got {batch.iou_thresholds.tolist()}.")
    if estimator == "exact":
        return exact_insert_gains(state.exact_index(), batch)
    if estimator == "envelope":
        return envelope_gains(state.envelope_index(), batch)
    out = np.empty(batch.num_images)
    for rows, part in _image_chunks(batch):
        if estimator == "uniform":
            tp, fp = state.totals()
            out[rows] = uniform_gains(state.category_ids, state.num_gt(), tp, fp, part)
        else:
            out[rows] = empirical_gains(state.empirical_tables(), part)
    return out


def leave_one_out_detgain(matches: Any, *, estimator: str = "exact", num_bins: int = DEFAULT_NUM_BINS) -> np.ndarray:
    """DetGain of every image of ``matches`` for D = all its other images: ``mAP(all) - mAP(all but x)``.

    With ``estimator="exact"`` this is exactly pycocotools' ``stats[0]`` of both sets (a set without any
    ground truth counts as mAP 0). ``num_bins``: histogram resolution of the empirical estimator.

    Returns
    -------
    (N,) float64 in ``matches.image_ids`` order; higher = the image raises mAP more.
    """
    _check_estimator("leave_one_out_detgain", estimator)
    table = table_from_matches(matches, fn="leave_one_out_detgain")
    if estimator == "exact":
        return exact_leave_one_out(table)
    if estimator == "uniform":
        tp = np.zeros((table.category_ids.size, table.iou_thresholds.size))
        fp = np.zeros_like(tp)
        np.add.at(tp, table.det_category, table.det_true_positive)
        np.add.at(fp, table.det_category, table.false_positive())
        num_gt = table.num_gt().astype(np.float64)
    else:
        tables = empirical_tables(ScoreHistogram(table.category_ids, *histogram_counts(table, num_bins)))
    out = np.empty(table.num_images)
    for rows, part in _image_chunks(table):
        if estimator == "uniform":
            out[rows] = uniform_gains(table.category_ids, num_gt, tp, fp, part, leave_one_out=True)
        else:
            out[rows] = empirical_gains(tables, part, leave_one_out=True)
    return out


@dataclass(frozen=True)
class Learnability:
    """Per-image DetGain of teacher and student and the learnability score.

    Attributes
    ----------
    image_ids : (N,) int64.
    delta_teacher, delta_student : (N,) float64 DetGain of each model.
    learnability : (N,) float64 ``delta_teacher - delta_student``; higher = more left to learn.
    """

    image_ids: np.ndarray
    delta_teacher: np.ndarray
    delta_student: np.ndarray
    learnability: np.ndarray

    def ranked(self) -> Learnability:
        """The same scores sorted by learnability descending, ties by ascending image id."""
        order = np.lexsort((self.image_ids, -self.learnability))
        return Learnability(self.image_ids[order], self.delta_teacher[order], self.delta_student[order],
                            self.learnability[order])


def _pair(fn: str, teacher_matches: Any, student_matches: Any) -> np.ndarray:
    ids_t, ids_s = np.asarray(teacher_matches.image_ids), np.asarray(student_matches.image_ids)
    if not np.array_equal(ids_t, ids_s):
        raise ValueError(f"{fn}() expects teacher and student matches of the same images; got {ids_t.size} and "
                         f"{ids_s.size} images that differ.")
    return ids_t.astype(np.int64)


def learnability(teacher_state: DetGainState, student_state: DetGainState, teacher_matches: Any,
                 student_matches: Any, *, estimator: str = "exact") -> Learnability:
    """Learnability of new images: teacher's and student's DetGain against their own states.

    ``teacher_matches`` and ``student_matches`` are the two models' ``DatasetMatches`` on the same images.
    """
    ids = _pair("learnability", teacher_matches, student_matches)
    d_t = detgain(teacher_state, teacher_matches, estimator=estimator)
    d_s = detgain(student_state, student_matches, estimator=estimator)
    return Learnability(ids, d_t, d_s, d_t - d_s)


def leave_one_out_learnability(teacher_matches: Any, student_matches: Any, *, estimator: str = "exact",
                               num_bins: int = DEFAULT_NUM_BINS) -> Learnability:
    """Learnability of every image of one evaluated set, each with D = all other images."""
    ids = _pair("leave_one_out_learnability", teacher_matches, student_matches)
    d_t = leave_one_out_detgain(teacher_matches, estimator=estimator, num_bins=num_bins)
    d_s = leave_one_out_detgain(student_matches, estimator=estimator, num_bins=num_bins)
    return Learnability(ids, d_t, d_s, d_t - d_s)
