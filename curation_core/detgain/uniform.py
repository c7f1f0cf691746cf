"""DetGain under a uniform score prior: the closed form of Sun et al., arXiv 2511.14197.

Model. For one (category c, IoU threshold t) the set D holds T true and F false positives, A = T + F,
and N_c ground-truth boxes. Non-interpolated AP is the mean precision at the true positives,
``AP = (1/N_c) * sum_i tp_i / a_i`` (``tp_i`` / ``a_i``: true positives / detections ranked at or above
true positive i). Scores of D are taken as spread uniformly over [0, 1]: ``T(1-u)`` true and ``F(1-u)``
false positives score above u. A new detection of score s

1. adds, if it is a true positive, its own precision point ``(T(1-s) + 1) / (A(1-s) + 1)``;
2. moves every true positive below it (score u < s, density T du) from ``tp/a`` to ``(tp+1)/(a+1)``
   (true positive: a gain of ``fp / (a(a+1))``) or to ``tp/(a+1)`` (false positive: a loss of
   ``tp / (a(a+1))``); integrating with ``a = A(1-u)`` gives ``(1/A) ln((A+1) / (A(1-s)+1))`` times
   ``T F / A`` or ``T^2 / A``.

Hence, per detection,

    TP:  (1/N_c) * [ (T(1-s)+1) / (A(1-s)+1) + (T F / A^2) * ln((A+1) / (A(1-s)+1)) ]
    FP: -(T^2 / (N_c A^2)) * ln((A+1) / (A(1-s)+1))

and the DetGain of an image is the mean, over the (category, threshold) pairs of the mAP, of the sum of
these terms over its detections (each detection taken alone against D; ignored detections add 0).

Degenerate cases, handled explicitly:
- ``A = 0`` (D has no detection of the pair): a true positive adds ``1 / N_c`` (its own precision 1),
  a false positive adds 0 (no true positive to lower).
- ``N_c = 0`` in D: the image brings the category's first ground truth; ``N_c`` is then the image's own
  count of boxes (the category joins the mean). With no ground truth on either side the category is not
  part of COCO's mean and contributes 0.
- Scores are clipped to [0, 1], the support of the prior.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from curation_core.detgain.records import DetectionTable, batch_jobs


def _terms(tp: ArrayLike, fp: ArrayLike, num_gt: ArrayLike, score: ArrayLike) -> tuple[np.ndarray, ...]:
    t, f, n = (np.asarray(v, dtype=np.float64) for v in (tp, fp, num_gt))
    s = np.clip(np.asarray(score, dtype=np.float64), 0.0, 1.0)
    a = t + f
    rest = a * (1.0 - s) + 1.0
    log_term = np.log1p(a * s / rest)  # ln((A+1) / (A(1-s)+1)), accurate for small A s
    safe_a2 = np.where(a > 0, a * a, 1.0)
    inv_n = np.divide(1.0, n, out=np.zeros(np.broadcast(n, a).shape), where=n > 0)
    return t, f, s, rest, log_term, safe_a2, inv_n


def uniform_tp_gain(tp: ArrayLike, fp: ArrayLike, num_gt: ArrayLike, score: ArrayLike) -> np.ndarray:
    """AP change of inserting one true positive of score ``score`` (closed form, uniform prior).

    Parameters broadcast: ``tp`` / ``fp`` true / false positives of D (T, F >= 0, may be weighted),
    ``num_gt`` ground-truth boxes N_c (0 -> 0), ``score`` in [0, 1] (clipped). Returns float64.
    """
    t, f, s, rest, log_term, safe_a2, inv_n = _terms(tp, fp, num_gt, score)
    own = (t * (1.0 - s) + 1.0) / rest
    return inv_n * (own + (t * f / safe_a2) * log_term)


def uniform_fp_gain(tp: ArrayLike, fp: ArrayLike, num_gt: ArrayLike, score: ArrayLike) -> np.ndarray:
    """AP change of inserting one false positive of score ``score`` (closed form, uniform prior); <= 0."""
    t, f, s, rest, log_term, safe_a2, inv_n = _terms(tp, fp, num_gt, score)
    return -inv_n * (t * t / safe_a2) * log_term


def uniform_gains(vocabulary: np.ndarray, num_gt: np.ndarray, tp_total: np.ndarray, fp_total: np.ndarray,
                  batch: DetectionTable, *, leave_one_out: bool = False) -> np.ndarray:
    """DetGain of every image of ``batch`` under the uniform prior.

    Parameters
    ----------
    vocabulary : (K,) int64 category ids of the statistics of D.
    num_gt : (K,) float64 ground-truth boxes of D per category.
    tp_total, fp_total : (K, T) float64 true / false positives of D per (category, threshold).
    batch : the images to score.
    leave_one_out : the statistics describe D + the batch (every batch image inside): each image is
        scored against the statistics minus its own detections and boxes (D = all other images).

    Returns
    -------
    (N,) float64 in batch image order; higher = the image raises mAP more.
    """
    jobs = batch_jobs(batch, vocabulary)
    n_t = batch.iou_thresholds.size
    zeros = np.zeros((1, n_t))
    d_tp = np.vstack([tp_total, zeros])[jobs.job_row]
    d_fp = np.vstack([fp_total, zeros])[jobs.job_row]
    d_gt = np.append(num_gt, 0.0)[jobs.job_row]
    if leave_one_out:
        d_tp = d_tp - _job_totals(jobs.tp, jobs.det_job, d_tp.shape)
        d_fp = d_fp - _job_totals(jobs.fp, jobs.det_job, d_fp.shape)
        d_gt = d_gt - jobs.job_gt
    n_use = np.where(d_gt > 0, d_gt, jobs.job_gt)
    j = jobs.det_job
    t, f, s, rest, log_term, safe_a2, inv_n = _terms(d_tp[j], d_fp[j], n_use[j, None], jobs.score[:, None])
    log_term /= safe_a2  # shared by both terms: ln(...) / A^2
    gains = jobs.tp * ((t * (1.0 - s) + 1.0) / rest + t * f * log_term)
    gains -= jobs.fp * (t * t * log_term)
    gains *= inv_n
    job_sum = np.bincount(j, weights=gains.sum(axis=1), minlength=jobs.job_row.size)
    image_sum = np.bincount(jobs.job_image, weights=job_sum, minlength=batch.num_images)
    if leave_one_out:  # D + x is the whole set: its categories with ground truth
        count = np.full(batch.num_images, float(np.count_nonzero(num_gt > 0)))
    else:
        new = (d_gt <= 0) & (jobs.job_gt > 0)
        count = np.count_nonzero(num_gt > 0) + np.bincount(jobs.job_image, weights=new, minlength=batch.num_images)
    return np.divide(image_sum, count * n_t, out=np.zeros(batch.num_images), where=count > 0)


def _job_totals(flags: np.ndarray, det_job: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(J, T) number of flagged detections per job and threshold."""
    n_jobs, n_t = shape
    idx = (det_job[:, None] * n_t + np.arange(n_t)).ravel()
    return np.bincount(idx, weights=flags.ravel(), minlength=n_jobs * n_t).reshape(n_jobs, n_t)
