"""COCO's 101-point interpolated AP of many true-positive sequences at once, as pycocotools computes it.

pycocotools' ``accumulate`` turns the detections of one (category, IoU threshold), sorted by score, into
cumulative TP / FP counts; precision ``tp / (fp + tp + eps)`` is made non-increasing from the right
(the envelope) and read at the first recall ``tp / npig >= r`` for ``r`` in 0:0.01:1 (0 beyond the
reached recall). Only the true positives matter: a false positive or ignored detection never has a
higher precision than the true positive before it, and the first recall reaching ``r`` is always
reached at a true positive. So with ``p_k = k / (f_k + k + eps)`` the precision at the k-th true
positive (``f_k`` false positives ranked before it) and ``k_r`` the smallest ``k >= 1`` with
``k / npig >= r`` (float64 division, as pycocotools computes recall):

    q_r = max_{k >= k_r} p_k   if k_r <= number of true positives, else 0
    AP  = mean_r q_r

Only the distinct ranks ``k_r`` matter (at most min(T, 101) per sequence). The sequences of many
(category, threshold) pairs are evaluated together with a handful of vectorised calls: the ``k_r`` cut
every sequence into blocks, ``np.maximum.reduceat`` gives the block maxima, and a suffix maximum over
the blocks of a sequence (pointer doubling) gives the envelope at every ``k_r``. When a set changes by
one image, the true positives ranked above the image's first detection keep their precision: their
blocks are answered by a sparse table (``RangeMax``) over the unchanged sequence, and only the rest is
rebuilt. Every precision point read is bitwise pycocotools'; only the order of the final summation differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from curation_core.matching import COCO_RECALL_THRESHOLDS

#: pycocotools' ``np.spacing(1)`` in the precision denominator.
PRECISION_EPS = float(np.spacing(1))


def offsets_of(lengths: np.ndarray) -> np.ndarray:
    """Segment start offsets, shape (len(lengths) + 1,), int64, from per-segment lengths."""
    out = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def segment_ranges(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated ``arange(start, start + length)`` of every segment, and the segment of each element.

    Returns ``(index, segment)``, both (sum(lengths),) int64.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    segment = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)
    within = np.arange(segment.size, dtype=np.int64) - np.repeat(offsets_of(lengths)[:-1], lengths)
    return np.asarray(starts, dtype=np.int64)[segment] + within, segment


def precision_at(k: np.ndarray, f: np.ndarray) -> np.ndarray:
    """pycocotools' precision ``tp / (fp + tp + eps)`` at the k-th true positive, float64.

    ``k`` (1-based rank among true positives) and ``f`` (false positives ranked before it) are counts.
    """
    tp = np.asarray(k, dtype=np.float64)
    return tp / ((np.asarray(f, dtype=np.float64) + tp) + PRECISION_EPS)


def first_reaching_rank(num_gt: np.ndarray) -> np.ndarray:
    """(P, 101) int64: for every recall threshold ``r``, the smallest ``k >= 1`` with ``k / npig >= r``.

    ``num_gt`` is (P,) positive integers. The comparison is pycocotools' own (float64 ``k / npig``
    against ``COCO_RECALL_THRESHOLDS``), so recalls that equal a threshold up to rounding fall on the
    same side as in pycocotools.
    """
    table, inverse = _reaching_table(num_gt)
    return table[:, inverse].T


def _reaching_table(num_gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R, U) first reaching ranks of the U distinct counts, and the (P,) index of each count."""
    values, inverse = np.unique(np.asarray(num_gt, dtype=np.int64), return_inverse=True)
    if values.size and values[0] < 1:
        raise ValueError(f"first_reaching_rank(num_gt=) expects positive counts; got {int(values[0])}.")
    n = values.astype(np.float64)[None, :]
    thr = COCO_RECALL_THRESHOLDS[:, None]
    k = np.maximum(np.ceil(thr * n) - 2.0, 1.0)  # at most 2 below the answer
    for _ in range(4):
        short = k / n < thr
        if not short.any():
            break
        k += short
    return k.astype(np.int64), inverse.ravel()


def _sample_points(num_gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct first-reaching ranks of every distinct count, with how many thresholds share each.

    Returns ``(rank, weight, start, inverse)``: the points of distinct count u are
    ``rank[start[u]:start[u + 1]]`` (ascending) with ``weight`` thresholds each; ``inverse`` maps every
    entry of ``num_gt`` to its u.
    """
    table, inverse = _reaching_table(num_gt)  # (R, U), ascending down each column
    fresh = np.ones(table.shape, dtype=bool)
    fresh[1:] = table[1:] != table[:-1]
    col, row = np.nonzero(fresh.T)  # column-major: the points of count 0, then count 1, ...
    rank = table[row, col]
    ends = np.append(row[1:], 0)
    ends[np.append(col[1:] != col[:-1], True)] = table.shape[0]
    start = offsets_of(np.bincount(col, minlength=table.shape[1]))
    return rank, ends - row, start, inverse


@dataclass(frozen=True)
class RangeMax:
    """Sparse table: the maximum of any range ``values[lo:hi]`` in O(1), vectorised over many ranges.

    ``levels[j, i] = max(values[i : i + 2**j])`` (cut at the end of the array); ranges may be at most
    ``2 ** (levels.shape[0] - 1) * 2`` long. Memory: ``levels.shape[0] * values.size`` float64.
    """

    levels: np.ndarray

    @classmethod
    def build(cls, values: np.ndarray, max_range: int) -> RangeMax:
        """Table over ``values`` (float64) answering ranges of length up to ``max_range``."""
        n_levels = max(int(max_range).bit_length(), 1)
        levels = np.empty((n_levels, values.size), dtype=np.float64)
        levels[0] = values
        for j in range(1, n_levels):
            half = 1 << (j - 1)
            levels[j] = levels[j - 1]
            np.maximum(levels[j - 1, :-half], levels[j - 1, half:], out=levels[j, :-half])
        return cls(levels)

    def query(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Maxima of ``values[lo:hi]`` for every pair (``hi > lo``), float64."""
        _, exponent = np.frexp((hi - lo).astype(np.float64))
        j = exponent.astype(np.int64) - 1  # floor(log2(length)), exact
        return np.maximum(self.levels[j, lo], self.levels[j, hi - (np.int64(1) << j)])


def sampled_average_precision(precision: np.ndarray, lengths: np.ndarray, num_gt: np.ndarray, *,
                              prefix: tuple[RangeMax, np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """101-point interpolated AP of P true-positive sequences.

    Sequence p is ``prefix`` part then ``precision`` part: its first ``prefix_len[p]`` precisions are
    ``values[prefix_start[p] : prefix_start[p] + prefix_len[p]]`` of the ``RangeMax`` (an unchanged head
    reused from a base set), followed by its ``lengths[p]`` entries of ``precision`` (stored one sequence
    after the other).

    Parameters
    ----------
    precision : (sum(lengths),) float64, ``precision_at(k, f)`` of the true positives after the prefix,
        in rank order (highest score first).
    lengths : (P,) int64, true positives per sequence after its prefix (0 allowed).
    num_gt : (P,) int64, non-ignored ground-truth boxes per sequence, all >= 1 and >= the total length.
    prefix : optional ``(range_max, prefix_start, prefix_len)``, the two arrays (P,) int64.

    Returns
    -------
    (P,) float64 in [0, 1], pycocotools' ``precision[t, :, k].mean()`` of each sequence (up to the
    order of summation).

    Notes
    -----
    Only the distinct ranks ``k_r`` matter (at most min(length, 101) per sequence). They cut each
    sequence into blocks; a block's maximum is a ``RangeMax`` query over its prefix part and a
    ``np.maximum.reduceat`` segment over its explicit part; a suffix maximum over the blocks of a sequence
    (pointer doubling, at most 7 passes) gives the envelope at every ``k_r``. The work is linear in the
    explicit lengths plus the number of distinct sampled ranks: an unchanged head costs O(1) per block.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    out = np.zeros(lengths.size, dtype=np.float64)
    if lengths.size == 0:
        return out
    head = np.zeros(lengths.size, dtype=np.int64) if prefix is None else prefix[2]
    total = head + lengths
    rank, weight, start, u = _sample_points(num_gt)
    count = _count_reached(rank, start, u, total)  # sampled ranks each sequence reaches
    idx, seq = segment_ranges(start[u], count)
    if idx.size == 0:
        return out
    lo = rank[idx]  # block [lo, hi) in 1-based ranks of the sequence
    hi = np.append(lo[1:], 0)
    last_point = np.append(seq[1:] != seq[:-1], True)
    hi[last_point] = total[seq[last_point]] + 1
    env = np.zeros(lo.size, dtype=np.float64)
    g = head[seq]
    in_head = lo <= g
    if prefix is not None and in_head.any():
        base = prefix[1][seq[in_head]] - 1
        env[in_head] = prefix[0].query(base + lo[in_head], base + np.minimum(hi[in_head], g[in_head] + 1))
    in_tail = hi > g + 1
    if in_tail.any():
        tail_start = offsets_of(lengths)[seq[in_tail]] + np.maximum(lo[in_tail], g[in_tail] + 1) - g[in_tail] - 1
        env[in_tail] = np.maximum(env[in_tail], np.maximum.reduceat(precision, tail_start))
    # Suffix maximum within each sequence by doubling: env[i] = max over [i, i + 2 * shift) of its sequence;
    # a look-ahead past the sequence's last point reads that last point instead (still inside the suffix).
    last = np.repeat(offsets_of(count)[1:] - 1, count)
    pos = np.arange(env.size)
    shift = 1
    while shift < int(count.max()):
        np.maximum(env, env[np.minimum(pos + shift, last)], out=env)
        shift *= 2
    return np.bincount(seq, weights=weight[idx] * env, minlength=lengths.size) / COCO_RECALL_THRESHOLDS.size


def _count_reached(rank: np.ndarray, start: np.ndarray, u: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(P,) number of sampled ranks of each sequence's count that are <= its length."""
    span = int(max(rank.max(initial=0), lengths.max(initial=0))) + 1
    group = np.repeat(np.arange(start.size - 1), np.diff(start))
    keys = group * span + rank  # ascending: groups in order, ranks ascending within a group
    return np.searchsorted(keys, u * span + lengths, side="right") - start[u]
