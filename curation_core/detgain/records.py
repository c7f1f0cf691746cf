"""Flat detection records in a category vocabulary: the common input of the DetGain estimators.

``curation_core.matching.DatasetMatches`` describes one evaluated set over its own categories. DetGain
compares sets that do not share their categories (a new image brings a class the running statistics
have never seen) and keeps ground truth sparse (many images, many classes), so the estimators work on a
``DetectionTable``: detections and non-zero ground-truth counts indexed into a shared, ascending
vocabulary of category ids. Image rows are in *tie order*: pycocotools ranks equal scores of one
category by ascending image id (then by rank within the image), so ``det_image`` order is that order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DetectionTable:
    """Detections and ground-truth counts of a set of images, categories indexed into a vocabulary.

    Attributes
    ----------
    category_ids : (K,) int64, ascending vocabulary of category ids.
    iou_thresholds : (T,) float64.
    image_ids : (N,) int64, image ids in tie order (ascending; an id may repeat in running statistics,
        where the same image was seen twice: earlier rows rank first).
    det_image : (M,) int64, row into ``image_ids``.
    det_category : (M,) int64, index into ``category_ids``.
    det_score : (M,) float64, higher = more confident.
    det_rank : (M,) int64, rank within its (image, category), 0 = highest score (pycocotools order).
    det_true_positive, det_ignored : (M, T) bool; false positive = ``~tp & ~ignored``.
    gt_image, gt_category, gt_count : (G,) int64, non-zero counts of non-ignored ground-truth boxes per
        (image row, category index); each pair appears once.
    """

    category_ids: np.ndarray
    iou_thresholds: np.ndarray
    image_ids: np.ndarray
    det_image: np.ndarray
    det_category: np.ndarray
    det_score: np.ndarray
    det_rank: np.ndarray
    det_true_positive: np.ndarray
    det_ignored: np.ndarray
    gt_image: np.ndarray
    gt_category: np.ndarray
    gt_count: np.ndarray

    @property
    def num_images(self) -> int:
        return int(self.image_ids.size)

    @property
    def num_detections(self) -> int:
        return int(self.det_score.size)

    def num_gt(self) -> np.ndarray:
        """(K,) int64: non-ignored ground-truth boxes per category."""
        return np.bincount(self.gt_category, weights=self.gt_count, minlength=self.category_ids.size).astype(np.int64)

    def false_positive(self) -> np.ndarray:
        """(M, T) bool."""
        return ~self.det_true_positive & ~self.det_ignored


_FIELDS = ("image_ids", "category_ids", "iou_thresholds", "det_image", "det_category", "det_score", "det_rank",
           "det_true_positive", "det_ignored", "gt_count")


def check_matches(matches: Any, fn: str) -> None:
    """Raise ``ValueError`` unless ``matches`` has the fields and shapes of ``DatasetMatches``."""
    missing = [name for name in _FIELDS if not hasattr(matches, name)]
    if missing:
        raise ValueError(f"{fn}(matches=) expects a DatasetMatches; got {type(matches).__name__} without {missing}.")
    n, k, t = matches.image_ids.size, matches.category_ids.size, matches.iou_thresholds.size
    m = matches.det_score.shape[0]
    shapes = {"det_image": (m,), "det_category": (m,), "det_rank": (m,), "det_true_positive": (m, t),
              "det_ignored": (m, t), "gt_count": (n, k)}
    for name, shape in shapes.items():
        if np.shape(getattr(matches, name)) != shape:
            raise ValueError(f"{fn}(matches=) expects {name} of shape {shape}; got {np.shape(getattr(matches, name))}.")
    if matches.det_score.ndim != 1 or not np.isfinite(matches.det_score).all():
        raise ValueError(f"{fn}(matches=) expects det_score to be 1-D and finite.")
    if np.any(np.diff(matches.image_ids) <= 0) or np.any(np.diff(matches.category_ids) <= 0):
        raise ValueError(f"{fn}(matches=) expects strictly ascending image_ids and category_ids.")
    if m and (matches.det_image.min() < 0 or matches.det_image.max() >= n
              or matches.det_category.min() < 0 or matches.det_category.max() >= k):
        raise ValueError(f"{fn}(matches=) has det_image / det_category indices out of range.")
    if np.any(matches.det_true_positive & matches.det_ignored):
        raise ValueError(f"{fn}(matches=) has detections that are both true positive and ignored.")


def table_from_matches(matches: Any, *, fn: str = "table_from_matches",
                       vocabulary: np.ndarray | None = None) -> DetectionTable:
    """A ``DetectionTable`` of a ``DatasetMatches`` over ``vocabulary`` (default: its own categories).

    ``vocabulary`` must be ascending and contain every category of ``matches``.
    """
    check_matches(matches, fn)
    vocab = np.asarray(matches.category_ids if vocabulary is None else vocabulary, dtype=np.int64)
    to_vocab = np.searchsorted(vocab, matches.category_ids)
    if to_vocab.size and (to_vocab.max() >= vocab.size or np.any(vocab[to_vocab] != matches.category_ids)):
        raise ValueError(f"{fn}(vocabulary=) misses categories of the matches.")
    gi, gk = np.nonzero(np.asarray(matches.gt_count) > 0)
    return DetectionTable(
        category_ids=vocab,
        iou_thresholds=np.asarray(matches.iou_thresholds, dtype=np.float64),
        image_ids=np.asarray(matches.image_ids, dtype=np.int64),
        det_image=np.asarray(matches.det_image, dtype=np.int64),
        det_category=to_vocab[np.asarray(matches.det_category, dtype=np.int64)],
        det_score=np.asarray(matches.det_score, dtype=np.float64),
        det_rank=np.asarray(matches.det_rank, dtype=np.int64),
        det_true_positive=np.asarray(matches.det_true_positive, dtype=bool),
        det_ignored=np.asarray(matches.det_ignored, dtype=bool),
        gt_image=gi.astype(np.int64),
        gt_category=to_vocab[gk].astype(np.int64),
        gt_count=np.asarray(matches.gt_count)[gi, gk].astype(np.int64),
    )


def job_index(table: DetectionTable) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The (image row, category) pairs an image touches: it has detections or ground truth there.

    Returns
    -------
    job_image, job_category : (J,) int64, sorted by (image row, category).
    job_gt : (J,) int64, the image's non-ignored ground-truth count in that category.
    det_job : (M,) int64, the job of every detection.
    """
    k = max(table.category_ids.size, 1)
    det_key = table.det_image * k + table.det_category
    gt_key = table.gt_image * k + table.gt_category
    keys, inverse = np.unique(np.concatenate([det_key, gt_key]), return_inverse=True)
    inverse = inverse.ravel()
    job_gt = np.zeros(keys.size, dtype=np.int64)
    np.add.at(job_gt, inverse[det_key.size:], table.gt_count)
    return keys // k, keys % k, job_gt, inverse[: det_key.size]


def vocabulary_index(vocabulary: np.ndarray, category_ids: np.ndarray) -> np.ndarray:
    """Index of every id of ``category_ids`` in ``vocabulary``; ``vocabulary.size`` for an unknown id."""
    pos = np.searchsorted(vocabulary, category_ids)
    inside = pos < vocabulary.size
    known = np.zeros(pos.size, dtype=bool)
    known[inside] = vocabulary[pos[inside]] == category_ids[inside]
    return np.where(known, pos, vocabulary.size).astype(np.int64)


@dataclass(frozen=True)
class BatchJobs:
    """The detections of a batch grouped by (image, category) job, in rank order within a job.

    Attributes
    ----------
    job_image : (J,) int64 image row of the batch.
    job_row : (J,) int64 row of the job's category in statistics over ``vocabulary`` (``K`` = unknown).
    job_slot : (J,) int64 distinct slot per category for aggregation: ``job_row`` when known, else
        ``K + batch category index`` (every unknown category is its own slot).
    job_gt : (J,) int64 the image's non-ignored ground truth in that category.
    det_job : (D,) int64 job of each detection, ascending; the arrays below follow this order.
    score : (D,) float64; tp, fp : (D, T) bool; tp_before, fp_before : (D, T) int32, true / false
        positives of the same job ranked before the detection.
    """

    job_image: np.ndarray
    job_row: np.ndarray
    job_slot: np.ndarray
    job_gt: np.ndarray
    det_job: np.ndarray
    score: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    tp_before: np.ndarray
    fp_before: np.ndarray


#: Largest (category x image) key space grouped with a dense mask instead of a sort.
_DENSE_KEYS = 1 << 22


def batch_jobs(batch: DetectionTable, vocabulary: np.ndarray) -> BatchJobs:
    """Group ``batch`` by (image, category) against statistics over ``vocabulary``.

    Jobs are ordered category-major, the order ``match_dataset`` already emits its rows in, so the sort
    below is nearly free on its output.
    """
    n_img = max(batch.num_images, 1)
    rank_span = int(batch.det_rank.max(initial=0)) + 1
    det_key = batch.det_category * n_img + batch.det_image
    order = np.argsort(det_key * rank_span + batch.det_rank, kind="stable")
    in_order = bool(np.all(order[1:] > order[:-1]))
    key = det_key if in_order else det_key[order]
    gt_key = batch.gt_category * n_img + batch.gt_image
    space = batch.category_ids.size * n_img
    if space <= _DENSE_KEYS:
        mask = np.zeros(space, dtype=bool)
        mask[key] = True
        mask[gt_key] = True
        job_keys = np.flatnonzero(mask)
        job_of = np.cumsum(mask, dtype=np.int64) - 1
        det_job, gt_job = job_of[key], job_of[gt_key]
    else:
        job_keys = np.union1d(key, gt_key)
        det_job, gt_job = np.searchsorted(job_keys, key), np.searchsorted(job_keys, gt_key)
    job_gt = np.zeros(job_keys.size, dtype=np.int64)
    job_gt[gt_job] = batch.gt_count
    flags = np.concatenate([batch.det_true_positive, batch.false_positive()], axis=1)  # (D, 2T)
    if not in_order:
        flags = flags[order]
    first = np.ones(key.size, dtype=bool)
    first[1:] = key[1:] != key[:-1]
    start_row = np.maximum.accumulate(np.where(first, np.arange(key.size), 0))
    before = np.cumsum(flags, axis=0, dtype=np.int32)  # int32 accumulates several times faster than int64
    before -= flags
    before -= before[start_row]
    n_t = batch.iou_thresholds.size
    job_cat = job_keys // n_img
    row = vocabulary_index(vocabulary, batch.category_ids)[job_cat]
    return BatchJobs(
        job_image=job_keys % n_img, job_row=row,
        job_slot=np.where(row < vocabulary.size, row, vocabulary.size + job_cat), job_gt=job_gt, det_job=det_job,
        score=batch.det_score if in_order else batch.det_score[order], tp=flags[:, :n_t], fp=flags[:, n_t:],
        tp_before=before[:, :n_t], fp_before=before[:, n_t:],
    )


def select_images(table: DetectionTable, rows: np.ndarray) -> DetectionTable:
    """The sub-table of the image rows ``rows`` (ascending int64), renumbered 0..len(rows)-1."""
    rows = np.asarray(rows, dtype=np.int64)
    new_row = np.full(table.num_images, -1, dtype=np.int64)
    new_row[rows] = np.arange(rows.size)
    det = np.flatnonzero(new_row[table.det_image] >= 0)
    gt = np.flatnonzero(new_row[table.gt_image] >= 0)
    return DetectionTable(
        category_ids=table.category_ids, iou_thresholds=table.iou_thresholds, image_ids=table.image_ids[rows],
        det_image=new_row[table.det_image[det]], det_category=table.det_category[det],
        det_score=table.det_score[det], det_rank=table.det_rank[det],
        det_true_positive=table.det_true_positive[det], det_ignored=table.det_ignored[det],
        gt_image=new_row[table.gt_image[gt]], gt_category=table.gt_category[gt], gt_count=table.gt_count[gt],
    )


def concat_tables(tables: list[DetectionTable], vocabulary: np.ndarray, iou_thresholds: np.ndarray) -> DetectionTable:
    """One table over ``vocabulary`` holding every image of ``tables``, image rows in tie order.

    Rows are sorted by image id; equal ids (the same image seen again) keep the order of ``tables``.
    """
    n_t = iou_thresholds.size
    image_ids = np.concatenate([np.zeros(0, np.int64)] + [t.image_ids for t in tables])
    seq = np.concatenate([np.zeros(0, np.int64)] + [np.full(t.num_images, i) for i, t in enumerate(tables)])
    order = np.lexsort((seq, image_ids))
    new_row = np.empty(order.size, dtype=np.int64)
    new_row[order] = np.arange(order.size)
    first = np.cumsum([0] + [t.num_images for t in tables])

    def cat(name: str, dtype: Any, shape: tuple[int, ...] = ()) -> np.ndarray:
        return np.concatenate([np.zeros((0, *shape), dtype)] + [getattr(t, name) for t in tables])

    def rows(name: str) -> np.ndarray:
        return new_row[np.concatenate([np.zeros(0, np.int64)] + [getattr(t, name) + first[i] for i, t in enumerate(tables)])]

    def cats(name: str) -> np.ndarray:
        return np.concatenate([np.zeros(0, np.int64)] + [vocabulary_index(vocabulary, t.category_ids)[getattr(t, name)]
                                                         for t in tables])

    return DetectionTable(
        category_ids=vocabulary, iou_thresholds=iou_thresholds, image_ids=image_ids[order],
        det_image=rows("det_image"), det_category=cats("det_category"), det_score=cat("det_score", np.float64),
        det_rank=cat("det_rank", np.int64), det_true_positive=cat("det_true_positive", bool, (n_t,)),
        det_ignored=cat("det_ignored", bool, (n_t,)), gt_image=rows("gt_image"), gt_category=cats("gt_category"),
        gt_count=cat("gt_count", np.int64),
    )
