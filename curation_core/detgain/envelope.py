"""DetGain read from the precision envelope of D at pycocotools' 101 recall samples (online scoring).

The exact estimator (``exact``) rebuilds, for every (image, category, IoU threshold) pair a new image x
touches, the precisions of all of D's true positives ranked after x's first detection: O(|D|) per pair.
The closed forms (``uniform``, ``empirical``) are fast but change the *non-interpolated* AP (mean
precision at the true positives), and on real detectors that change ranks images differently from
pycocotools' interpolated, recall-sampled AP: the recall denominator moves the sampled ranks, a true
positive moves every later sample one rank up the envelope, the last sample reached comes and goes. This
estimator keeps those effects and costs O(x's detections) per pair, reading precomputed envelope terms.

For one pair, D's true positives i = 1..K have precision ``p_i = i / n_i`` (``n_i``: detections at or
above i, ignored ones left out); ``A(i)`` is the first j >= i where the envelope ``max_{j >= i} p_j`` is
attained. With N' = N_c + n_x ground-truth boxes, recall sample r (r = 0..100) reads the new ranking at
rank ``R_r``, the first rank with ``R_r / N' >= r / 100`` (``interpolation.first_reaching_rank``).

1. x's detections cut D's ranks into *runs*; in a run, a of x's true positives and c of its detections
   rank above D's true positives, which move to new ranks ``i + a`` and precision ``(i + a) / (n_i + c)``.
2. A sample falling in a run reads D's true positive ``k = R_r - a`` through its envelope point A(k):
   ``p_A + (a - c p_A) / n_A`` (the first-order move, exact where ``n_A < 4 c``). Its sum over the
   samples of a run is a difference of prefix sums of ``p_A, 1 / n_A, p_A / n_A`` over r, one row of
   101 per (pair, N', a): no work per sample.
3. A sample falling on one of x's own true positives reads the larger of the best own precision from
   there on and D's moved envelope after it.

``AP' = sum / 101``; the base AP of D is pycocotools' own. Approximations: the envelope of the new
ranking at a sample is taken at D's envelope point of the sample's rank, moved with the run of the
sample (not with the run the point lies in, and without the max over later runs that x's true
positives may lift), and the first-order move. When x has only ground truth in a category the change
is exact. The index costs one sort of D's detections per state update. Counts are integers: a decayed
state is refused, as by ``exact``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from curation_core.detgain.aggregate import APSummary, image_map_changes
from curation_core.detgain.interpolation import (
    first_reaching_rank,
    offsets_of,
    precision_at,
    sampled_average_precision,
    segment_ranges,
)
from curation_core.detgain.records import BatchJobs, DetectionTable, batch_jobs
from curation_core.matching import COCO_RECALL_THRESHOLDS

#: Recall thresholds of pycocotools (0:0.01:1).
NUM_RECALLS = 101
#: Below ``n_A < EXACT_MOVE * c`` the moved precision is computed exactly instead of to first order.
EXACT_MOVE = 4.0


@dataclass(frozen=True)
class EnvelopeIndex(APSummary):
    """Category order and per-(threshold, category) envelope of D's true positives (``build_envelope_index``).

    Pairs are threshold-major: pair ``t * (K + 1) + c``; category index K is empty (categories unknown to
    D). ``span`` separates the pairs in the search keys ``pair * span + position``.

    Attributes
    ----------
    category_ids : (K,) int64 vocabulary.
    cat_offsets : (K + 2,) int64; category c occupies ``[cat_offsets[c], cat_offsets[c + 1])`` of ``order_key``.
    order_key : (M,) complex128, ``-score + 1j * (image row * R + rank)`` of D's detections in category
        order (score descending, then pycocotools' tie rule); ``image_ids`` (N,) the rows' ids, ascending.
    rank_span : R, one more than the largest rank within an (image, category).
    tp_key, ignored_key : sorted int64 ``pair * span + position`` of D's true positives / ignored
        detections; ``tp_offsets`` / ``ignored_offsets`` ((K + 1) * T + 1,) their pair offsets.
    env_rank, env_fp : (L + P,) int64, per true positive (padded with one slot after each pair, at
        ``tp_offsets[pair] + pair + i - 1`` for the i-th), rank and false positives before it of the
        envelope point A(i); 0 in the padding slot.
    env_terms : (L + P, 3) float64, ``p_A, 1 / n_A, p_A / n_A`` of A(i) (0 in the padding slot).
    env_size : (L + P,) float64, ``n_A`` (inf in the padding slot).
    num_gt : (K + 1,) int64 non-ignored ground truth (0 for the empty category).
    ap : (K, T) float64 pycocotools' AP of D; NaN without ground truth.
    """

    category_ids: np.ndarray
    cat_offsets: np.ndarray
    order_key: np.ndarray
    image_ids: np.ndarray
    rank_span: int
    span: int
    tp_key: np.ndarray
    tp_offsets: np.ndarray
    ignored_key: np.ndarray
    ignored_offsets: np.ndarray
    env_rank: np.ndarray
    env_fp: np.ndarray
    env_terms: np.ndarray
    env_size: np.ndarray
    num_gt: np.ndarray
    ap: np.ndarray


def build_envelope_index(table: DetectionTable) -> EnvelopeIndex:
    """Index the detections of ``table`` (the set D, image rows in tie order) for ``envelope_gains``.

    One sort of D's detections (O(M log M)) and one of its true positives; no (M, T) array is built.
    """
    n_cat, n_t = table.category_ids.size, table.iou_thresholds.size
    n_pairs = (n_cat + 1) * n_t
    rank_span = int(table.det_rank.max(initial=0)) + 1
    # Category order: score descending, then image row and rank (complex numbers sort lexicographically).
    key = -table.det_score + 1j * (table.det_image * rank_span + table.det_rank).astype(np.float64)
    order = np.argsort(key)
    category = table.det_category[order]
    if n_cat < np.iinfo(np.uint16).max:  # a 16-bit key sorts stably by radix, in linear time
        category = category.astype(np.uint16)
    order = order[np.argsort(category, kind="stable")]
    cat_sorted = table.det_category[order]
    cat_offsets = offsets_of(np.bincount(cat_sorted, minlength=n_cat + 1))
    position = np.empty(order.size, dtype=np.int64)  # of every table row, within its category order
    position[order] = np.arange(order.size) - cat_offsets[cat_sorted]
    span = int(np.diff(cat_offsets).max(initial=0)) + 2
    tp_key, tp_offsets = _pair_keys(table, table.det_true_positive, position, span, n_pairs)
    ignored_key, ignored_offsets = _pair_keys(table, table.det_ignored, position, span, n_pairs)
    pair = np.repeat(np.arange(n_pairs), np.diff(tp_offsets))
    rank = np.arange(pair.size) - tp_offsets[pair] + 1
    ignored_before = np.searchsorted(ignored_key, tp_key) - ignored_offsets[pair]
    fp_before = tp_key - pair * span - (rank - 1) - ignored_before
    precision = precision_at(rank, fp_before)
    env_rank, env_fp, env_terms, env_size = _envelope_points(precision, rank, fp_before, pair, n_pairs)
    num_gt = np.append(table.num_gt(), 0)
    pair_gt = np.tile(num_gt, n_t)
    ap = sampled_average_precision(precision, np.diff(tp_offsets), np.maximum(pair_gt, 1))
    ap = np.where(pair_gt > 0, ap, np.nan).reshape(n_t, n_cat + 1)[:, :n_cat].T.copy()
    return EnvelopeIndex(
        category_ids=table.category_ids, cat_offsets=cat_offsets, order_key=key[order], image_ids=table.image_ids,
        rank_span=rank_span, span=span, tp_key=tp_key, tp_offsets=tp_offsets, ignored_key=ignored_key,
        ignored_offsets=ignored_offsets, env_rank=env_rank, env_fp=env_fp, env_terms=env_terms, env_size=env_size,
        num_gt=num_gt, ap=ap,
    )


def _pair_keys(table: DetectionTable, flags: np.ndarray, position: np.ndarray, span: int,
               n_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``pair * span + position`` of the flagged (detection, threshold) cells, and pair offsets."""
    cell = np.flatnonzero(flags)  # faster than a 2-D nonzero
    rows, thr = np.divmod(cell, table.iou_thresholds.size)
    pair = thr * (table.category_ids.size + 1) + table.det_category[rows]
    keys = np.sort(pair * span + position[rows])
    return keys, offsets_of(np.bincount(keys // span, minlength=n_pairs))


def _envelope_points(precision: np.ndarray, rank: np.ndarray, fp_before: np.ndarray, pair: np.ndarray,
                     n_pairs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per true positive, its envelope point A(i) (the first j >= i attaining the suffix maximum).

    Returns, in the padded layout (one zero slot after each pair): rank and false positives of A(i) (int64),
    the (., 3) terms ``p, 1 / n, p / n`` of A(i) (``n`` = its rank + false positives) and ``n`` (float64,
    inf in the padding).
    """
    # Segmented suffix maximum: precisions lie in [0, 1], so 2 * (n_pairs - pair) keeps pairs apart.
    key = precision + 2.0 * (n_pairs - pair)
    suffix = np.maximum.accumulate(key[::-1])[::-1]
    at_max = np.where(key >= suffix, np.arange(key.size), key.size)
    point = np.minimum.accumulate(at_max[::-1])[::-1]
    slot = np.arange(key.size) + pair  # one padding slot per earlier pair
    size = key.size + n_pairs
    env_rank, env_fp = np.zeros(size, dtype=np.int64), np.zeros(size, dtype=np.int64)
    env_rank[slot], env_fp[slot] = rank[point], fp_before[point]
    n = (rank[point] + fp_before[point]).astype(np.float64)
    env_terms = np.zeros((size, 3))
    env_terms[slot] = np.stack([precision[point], 1.0 / n, precision[point] / n], axis=1)
    env_size = np.full(size, np.inf)
    env_size[slot] = n
    return env_rank, env_fp, env_terms, env_size


def _insert_positions(index: EnvelopeIndex, category: np.ndarray, score: np.ndarray,
                      image_id: np.ndarray) -> np.ndarray:
    """Number of D's detections of its category ranked before each new detection (equal categories adjacent).

    Equal scores rank by ascending image id; a new detection whose image id D already holds ranks after
    D's detections of that image (``exact``'s rule).
    """
    rows_before = np.searchsorted(index.image_ids, image_id, side="right")  # D rows with id <= the new id
    key = -score + 1j * (rows_before * index.rank_span - 0.5)
    out = np.empty(category.size, dtype=np.int64)
    starts = np.flatnonzero(np.diff(category, prepend=-1))
    ends = np.append(starts[1:], category.size)[: starts.size]  # no detection: no range
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        lo, hi = index.cat_offsets[category[s]], index.cat_offsets[category[s] + 1]
        out[s:e] = np.searchsorted(index.order_key[lo:hi], key[s:e])
    return out


def envelope_gains(index: EnvelopeIndex, batch: DetectionTable) -> np.ndarray:
    """DetGain of every image of ``batch``, each added alone to the set D indexed by ``index``.

    Parameters
    ----------
    index : ``build_envelope_index`` of D (same IoU thresholds as ``batch``).
    batch : the new images (categories unknown to D count as absent from D).

    Returns
    -------
    (N,) float64 in batch image order: ``mAP(D + {x}) - mAP(D)`` (module docstring), higher = x raises
    mAP more.
    """
    jobs = batch_jobs(batch, index.category_ids)
    det_cat = jobs.job_row[jobs.det_job]
    position = _insert_positions(index, det_cat, jobs.score, batch.image_ids[jobs.job_image[jobs.det_job]])
    n_t, n_jobs = index.num_thresholds, jobs.job_row.size
    n_new = np.tile(index.num_gt[jobs.job_row] + jobs.job_gt, n_t)  # pair t * J + job
    q_sum = _sampled_sums(index, jobs, position, n_new)
    ap = np.where(n_new > 0, q_sum / NUM_RECALLS, np.nan).reshape(n_t, n_jobs).mean(axis=0)
    base = np.concatenate([index.category_ap, np.full(batch.category_ids.size, np.nan)])
    return image_map_changes(base, jobs.job_image, jobs.job_slot, ap, batch.num_images)


def _sampled_sums(index: EnvelopeIndex, jobs: BatchJobs, position: np.ndarray, n_new: np.ndarray) -> np.ndarray:
    """(T * J,) sum over the recall samples of the new envelope, per pair ``t * J + job``."""
    n_t, n_jobs = index.num_thresholds, jobs.job_row.size
    n_pairs = n_t * n_jobs
    d_pair = np.repeat(np.arange(n_t) * (index.category_ids.size + 1), n_jobs) + np.tile(jobs.job_row, n_t)
    d_len = np.diff(index.tp_offsets)[d_pair]
    # Entries: x's true / false positives per pair in rank order (the transposed nonzero is pair-sorted).
    thr, rows = np.nonzero((jobs.tp | jobs.fp).T)
    pair = thr * n_jobs + jobs.det_job[rows]
    query = d_pair[pair] * index.span + position[rows]
    start = np.searchsorted(index.tp_key, query) - index.tp_offsets[d_pair[pair]]  # D's TPs ranked before
    is_tp = jobs.tp[rows, thr]
    shift_tp = jobs.tp_before[rows, thr] + is_tp  # x's TPs / detections up to and including the entry
    shift_all = shift_tp + jobs.fp_before[rows, thr] + ~is_tp
    # Groups of entries with the same (pair, start): D's ranks between two groups form one run.
    key = pair * index.span + start
    last = _group_ends(key)
    samples = _Samples.of(n_new)
    total, own_key, best_own = _point_sums(index, samples, pair, start, is_tp, shift_tp, shift_all, last, query,
                                           position[rows], d_pair, d_len, n_pairs)
    keep = np.flatnonzero(last & (start < d_len[pair]))  # groups with D's true positives after them
    run_pair = pair[keep]
    run_off = offsets_of(np.bincount(run_pair, minlength=n_pairs) + 1)  # a head run (no shift) per pair
    slot = np.arange(keep.size) + run_pair + 1
    run_start = np.zeros(run_off[-1], dtype=np.int64)
    run_tp, run_all = np.zeros_like(run_start), np.zeros_like(run_start)
    run_start[slot], run_tp[slot], run_all[slot] = start[keep], shift_tp[keep], shift_all[keep]
    of_run = np.repeat(np.arange(n_pairs), np.diff(run_off))
    run_end = _next(run_start)
    run_end[run_off[1:] - 1] = d_len
    # The best precision of x's own true positives ranked after each run: a floor of its samples' envelope.
    after = np.searchsorted(own_key, of_run * index.span + run_end)
    floor = np.append(best_own, 0.0)[after]
    floor[np.append(own_key // index.span, n_pairs)[after] != of_run] = 0.0
    total += _run_sums(index, samples, of_run, run_start, run_end, run_tp, run_all, floor, d_pair, d_len, n_pairs)
    return total


@dataclass(frozen=True)
class _Samples:
    """The recall samples of every pair: N' ground-truth boxes (0: none on either side, no sample).

    Sample r reads the first rank ``R_r`` with ``R_r / N' >= r / 100``; ``rank[u]`` (U, 101) holds them
    for the distinct counts, ``u`` (P,) the count of each pair.
    """

    n_new: np.ndarray
    rank: np.ndarray
    u: np.ndarray

    @classmethod
    def of(cls, n_new: np.ndarray) -> _Samples:
        counts, inverse = np.unique(np.maximum(n_new, 1), return_inverse=True)
        return cls(n_new=n_new.astype(np.float64), rank=first_reaching_rank(counts), u=inverse.ravel())

    def at_most(self, pair: np.ndarray, new_rank: np.ndarray) -> np.ndarray:
        """Number of samples of ``pair`` with ``R_r <= new_rank``: those with ``r / 100 <= new_rank / N'``.

        The same float64 recall pycocotools compares, so the count agrees with ``rank`` exactly.
        """
        n = self.n_new[pair]
        with np.errstate(invalid="ignore", divide="ignore"):
            found = np.searchsorted(COCO_RECALL_THRESHOLDS, new_rank / n, side="right")
        return np.where((new_rank >= 1) & (n > 0), found, 0)


def _point_sums(index: EnvelopeIndex, samples: _Samples, pair: np.ndarray, start: np.ndarray, is_tp: np.ndarray,
                shift_tp: np.ndarray, shift_all: np.ndarray, last: np.ndarray, query: np.ndarray,
                position: np.ndarray, d_pair: np.ndarray, d_len: np.ndarray,
                n_pairs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pair, the samples falling on x's own true positives: the larger of the best own precision from
    there on and D's moved envelope after it. Also the own true positives' keys ``pair * span + start``
    (ascending) and that best own precision from each on."""
    own = np.flatnonzero(is_tp)
    own_pair = pair[own]
    ignored = np.searchsorted(index.ignored_key, query[own]) - index.ignored_offsets[d_pair[own_pair]]
    rank = start[own] + shift_tp[own]
    fp = position[own] - start[own] - ignored + (shift_all - shift_tp)[own]
    best_own = _segmented_suffix_max(precision_at(rank, fp), own_pair, n_pairs)
    hits = samples.at_most(own_pair, rank) - samples.at_most(own_pair, rank - 1)
    # D's part: its true positive start + 1 (if any), moved by every x detection up to the group's end.
    group_end = np.minimum.accumulate(np.where(last, np.arange(last.size), last.size)[::-1])[::-1][own]
    g = index.tp_offsets[d_pair[own_pair]] + d_pair[own_pair] + start[own]
    moved = precision_at(index.env_rank[g] + shift_tp[group_end],
                         index.env_fp[g] + (shift_all - shift_tp)[group_end])
    d_part = np.where(start[own] < d_len[own_pair], moved, 0.0)
    sums = np.bincount(own_pair, weights=hits * np.maximum(best_own, d_part), minlength=n_pairs).astype(np.float64)
    return sums, own_pair * index.span + start[own], best_own


def _run_sums(index: EnvelopeIndex, samples: _Samples, of_run: np.ndarray, start: np.ndarray, end: np.ndarray,
              shift_tp: np.ndarray, shift_all: np.ndarray, floor: np.ndarray, d_pair: np.ndarray,
              d_len: np.ndarray, n_pairs: int) -> np.ndarray:
    """Per pair, the samples reading D's true positives (start, end] of every run, moved by the run's shift
    and raised to the run's ``floor`` (x's best own precision after it)."""
    lo = samples.at_most(of_run, start + shift_tp)
    # A run ends where the next one of its pair starts, unless x's true positives lie between them.
    own_ranks = _group_ends(shift_tp) | _group_ends(of_run)
    hi = _next(lo)
    hi[own_ranks] = samples.at_most(of_run[own_ranks], (end + shift_tp)[own_ranks])
    row, first_run = _rows(d_pair[of_run], samples.u[of_run], shift_tp)
    # Per row, the envelope terms at the 101 sampled ranks R_r - a (clipped into the pair; the clipped
    # samples lie outside every run of the row) and their prefix sums over r.
    k = samples.rank[samples.u[of_run[first_run]]] - shift_tp[first_run][:, None]
    k = np.clip(k, 1, d_len[of_run[first_run]][:, None] + 1)
    g = (index.tp_offsets[d_pair[of_run[first_run]]] + d_pair[of_run[first_run]])[:, None] + k - 1
    terms = index.env_terms[g]
    prefix = np.zeros((first_run.size, NUM_RECALLS + 1, 3))
    np.cumsum(terms, axis=1, out=prefix[:, 1:])
    # Where the move is not small (n_A < EXACT_MOVE * c), the samples are moved exactly, one by one;
    # sizes grow along r, so these are the first samples of the run.
    size = index.env_size[g]
    split = lo.copy()
    near = np.flatnonzero((lo < hi) & (size.ravel()[row * NUM_RECALLS + np.minimum(lo, NUM_RECALLS - 1)]
                                       < EXACT_MOVE * shift_all))
    split[near] = _first_reaching(_unit(size), row[near], _unit(EXACT_MOVE * shift_all[near]), lo[near], hi[near])
    # The floor takes over from the first sample whose envelope falls below it (the envelope only falls).
    cross = hi.copy()
    raised = np.flatnonzero((floor > 0.0) & (split < hi))
    cross[raised] = _first_reaching(1.0 - terms[:, :, 0], row[raised], 1.0 - floor[raised], split[raised],
                                    hi[raised], strict=True)
    flat = prefix.reshape(-1, 3)
    base = row * (NUM_RECALLS + 1)
    sums = flat[base + cross] - flat[base + split]
    first_order = sums[:, 0] + shift_tp * sums[:, 1] - shift_all * sums[:, 2] + floor * (hi - cross)
    idx, run = segment_ranges(row * NUM_RECALLS + lo, split - lo)
    gs = g.ravel()[idx]
    exact = precision_at(index.env_rank[gs] + shift_tp[run], index.env_fp[gs] + (shift_all - shift_tp)[run])
    exact = np.maximum(exact, floor[run])
    out = np.bincount(of_run, weights=first_order, minlength=n_pairs)
    return out + np.bincount(of_run[run], weights=exact, minlength=n_pairs)


#: Largest key space of rows grouped with a dense mask instead of a sort.
_DENSE_ROWS = 1 << 22


def _rows(d_pair: np.ndarray, u: np.ndarray, shift_tp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row of every run (one per distinct D pair, ground-truth count and shift) and one run of each row."""
    n_u, n_a = int(u.max(initial=0)) + 1, int(shift_tp.max(initial=0)) + 1
    key = (d_pair * n_u + u) * n_a + shift_tp
    space = (int(d_pair.max(initial=0)) + 1) * n_u * n_a
    if space <= _DENSE_ROWS:
        used = np.zeros(space, dtype=bool)
        used[key] = True
        row = (np.cumsum(used) - 1)[key]
    else:
        row = np.unique(key, return_inverse=True)[1].ravel()
    first_run = np.zeros(int(row.max(initial=-1)) + 1, dtype=np.int64)
    first_run[row] = np.arange(row.size)
    return row, first_run


def _first_reaching(values: np.ndarray, row: np.ndarray, level: np.ndarray, lo: np.ndarray, hi: np.ndarray, *,
                    strict: bool = False) -> np.ndarray:
    """Per query, the first r in [lo, hi] of row ``row`` of ``values`` (rows ascending, in [0, 1]) with
    ``values[row, r] >= level`` (``> level`` with ``strict``); only the rows queried are searched."""
    if row.size == 0:
        return lo
    rows, which = np.unique(row, return_inverse=True)
    keys = (np.arange(rows.size)[:, None] + 0.5 * values[rows]).ravel()
    found = np.searchsorted(keys, which.ravel() + 0.5 * level, side="right" if strict else "left")
    return np.clip(found - which.ravel() * values.shape[1], lo, hi)


def _group_ends(key: np.ndarray) -> np.ndarray:
    """(n,) bool: the element is the last of its run of equal consecutive keys."""
    out = np.ones(key.size, dtype=bool)
    out[:-1] = key[1:] != key[:-1]
    return out


def _next(values: np.ndarray) -> np.ndarray:
    """Each element's successor (0 after the last)."""
    out = np.zeros_like(values)
    out[:-1] = values[1:]
    return out


def _unit(size: np.ndarray) -> np.ndarray:
    """Monotone map of sizes in [0, inf] onto [0, 1] (for searching several rows at once)."""
    with np.errstate(invalid="ignore"):
        return np.where(np.isinf(size), 1.0, size / (size + 1.0))


def _segmented_suffix_max(values: np.ndarray, segment: np.ndarray, n_segments: int) -> np.ndarray:
    """Suffix maximum of ``values`` (in [0, 1]) within each segment (``segment`` ascending)."""
    offset = 2.0 * (n_segments - segment)
    return np.maximum.accumulate((values + offset)[::-1])[::-1] - offset
