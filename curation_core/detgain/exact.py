"""Exact DetGain: the change of COCO mAP (pycocotools' ``stats[0]``) when one image joins or leaves a set.

Sun et al., "Online Data Curation for Object Detection via Marginal Contributions to Dataset-level
Average Precision", arXiv 2511.14197, define the DetGain of image x for model f as
``mAP(f; D + {x}) - mAP(f; D)``. This module computes it exactly, as pycocotools would on both sets,
but incrementally:

1. ``build_exact_index`` orders the detections of every category as pycocotools' ``accumulate`` does
   (score descending; equal scores by ascending image id, then rank within the image) and keeps, per
   (category, IoU threshold), the sequence of true positives with the number of false positives ranked
   before each, plus cumulative TP / FP counts at every position of the category order.
2. Adding image x inserts its detections into that order (``searchsorted`` with the tie rule); a true
   positive of D ranked after ``a`` true and ``b`` false positives of x becomes the ``(k + a)``-th true
   positive with ``f + b`` false positives before it; x's own true positives get their rank and count
   from the cumulative arrays. Removing x (leave-one-out) subtracts instead.
3. The new sequences, with the ground-truth count changed by x's boxes, go through pycocotools' 101-point
   interpolation (``interpolation.sampled_average_precision``). Only the pairs x touches are recomputed,
   and within a pair only the true positives ranked after x's first detection: the head keeps its
   precisions and is read through a sparse table of range maxima. Scoring an image costs
   O(sum over touched pairs of (tail length + 101)), not O(|D|).

Ignored detections (matched to crowd boxes) never change a precision point and are dropped. Categories
that gain their first or lose their last ground-truth box enter or leave the mean (``aggregate``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from curation_core.detgain.aggregate import APSummary, image_map_changes
from curation_core.detgain.interpolation import (
    RangeMax,
    offsets_of,
    precision_at,
    sampled_average_precision,
    segment_ranges,
)
from curation_core.detgain.records import DetectionTable, job_index, vocabulary_index

#: Work per chunk of (image, category) jobs, in sequence elements and sampled ranks (bounds memory).
CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class ExactIndex(APSummary):
    """Per-category order and per-(category, threshold) true-positive sequences of a set D.

    Category index ``K`` (one past the vocabulary) is an empty category: images bringing a category
    absent from D are scored against it.

    Attributes
    ----------
    category_ids : (K,) int64 vocabulary.
    cat_offsets : (K + 2,) int64, category c occupies ``[cat_offsets[c], cat_offsets[c + 1])`` of the
        category order.
    order_neg_score, order_image_id : (M,) float64 / int64, ``-score`` and image id in category order.
    row_position : (M,) int64, position within its category order of every row of the source table.
    cum_tp, cum_fp : (M + K + 1, T) int32, TP / FP counts strictly before position g of category c, at
        row ``cat_offsets[c] + c + g`` (g = 0 .. n_c).
    pair_offsets : ((K + 1) * T + 1,) int64, true-positive sequence of pair ``c * T + t``.
    tp_position, tp_fp_before, tp_image : (L,) int64, per true positive: position in its category
        order, false positives before it, source image row.
    tp_range_max : range maxima of the (L,) precisions at the true positives (heads reused as is).
    num_gt : (K + 1,) int64, non-ignored ground truth per category (0 for the empty category).
    ap : (K, T) float64, AP of D (NaN: no ground truth); ``category_ap`` its mean over thresholds.
    """

    category_ids: np.ndarray
    cat_offsets: np.ndarray
    order_neg_score: np.ndarray
    order_image_id: np.ndarray
    row_position: np.ndarray
    cum_tp: np.ndarray
    cum_fp: np.ndarray
    pair_offsets: np.ndarray
    tp_position: np.ndarray
    tp_fp_before: np.ndarray
    tp_image: np.ndarray
    tp_range_max: RangeMax
    num_gt: np.ndarray
    ap: np.ndarray

    def cum_row(self, category: np.ndarray, position: np.ndarray) -> np.ndarray:
        """Row of ``cum_tp`` / ``cum_fp`` for (category index, position in its order)."""
        return self.cat_offsets[category] + category + position


def build_exact_index(table: DetectionTable) -> ExactIndex:
    """Index the detections of ``table`` (the set D) for exact incremental mAP changes."""
    n_cat, n_t = table.category_ids.size, table.iou_thresholds.size
    order = np.lexsort((table.det_rank, table.det_image, -table.det_score, table.det_category))
    cat_sorted = table.det_category[order]
    cat_offsets = offsets_of(np.bincount(cat_sorted, minlength=n_cat + 1))
    row_position = np.empty(order.size, dtype=np.int64)
    row_position[order] = np.arange(order.size) - cat_offsets[cat_sorted]
    tp = table.det_true_positive[order]
    fp = table.false_positive()[order]
    sizes = np.diff(cat_offsets)
    src, seg = segment_ranges(cat_offsets[:-1], sizes + 1)  # n_c + 1 rows per category
    cum_tp, cum_fp = (_exclusive_rows(a, src, cat_offsets[:-1][seg]) for a in (tp, fp))
    rows, thr = np.nonzero(tp)
    pair = cat_sorted[rows] * n_t + thr
    by_pair = np.argsort(pair, kind="stable")
    rows, thr, pair = rows[by_pair], thr[by_pair], pair[by_pair]
    position = rows - cat_offsets[cat_sorted[rows]]
    tp_fp_before = cum_fp[cat_offsets[cat_sorted[rows]] + cat_sorted[rows] + position, thr].astype(np.int64)
    pair_offsets = offsets_of(np.bincount(pair, minlength=(n_cat + 1) * n_t))
    num_gt = np.append(table.num_gt(), 0)
    lengths = np.diff(pair_offsets)[: n_cat * n_t]
    k = np.arange(pair.size) - pair_offsets[pair] + 1
    precision = precision_at(k, tp_fp_before)
    pair_gt = np.repeat(num_gt[:n_cat], n_t)
    ap = sampled_average_precision(precision[: pair_offsets[n_cat * n_t]], lengths, np.maximum(pair_gt, 1))
    ap = np.where(pair_gt > 0, ap, np.nan).reshape(n_cat, n_t)
    return ExactIndex(
        category_ids=table.category_ids, cat_offsets=cat_offsets, order_neg_score=-table.det_score[order],
        order_image_id=table.image_ids[table.det_image[order]], row_position=row_position,
        cum_tp=cum_tp, cum_fp=cum_fp, pair_offsets=pair_offsets, tp_position=position,
        tp_fp_before=tp_fp_before, tp_image=table.det_image[order][rows],
        tp_range_max=RangeMax.build(precision, int(lengths.max(initial=1))), num_gt=num_gt, ap=ap,
    )


def _exclusive_rows(flags: np.ndarray, src: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Counts of ``flags`` rows in ``[base, src)``: exclusive cumulative counts within each category."""
    padded = np.zeros((flags.shape[0] + 1, flags.shape[1]), dtype=np.int32)  # half the memory of int64
    np.cumsum(flags, axis=0, dtype=np.int32, out=padded[1:])
    return padded[src] - padded[base]


def _insert_positions(index: ExactIndex, category: np.ndarray, neg_score: np.ndarray,
                      image_id: np.ndarray) -> np.ndarray:
    """Number of D's detections ranked before each new detection (pycocotools' tie rule).

    Equal scores rank by ascending image id; a new detection whose image id D already holds ranks
    after D's detections of that image.
    """
    out = np.zeros(category.size, dtype=np.int64)
    for c in np.unique(category):
        sel = np.flatnonzero(category == c)
        lo, hi = index.cat_offsets[c], index.cat_offsets[c + 1]
        scores = index.order_neg_score[lo:hi]
        left = np.searchsorted(scores, neg_score[sel], side="left")
        right = np.searchsorted(scores, neg_score[sel], side="right")
        for i in np.flatnonzero(right > left):  # ties: rare with real scores
            ids = index.order_image_id[lo + left[i]: lo + right[i]]
            left[i] += np.searchsorted(ids, image_id[sel[i]], side="right")
        out[sel] = left
    return out


def _pairs_ap(index: ExactIndex, job_category: np.ndarray, job_image: np.ndarray, new_gt: np.ndarray,
              det_job: np.ndarray, det_position: np.ndarray, tp: np.ndarray, fp: np.ndarray,
              insert: bool) -> np.ndarray:
    """(J, T) AP of every job's category after inserting (or removing) the job's detections.

    ``det_*`` rows are sorted by (job, rank); ``det_position`` is the insertion position (insert) or
    the detection's own position (remove) in its category order of D. D's true positives ranked before
    the job's first detection keep their precision (the *head*, read through ``index.tp_range_max``);
    only the rest (the *tail*) is rebuilt.
    """
    n_t = index.num_thresholds
    n_pairs = job_category.size * n_t
    pair_cat = np.repeat(job_category, n_t)
    pair_thr = np.tile(np.arange(n_t), job_category.size)
    d_pair = pair_cat * n_t + pair_thr  # D's pair of chunk pair j*T+t
    d_start, d_len = index.pair_offsets[d_pair], np.diff(index.pair_offsets)[d_pair]
    tp_rows, tp_thr = np.nonzero(tp)
    fp_rows, fp_thr = np.nonzero(fp)
    tp_pc, fp_pc = det_job[tp_rows] * n_t + tp_thr, det_job[fp_rows] * n_t + fp_thr
    x_len = np.bincount(tp_pc, minlength=n_pairs)
    span = int(index.cat_offsets[-1]) + 2
    tp_keys = np.sort(tp_pc * span + det_position[tp_rows])
    fp_keys = np.sort(fp_pc * span + det_position[fp_rows])
    # Head: D's true positives before the job's first detection of the pair.
    first = np.full(n_pairs, span, dtype=np.int64)
    for keys in (fp_keys, tp_keys):
        pc, at = np.unique(keys // span, return_index=True)
        first[pc] = np.minimum(first[pc], keys[at] % span)
    touched = first < span
    head = d_len.copy()
    head[touched] = index.cum_tp[index.cum_row(pair_cat[touched], first[touched]), pair_thr[touched]]
    # Tail: D's true positives from there on, shifted by the job's detections ranked before them.
    idx, seg = segment_ranges(d_start + head, d_len - head)
    keys = seg * span + index.tp_position[idx]
    side = "right" if insert else "left"  # insert: x goes before D's detection at its position
    a = np.searchsorted(tp_keys, keys, side=side) - offsets_of(x_len)[seg]
    b = np.searchsorted(fp_keys, keys, side=side) - offsets_of(np.bincount(fp_pc, minlength=n_pairs))[seg]
    k = idx - d_start[seg] + 1
    f = index.tp_fp_before[idx]
    if insert:
        row = index.cum_row(job_category[det_job[tp_rows]], det_position[tp_rows])
        x_tp_before, x_fp_before = (_within_job_before(m, det_job) for m in (tp, fp))
        k_x = index.cum_tp[row, tp_thr] + x_tp_before[tp_rows, tp_thr] + 1
        f_x = index.cum_fp[row, tp_thr] + x_fp_before[tp_rows, tp_thr]
        k_new, f_new, pc = np.concatenate([k + a, k_x]), np.concatenate([f + b, f_x]), np.concatenate([seg, tp_pc])
        new_len = d_len + x_len
    else:
        keep = index.tp_image[idx] != np.repeat(job_image, n_t)[seg]
        k_new, f_new, pc = (k - a)[keep], (f - b)[keep], seg[keep]
        new_len = d_len - x_len
    tail_len = new_len - head
    precision = np.empty(int(tail_len.sum()), dtype=np.float64)
    precision[offsets_of(tail_len)[pc] + k_new - head[pc] - 1] = precision_at(k_new, f_new)
    pair_gt = np.repeat(new_gt, n_t)
    ap = sampled_average_precision(precision, tail_len, np.maximum(pair_gt, 1),
                                   prefix=(index.tp_range_max, d_start, head))
    return np.where(pair_gt > 0, ap, np.nan).reshape(job_category.size, n_t)


def _within_job_before(flags: np.ndarray, det_job: np.ndarray) -> np.ndarray:
    """(D, T) int64: flagged rows of the same job ranked before each row (rows sorted by job, rank)."""
    cs = np.cumsum(flags, axis=0, dtype=np.int64) - flags
    first = np.searchsorted(det_job, det_job, side="left")
    return cs - cs[first]


def _chunks(cost: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous job ranges whose summed cost stays near ``CHUNK_ELEMENTS`` (a job is never split)."""
    chunk_of = (np.cumsum(cost) - cost) // CHUNK_ELEMENTS
    edges = np.concatenate([[0], np.flatnonzero(np.diff(chunk_of)) + 1, [cost.size]])
    return [(int(s), int(e)) for s, e in zip(edges[:-1], edges[1:], strict=True) if e > s]


def _run_jobs(index: ExactIndex, table: DetectionTable, job_image: np.ndarray, job_category: np.ndarray,
              job_new_gt: np.ndarray, det_job: np.ndarray, det_position: np.ndarray, insert: bool) -> np.ndarray:
    """(J,) category AP after each job's change, computed chunk by chunk."""
    n_t = index.num_thresholds
    det_order = np.argsort(det_job * (int(table.det_rank.max(initial=0)) + 1) + table.det_rank, kind="stable")
    sorted_job = det_job[det_order]
    tp, fp = table.det_true_positive[det_order], table.false_positive()[det_order]
    lengths = np.diff(index.pair_offsets)[: (index.cat_offsets.size - 1) * n_t].reshape(-1, n_t)
    # Memory of a job: at most its sequence lengths (tail) plus one sampled rank per true positive, <= 101.
    cost = (lengths + np.minimum(lengths, 101))[job_category].sum(axis=1) + n_t
    out = np.empty(job_category.size, dtype=np.float64)
    for s, e in _chunks(cost):
        lo, hi = np.searchsorted(sorted_job, [s, e], side="left")
        ap = _pairs_ap(index, job_category[s:e], job_image[s:e], job_new_gt[s:e], sorted_job[lo:hi] - s,
                       det_position[det_order[lo:hi]], tp[lo:hi], fp[lo:hi], insert)
        out[s:e] = ap.mean(axis=1)
    return out


def exact_insert_gains(index: ExactIndex, batch: DetectionTable) -> np.ndarray:
    """DetGain of every image of ``batch``, each added alone to the set D indexed by ``index``.

    Parameters
    ----------
    index : ``build_exact_index`` of D.
    batch : the new images (any categories; those unknown to D count as absent from D).

    Returns
    -------
    (N,) float64 in batch image order: ``mAP(D + {x}) - mAP(D)``, higher = x raises mAP more.
    """
    vocab = index.category_ids
    to_index = vocabulary_index(vocab, batch.category_ids)  # unknown: the empty category K
    job_image, job_cat, job_gt, det_job = job_index(batch)
    cat = to_index[job_cat]
    position = _insert_positions(index, to_index[batch.det_category], -batch.det_score,
                                 batch.image_ids[batch.det_image])
    new_ap = _run_jobs(index, batch, job_image, cat, index.num_gt[cat] + job_gt, det_job, position, insert=True)
    # Categories unknown to D have no ground truth there; each gets its own slot after D's categories.
    base = np.concatenate([index.category_ap, np.full(batch.category_ids.size, np.nan)])
    slot = np.where(cat < vocab.size, cat, vocab.size + job_cat)
    return image_map_changes(base, job_image, slot, new_ap, batch.num_images)


def exact_leave_one_out(table: DetectionTable, index: ExactIndex | None = None) -> np.ndarray:
    """Leave-one-out DetGain of every image of ``table``: ``mAP(all) - mAP(all but x)``.

    Equals the DetGain of x for D = all other images, exactly as pycocotools' ``stats[0]`` computes both
    mAPs (0 for a set without ground truth). Image ids of ``table`` must be unique.

    Returns
    -------
    (N,) float64 in ``table.image_ids`` order; higher = the image raises mAP more.
    """
    if index is None:
        index = build_exact_index(table)
    job_image, job_cat, job_gt, det_job = job_index(table)
    new_gt = index.num_gt[job_cat] - job_gt
    new_ap = _run_jobs(index, table, job_image, job_cat, new_gt, det_job, index.row_position, insert=False)
    return 0.0 - image_map_changes(index.category_ap, job_image, job_cat, new_ap, table.num_images)  # no -0.0
