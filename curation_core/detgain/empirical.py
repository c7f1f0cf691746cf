"""DetGain against the empirical score distributions of D (an extension of arXiv 2511.14197).

The uniform closed form (``uniform``) assumes the scores of D spread evenly over [0, 1]. Real detectors
put most false positives at low scores and most true positives high, so the counts above a score and
the precision of the true positives below it are far from ``T(1-s)`` and ``A(1-s)``. This estimator
keeps the same first-order model (each detection of x inserted alone; non-interpolated precision at the
true positives) but reads every quantity from D's actual score histograms per (category, threshold):

- ``TA(s)``, ``FA(s)``: true / false positives of D scoring above s (half of its own bin);
- own precision of a new true positive: ``(TA + t_x + 1) / (TA + FA + t_x + f_x + 1)`` where ``t_x`` /
  ``f_x`` count x's own true / false positives ranked before it (x's detections interact exactly);
- shift of the true positives below s: ``sum fp_i / (a_i (a_i + 1))`` (new true positive) or
  ``-sum tp_i / (a_i (a_i + 1))`` (new false positive), prefix sums over the bins.

With ``dS`` the summed change of ``N_c * AP`` and ``n_x`` x's ground-truth boxes of the category, the new
AP is ``(N_c AP_D + dS) / (N_c + n_x)``: the recall denominator moves too, so an image with boxes the
model misses lowers mAP. ``AP_D`` is read from the same histograms (area under the precision envelope).
Categories gaining their first or losing their last box enter or leave the mean (``aggregate``).

Histogram bins split [0, 1] evenly (scores are clipped to it); all counts may be weighted (decayed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from curation_core.detgain.aggregate import image_map_changes
from curation_core.detgain.records import DetectionTable, batch_jobs

#: Histogram resolution over [0, 1] used unless a state is configured otherwise.
DEFAULT_NUM_BINS = 1024
#: Quantities kept per bin: TP above, FP above, TP-insertion shift below, FP-insertion shift below.
_TA, _FA, _GB, _HB = range(4)


@dataclass(frozen=True)
class ScoreHistogram:
    """Weighted score histograms of the true and false positives of a set D.

    Attributes
    ----------
    category_ids : (K,) int64 vocabulary.
    tp, fp : (K, B, T) float64; bin b holds scores in [b/B, (b+1)/B) (the last bin includes 1).
    num_gt : (K,) float64 non-ignored ground-truth boxes per category.
    """

    category_ids: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    num_gt: np.ndarray

    @property
    def num_bins(self) -> int:
        return int(self.tp.shape[1])


def score_bins(score: np.ndarray, num_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin index (int64) and position ``u = clip(s, 0, 1) * B`` (float64) of every score."""
    u = np.clip(np.asarray(score, dtype=np.float64), 0.0, 1.0) * num_bins
    return np.minimum(u.astype(np.int64), num_bins - 1), u


def histogram_counts(table: DetectionTable, num_bins: int, image_weight: np.ndarray | None = None,
                     vocabulary: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K, B, T) TP and FP histograms and (K,) ground truth of ``table`` over ``vocabulary``.

    ``image_weight`` (N,) weights every image row (default 1). ``vocabulary`` must contain the table's
    categories (default: the table's own).
    """
    vocab = table.category_ids if vocabulary is None else vocabulary
    rows = np.searchsorted(vocab, table.category_ids)
    n_cat, n_t = vocab.size, table.iou_thresholds.size
    w_img = np.ones(table.num_images) if image_weight is None else np.asarray(image_weight, dtype=np.float64)
    bins, _ = score_bins(table.det_score, num_bins)
    cell = (rows[table.det_category] * num_bins + bins)[:, None] * n_t + np.arange(n_t)
    w = w_img[table.det_image][:, None]
    size = n_cat * num_bins * n_t
    tp = np.bincount(cell.ravel(), weights=(table.det_true_positive * w).ravel(), minlength=size)
    fp = np.bincount(cell.ravel(), weights=(table.false_positive() * w).ravel(), minlength=size)
    gt = np.bincount(rows[table.gt_category], weights=table.gt_count * w_img[table.gt_image], minlength=n_cat)
    return tp.reshape(n_cat, num_bins, n_t), fp.reshape(n_cat, num_bins, n_t), gt


@dataclass(frozen=True)
class EmpiricalTables:
    """Per-bin lookup tables of a ``ScoreHistogram`` (built once, read by every query).

    A detection is placed in the middle of its bin: of D's detections sharing its bin, half rank above.

    Attributes
    ----------
    category_ids : (K,) int64.
    at_bin : ((K + 1) * B, 4 * T) float64; row ``c * B + b`` holds, for a new detection in bin b, the
        T values of each of: TP above, FP above, and the shift sums over the true positives below for a
        new TP and for a new FP. Category K is empty (categories unknown to D).
    num_gt : (K + 1,) float64.
    ap : (K, T) float64 AP of D read from the histograms; NaN where D has no ground truth.
    """

    category_ids: np.ndarray
    at_bin: np.ndarray
    num_gt: np.ndarray
    ap: np.ndarray

    @property
    def num_bins(self) -> int:
        return self.at_bin.shape[0] // (self.category_ids.size + 1)


def empirical_tables(hist: ScoreHistogram) -> EmpiricalTables:
    """Prefix sums of ``hist`` at the middle of every bin, and the histogram AP of D."""
    tp, fp = np.maximum(hist.tp, 0.0), np.maximum(hist.fp, 0.0)  # decayed sums may drift below 0
    n_cat, n_bins, n_t = tp.shape
    zero = np.zeros((n_cat, 1, n_t))
    # Bins above bin b (higher scores) rank first.
    ta = np.concatenate([np.cumsum(tp[:, :0:-1], axis=1)[:, ::-1], zero], axis=1)  # strictly above b
    fa = np.concatenate([np.cumsum(fp[:, :0:-1], axis=1)[:, ::-1], zero], axis=1)
    # A true positive of bin b sees, on average, the bins above plus half its own bin (itself included).
    tp_mid = ta + (tp + 1.0) / 2.0
    fp_mid = fa + fp / 2.0
    denom = (tp_mid + fp_mid) * (tp_mid + fp_mid + 1.0)
    g_bin = tp * fp_mid / denom  # a new TP above them raises these TPs' precision
    h_bin = tp * tp_mid / denom  # a new FP above them lowers it
    g_below = np.cumsum(g_bin, axis=1) - g_bin
    h_below = np.cumsum(h_bin, axis=1) - h_bin
    table = np.zeros((n_cat + 1, n_bins, 4, n_t))
    table[:n_cat, :, _TA] = ta + tp / 2.0
    table[:n_cat, :, _FA] = fa + fp / 2.0
    table[:n_cat, :, _GB] = g_below + g_bin / 2.0
    table[:n_cat, :, _HB] = h_below + h_bin / 2.0
    # AP of D: precision after each bin, made non-increasing towards lower scores, weighted by its TPs.
    t_incl, a_incl = ta + tp, ta + tp + fa + fp
    prec = np.divide(t_incl, a_incl, out=np.zeros_like(t_incl), where=a_incl > 0)
    envelope = np.maximum.accumulate(prec, axis=1)  # bins 0..b rank at or below bin b
    num_gt = np.asarray(hist.num_gt, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.clip((tp * envelope).sum(axis=1) / num_gt[:, None], 0.0, 1.0)
    ap = np.where(num_gt[:, None] > 0, ap, np.nan)
    return EmpiricalTables(category_ids=hist.category_ids, at_bin=table.reshape(-1, 4 * n_t),
                           num_gt=np.append(num_gt, 0.0), ap=ap)


def empirical_gains(tables: EmpiricalTables, batch: DetectionTable, *, leave_one_out: bool = False) -> np.ndarray:
    """DetGain of every image of ``batch`` against the empirical score distributions of D.

    Parameters
    ----------
    tables : ``empirical_tables`` of D's histograms.
    batch : the images to score (categories unknown to D count as absent from D).
    leave_one_out : ``tables`` describe D + the batch; each image is scored as removed from them
        (``mAP(all) - mAP(all but x)``).

    Returns
    -------
    (N,) float64 in batch image order; higher = the image raises mAP more.
    """
    jobs = batch_jobs(batch, tables.category_ids)
    n_t, n_bins, n_jobs = batch.iou_thresholds.size, tables.num_bins, jobs.job_row.size
    bins, _ = score_bins(jobs.score, n_bins)
    at = np.take(tables.at_bin, jobs.job_row[jobs.det_job] * n_bins + bins, axis=0).reshape(-1, 4, n_t)
    t_above, f_above = at[:, _TA], at[:, _FA]
    tx, fx = jobs.tp_before, jobs.fp_before
    if leave_one_out:  # D = all but x: drop x's detections above and (its half of) the detection itself
        t_above = np.maximum(t_above - tx - 0.5 * jobs.tp, 0.0)
        f_above = np.maximum(f_above - fx - 0.5 * jobs.fp, 0.0)
    t_own = t_above + (tx + 1.0)
    change = jobs.tp * (t_own / (t_own + f_above + fx) + at[:, _GB])
    change -= jobs.fp * at[:, _HB]
    d_sum = _job_sums(change, jobs.det_job, n_jobs)
    ap = np.vstack([tables.ap, np.full((1, n_t), np.nan)])[jobs.job_row]
    n_gt = tables.num_gt[jobs.job_row][:, None]
    mass = np.where(np.isfinite(ap), ap, 0.0) * n_gt  # N_c * AP
    gt_x = jobs.job_gt[:, None].astype(np.float64)
    cat_ap = tables.ap.mean(axis=1)  # NaN rows stay NaN: no ground truth
    with np.errstate(invalid="ignore", divide="ignore"):
        if leave_one_out:
            rest = n_gt - gt_x
            new_ap = np.where(rest > 0, np.clip((mass - d_sum) / rest, 0.0, 1.0), np.nan).mean(axis=1)
            return 0.0 - image_map_changes(cat_ap, jobs.job_image, jobs.job_row, new_ap, batch.num_images)
        total = n_gt + gt_x
        new_ap = np.where(total > 0, np.clip((mass + d_sum) / total, 0.0, 1.0), np.nan).mean(axis=1)
    base = np.concatenate([cat_ap, np.full(batch.category_ids.size, np.nan)])
    return image_map_changes(base, jobs.job_image, jobs.job_slot, new_ap, batch.num_images)


def _job_sums(values: np.ndarray, det_job: np.ndarray, n_jobs: int) -> np.ndarray:
    """(J, T) sums of the (D, T) ``values`` per job (``det_job`` ascending; jobs may have no rows)."""
    out = np.zeros((n_jobs, values.shape[1]))
    if det_job.size:
        starts = np.flatnonzero(np.diff(det_job, prepend=-1))
        out[det_job[starts]] = np.add.reduceat(values, starts, axis=0)
    return out
